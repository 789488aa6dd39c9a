// Fault injection rules: "SITE:N:ERRNO[,SITE:N:ERRNO...]". SITE is a syscall site such as
// ioctl:KVM_SET_MEMORY_ATTRIBUTES, ioctl:KVM_SET_USER_MEMORY_REGION2, fallocate,
// ioctl:VFIO_IOMMU_MAP_DMA, ioctl:VFIO_IOMMU_UNMAP_DMA, ioctl:IOMMU_IOAS_MAP,
// ioctl:IOMMU_IOAS_UNMAP; N counts that site's calls from 1 since the rules were armed
// ("3" fails the third call only, "3+" the third and every later one); ERRNO is a name
// (EIO, ENOMEM, ...). Several rules may name one site. Calls are counted per site.
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "errors.h"
#include "fault_injection.h"

namespace faults {
namespace {

struct Rule {
  std::string site;
  unsigned long long nth;
  bool onward;
  int error;
};

bool enabled = false;
std::mutex lock;
std::vector<Rule> rules;
std::map<std::string, unsigned long long> calls;
unsigned long long fired = 0;

int ErrnoByName(const std::string& name) {
  static const std::pair<const char*, int> known[] = {
      {"EIO", EIO},       {"ENOMEM", ENOMEM}, {"EINVAL", EINVAL},         {"EFAULT", EFAULT}, {"EBUSY", EBUSY},
      {"ENOSPC", ENOSPC}, {"EEXIST", EEXIST}, {"ENOENT", ENOENT},         {"EPERM", EPERM},   {"EAGAIN", EAGAIN},
      {"EBADF", EBADF},   {"ENODEV", ENODEV}, {"EOPNOTSUPP", EOPNOTSUPP}, {"ENXIO", ENXIO},   {"E2BIG", E2BIG},
  };
  for (const auto& [text, value] : known) {
    if (name == text) return value;
  }
  return 0;
}

/** Parses a spec into rules; returns an empty string, or what is wrong with it. */
std::string Parse(const std::string& spec, std::vector<Rule>* out) {
  size_t start = 0;
  while (start < spec.size()) {
    size_t end = spec.find(',', start);
    if (end == std::string::npos) end = spec.size();
    std::string item = spec.substr(start, end - start);
    start = end + 1;
    if (item.empty()) continue;
    // SITE may hold colons itself: N and ERRNO are the last two fields.
    size_t last = item.rfind(':');
    size_t middle = last == std::string::npos || last == 0 ? std::string::npos : item.rfind(':', last - 1);
    if (middle == std::string::npos || middle == 0) return "'" + item + "' is not SITE:N:ERRNO";
    Rule rule{item.substr(0, middle), 0, false, 0};
    std::string nth = item.substr(middle + 1, last - middle - 1);
    if (!nth.empty() && nth.back() == '+') {
      rule.onward = true;
      nth.pop_back();
    }
    char* tail = nullptr;
    rule.nth = std::strtoull(nth.c_str(), &tail, 10);
    if (nth.empty() || *tail != '\0' || rule.nth == 0) return "'" + item + "': N must be a call number from 1, optionally with +";
    rule.error = ErrnoByName(item.substr(last + 1));
    if (rule.error == 0) return "'" + item + "': unknown errno name " + item.substr(last + 1);
    out->push_back(rule);
  }
  return "";
}

Napi::Value SetFaults(const Napi::CallbackInfo& info) {
  if (!info[0].IsString()) throw ArgumentError(info.Env(), "spec must be a string like ioctl:KVM_SET_MEMORY_ATTRIBUTES:3:EIO");
  std::vector<Rule> parsed;
  std::string problem = Parse(info[0].As<Napi::String>().Utf8Value(), &parsed);
  if (!problem.empty()) {
    Napi::TypeError error = Napi::TypeError::New(info.Env(), "fault spec " + problem);
    error.Set("code", Napi::String::New(info.Env(), "ERR_INVALID_ARG_VALUE"));
    throw error;
  }
  std::lock_guard<std::mutex> guard(lock);
  rules = std::move(parsed);
  calls.clear();
  return info.Env().Undefined();
}

/** Faults injected since load, and calls per site since the rules were last armed. */
Napi::Value FaultCounts(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::lock_guard<std::mutex> guard(lock);
  Napi::Object out = Napi::Object::New(env);
  out.Set("fired", Napi::Number::New(env, static_cast<double>(fired)));
  Napi::Object sites = Napi::Object::New(env);
  for (const auto& [site, count] : calls) sites.Set(site, Napi::Number::New(env, static_cast<double>(count)));
  out.Set("calls", sites);
  return out;
}

}  // namespace

bool Enabled() {
  return enabled;
}

int Check(const char* site) {
  std::lock_guard<std::mutex> guard(lock);
  unsigned long long call = ++calls[site];
  for (const Rule& rule : rules) {
    if (rule.site == site && (call == rule.nth || (rule.onward && call > rule.nth))) {
      fired++;
      return rule.error;
    }
  }
  return 0;
}

}  // namespace faults

void InitFaultInjection(Napi::Env env, Napi::Object exports) {
  const char* spec = std::getenv("GUESTMEM_FAULTS");
  if (spec == nullptr) return;
  std::vector<faults::Rule> parsed;
  std::string problem = faults::Parse(spec, &parsed);
  if (!problem.empty()) {
    throw Napi::Error::New(env, std::string("GUESTMEM_FAULTS: ") + problem);
  }
  faults::rules = std::move(parsed);
  faults::enabled = true;
  exports.Set("setFaults", Napi::Function::New(env, faults::SetFaults));
  exports.Set("faultCounts", Napi::Function::New(env, faults::FaultCounts));
}
