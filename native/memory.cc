// Memory the host can see: memfd_create, fallocate (punch-hole/allocate, for the shared
// memfd and for guest_memfd alike), mmap of an fd into an ArrayBuffer, and fd dup.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <mutex>
#include <unordered_map>

#include "args.h"
#include "fault_injection.h"

namespace {

// A mapping outlives its object: it is released when the last ArrayBuffer view of it is
// collected, or earlier by an explicit unmap (a VFIO device cdev bind is EBUSY while a BAR
// of the device is still mapped). Both paths must munmap exactly once.
struct Mapping {
  void* address;
  size_t length;
  bool mapped;
};

std::mutex mappings_lock;
std::unordered_map<void*, Mapping*> live_mappings;

void ReleaseMapping(Napi::Env, void*, Mapping* mapping) {
  {
    std::lock_guard<std::mutex> guard(mappings_lock);
    auto it = live_mappings.find(mapping->address);
    if (it != live_mappings.end() && it->second == mapping) live_mappings.erase(it);
  }
  if (mapping->mapped) munmap(mapping->address, mapping->length);
  delete mapping;
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Args args(info);
  std::string name = args.String(0, "name");
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) throw ErrnoError(info.Env(), errno, "memfd_create");
  return Napi::Number::New(info.Env(), fd);
}

int FaultableFallocate(int fd, int mode, off_t offset, off_t length) {
  GUESTMEM_INJECT_FAULT("fallocate");
  int result;
  do {
    result = fallocate(fd, mode, offset, length);
  } while (result < 0 && errno == EINTR);
  return result;
}

Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  int mode = static_cast<int>(args.U32(1, "mode"));
  off_t offset = static_cast<off_t>(args.U64(2, "offset"));
  off_t length = static_cast<off_t>(args.U64(3, "length"));
  if (FaultableFallocate(fd, mode, offset, length) < 0) throw ErrnoError(info.Env(), errno, "fallocate");
  return info.Env().Undefined();
}

Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  uint64_t length = args.U64(1, "length");
  uint64_t offset = args.U64(2, "offset");
  bool writable = info[3].ToBoolean();
  if (length == 0) throw ArgumentError(info.Env(), "length must be greater than zero");
  int prot = PROT_READ | (writable ? PROT_WRITE : 0);
  void* address = mmap(nullptr, length, prot, MAP_SHARED, fd, static_cast<off_t>(offset));
  if (address == MAP_FAILED) throw ErrnoError(info.Env(), errno, "mmap");
  auto* mapping = new Mapping{address, static_cast<size_t>(length), true};
  {
    std::lock_guard<std::mutex> guard(mappings_lock);
    live_mappings[address] = mapping;
  }
  Napi::Env env = info.Env();
  Napi::ArrayBuffer buffer = Napi::ArrayBuffer::New(env, address, length, ReleaseMapping, mapping);
  Napi::Object result = Napi::Object::New(env);
  result.Set("buffer", buffer);
  result.Set("address", U64Value(env, reinterpret_cast<uint64_t>(address)));
  return result;
}

// Unmaps now and detaches the buffer, so no view can reach the old address again.
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  if (!info[0].IsArrayBuffer()) throw ArgumentError(info.Env(), "buffer must be an ArrayBuffer from mmap");
  Napi::ArrayBuffer buffer = info[0].As<Napi::ArrayBuffer>();
  if (buffer.IsDetached()) return info.Env().Undefined();
  Mapping* mapping = nullptr;
  {
    std::lock_guard<std::mutex> guard(mappings_lock);
    auto it = live_mappings.find(buffer.Data());
    if (it == live_mappings.end()) throw ArgumentError(info.Env(), "buffer is not a live mapping made by mmap");
    mapping = it->second;
    live_mappings.erase(it);
  }
  buffer.Detach();
  if (munmap(mapping->address, mapping->length) < 0) throw ErrnoError(info.Env(), errno, "munmap");
  mapping->mapped = false;
  return info.Env().Undefined();
}

Napi::Value DupCloexec(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = fcntl(args.Fd(0), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) throw ErrnoError(info.Env(), errno, "fcntl(F_DUPFD_CLOEXEC)");
  return Napi::Number::New(info.Env(), fd);
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("mmap", Napi::Function::New(env, Mmap));
  exports.Set("munmap", Napi::Function::New(env, Munmap));
  exports.Set("dupCloexec", Napi::Function::New(env, DupCloexec));
}
