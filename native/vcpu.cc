// vCPUs: creation, registers, CPUID and the VM capability that routes guest hypercalls
// to userspace. Each function is one ioctl (CPUID: the system ioctl and the vCPU one).
// Running a vCPU is vcpu_thread.cc's job.
#include <fcntl.h>

#include <vector>

#include "args.h"
#include "uapi_vcpu.h"

namespace {

Napi::Value GetVcpuMmapSize(const Napi::CallbackInfo& info) {
  Args args(info);
  int size = RetryIoctlInt(args.Fd(0), uapi::KVM_GET_VCPU_MMAP_SIZE, 0);
  if (size < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_GET_VCPU_MMAP_SIZE)");
  return Napi::Number::New(info.Env(), size);
}

Napi::Value CreateVcpu(const Napi::CallbackInfo& info) {
  Args args(info);
  // KVM returns the vCPU fd with O_CLOEXEC already set.
  int fd = RetryIoctlInt(args.Fd(0), uapi::KVM_CREATE_VCPU, args.U32(1, "vcpuId"));
  if (fd < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_CREATE_VCPU)");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value EnableCap(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_enable_cap request{};
  request.cap = args.U32(1, "capability");
  request.args[0] = args.U64(2, "arg0");
  if (RetryIoctl(args.Fd(0), uapi::KVM_ENABLE_CAP, &request) < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_ENABLE_CAP)");
  return info.Env().Undefined();
}

// kvm_regs and the 64-bit values of kvm_sregs travel as bigints; the rest as numbers.
const char* const kRegNames[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8",
                                 "r9",  "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"};
static_assert(sizeof(kRegNames) / sizeof(kRegNames[0]) == sizeof(uapi::kvm_regs) / sizeof(uint64_t));

uint64_t U64Field(Napi::Env env, Napi::Object object, const char* name) {
  return U64FromValue(env, object.Get(name), name);
}

Napi::Object ObjectArg(const Napi::CallbackInfo& info, size_t index, const char* name) {
  if (!info[index].IsObject()) throw ArgumentError(info.Env(), std::string(name) + " must be an object");
  return info[index].As<Napi::Object>();
}

Napi::Value GetRegs(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_regs regs{};
  if (RetryIoctl(args.Fd(0), uapi::KVM_GET_REGS, &regs) < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_GET_REGS)");
  Napi::Object result = Napi::Object::New(info.Env());
  const uint64_t* values = reinterpret_cast<const uint64_t*>(&regs);
  for (size_t i = 0; i < sizeof(kRegNames) / sizeof(kRegNames[0]); i++) result.Set(kRegNames[i], U64Value(info.Env(), values[i]));
  return result;
}

Napi::Value SetRegs(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  Napi::Object object = ObjectArg(info, 1, "regs");
  uapi::kvm_regs regs{};
  uint64_t* values = reinterpret_cast<uint64_t*>(&regs);
  for (size_t i = 0; i < sizeof(kRegNames) / sizeof(kRegNames[0]); i++) values[i] = U64Field(info.Env(), object, kRegNames[i]);
  if (RetryIoctl(fd, uapi::KVM_SET_REGS, &regs) < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_SET_REGS)");
  return info.Env().Undefined();
}

// Segment and descriptor-table fields, named as in the uAPI.
#define SEGMENT_BYTE_FIELDS(X) X(type) X(present) X(dpl) X(db) X(s) X(l) X(g) X(avl) X(unusable)

Napi::Object SegmentObject(Napi::Env env, const uapi::kvm_segment& segment) {
  Napi::Object object = Napi::Object::New(env);
  object.Set("base", U64Value(env, segment.base));
  object.Set("limit", Napi::Number::New(env, segment.limit));
  object.Set("selector", Napi::Number::New(env, segment.selector));
#define SET_FIELD(name) object.Set(#name, Napi::Number::New(env, segment.name));
  SEGMENT_BYTE_FIELDS(SET_FIELD)
#undef SET_FIELD
  return object;
}

uapi::kvm_segment SegmentFrom(Napi::Env env, Napi::Object parent, const char* name) {
  Napi::Value value = parent.Get(name);
  if (!value.IsObject()) throw ArgumentError(env, std::string("sregs.") + name + " must be an object");
  Napi::Object object = value.As<Napi::Object>();
  uapi::kvm_segment segment{};
  segment.base = U64Field(env, object, "base");
  uint64_t limit = U64Field(env, object, "limit");
  uint64_t selector = U64Field(env, object, "selector");
  if (limit > UINT32_MAX || selector > UINT16_MAX) throw OutOfRangeError(env, std::string("sregs.") + name + ": limit or selector out of range");
  segment.limit = static_cast<uint32_t>(limit);
  segment.selector = static_cast<uint16_t>(selector);
#define GET_FIELD(field)                                                                                         \
  {                                                                                                              \
    uint64_t v = U64Field(env, object, #field);                                                                  \
    if (v > UINT8_MAX) throw OutOfRangeError(env, std::string("sregs.") + name + "." #field " must fit a byte"); \
    segment.field = static_cast<uint8_t>(v);                                                                     \
  }
  SEGMENT_BYTE_FIELDS(GET_FIELD)
#undef GET_FIELD
  return segment;
}

Napi::Object TableObject(Napi::Env env, const uapi::kvm_dtable& table) {
  Napi::Object object = Napi::Object::New(env);
  object.Set("base", U64Value(env, table.base));
  object.Set("limit", Napi::Number::New(env, table.limit));
  return object;
}

uapi::kvm_dtable TableFrom(Napi::Env env, Napi::Object parent, const char* name) {
  Napi::Value value = parent.Get(name);
  if (!value.IsObject()) throw ArgumentError(env, std::string("sregs.") + name + " must be an object");
  uapi::kvm_dtable table{};
  table.base = U64Field(env, value.As<Napi::Object>(), "base");
  uint64_t limit = U64Field(env, value.As<Napi::Object>(), "limit");
  if (limit > UINT16_MAX) throw OutOfRangeError(env, std::string("sregs.") + name + ".limit must fit 16 bits");
  table.limit = static_cast<uint16_t>(limit);
  return table;
}

#define SREGS_SEGMENTS(X) X(cs) X(ds) X(es) X(fs) X(gs) X(ss) X(tr) X(ldt)
#define SREGS_TABLES(X) X(gdt) X(idt)
#define SREGS_U64(X) X(cr0) X(cr2) X(cr3) X(cr4) X(cr8) X(efer) X(apic_base)

Napi::Value GetSregs(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_sregs sregs{};
  if (RetryIoctl(args.Fd(0), uapi::KVM_GET_SREGS, &sregs) < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_GET_SREGS)");
  Napi::Env env = info.Env();
  Napi::Object result = Napi::Object::New(env);
#define SET_SEGMENT(name) result.Set(#name, SegmentObject(env, sregs.name));
#define SET_TABLE(name) result.Set(#name, TableObject(env, sregs.name));
#define SET_U64(name) result.Set(#name, U64Value(env, sregs.name));
  SREGS_SEGMENTS(SET_SEGMENT)
  SREGS_TABLES(SET_TABLE)
  SREGS_U64(SET_U64)
#undef SET_SEGMENT
#undef SET_TABLE
#undef SET_U64
  return result;
}

// Reads the current sregs first so that the interrupt bitmap, which JS never sees, is
// written back as KVM keeps it.
Napi::Value SetSregs(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  Napi::Env env = info.Env();
  Napi::Object object = ObjectArg(info, 1, "sregs");
  uapi::kvm_sregs sregs{};
  if (RetryIoctl(fd, uapi::KVM_GET_SREGS, &sregs) < 0) throw ErrnoError(env, errno, "ioctl(KVM_GET_SREGS)");
#define GET_SEGMENT(name) sregs.name = SegmentFrom(env, object, #name);
#define GET_TABLE(name) sregs.name = TableFrom(env, object, #name);
#define GET_U64(name) sregs.name = U64Field(env, object, #name);
  SREGS_SEGMENTS(GET_SEGMENT)
  SREGS_TABLES(GET_TABLE)
  SREGS_U64(GET_U64)
#undef GET_SEGMENT
#undef GET_TABLE
#undef GET_U64
  if (RetryIoctl(fd, uapi::KVM_SET_SREGS, &sregs) < 0) throw ErrnoError(env, errno, "ioctl(KVM_SET_SREGS)");
  return env.Undefined();
}

// The CPUID leaves KVM can give a guest, as raw kvm_cpuid_entry2 records (40 bytes each):
// JS passes them on to SetCpuid2 unchanged.
Napi::Value GetSupportedCpuid(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  for (uint32_t capacity = 128; capacity <= 4096; capacity *= 2) {
    std::vector<uint8_t> storage(sizeof(uapi::kvm_cpuid2) + capacity * sizeof(uapi::kvm_cpuid_entry2));
    auto* cpuid = reinterpret_cast<uapi::kvm_cpuid2*>(storage.data());
    cpuid->nent = capacity;
    if (RetryIoctl(fd, uapi::KVM_GET_SUPPORTED_CPUID, cpuid) < 0) {
      if (errno == E2BIG) continue;
      throw ErrnoError(info.Env(), errno, "ioctl(KVM_GET_SUPPORTED_CPUID)");
    }
    return Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<uint8_t*>(cpuid->entries), cpuid->nent * sizeof(uapi::kvm_cpuid_entry2));
  }
  throw ErrnoError(info.Env(), E2BIG, "ioctl(KVM_GET_SUPPORTED_CPUID)");
}

Napi::Value SetCpuid2(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  if (!info[1].IsTypedArray()) throw ArgumentError(info.Env(), "entries must be a Buffer of kvm_cpuid_entry2 records");
  Napi::Uint8Array entries = info[1].As<Napi::Uint8Array>();
  if (entries.ByteLength() % sizeof(uapi::kvm_cpuid_entry2) != 0 || entries.ByteLength() > 4096 * sizeof(uapi::kvm_cpuid_entry2)) {
    throw ArgumentError(info.Env(), "entries must hold whole 40-byte kvm_cpuid_entry2 records (at most 4096)");
  }
  std::vector<uint8_t> storage(sizeof(uapi::kvm_cpuid2) + entries.ByteLength());
  auto* cpuid = reinterpret_cast<uapi::kvm_cpuid2*>(storage.data());
  cpuid->nent = static_cast<uint32_t>(entries.ByteLength() / sizeof(uapi::kvm_cpuid_entry2));
  std::copy(entries.Data(), entries.Data() + entries.ByteLength(), reinterpret_cast<uint8_t*>(cpuid->entries));
  if (RetryIoctl(fd, uapi::KVM_SET_CPUID2, cpuid) < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_SET_CPUID2)");
  return info.Env().Undefined();
}

}  // namespace

void InitVcpu(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmGetVcpuMmapSize", Napi::Function::New(env, GetVcpuMmapSize));
  exports.Set("kvmCreateVcpu", Napi::Function::New(env, CreateVcpu));
  exports.Set("kvmEnableCap", Napi::Function::New(env, EnableCap));
  exports.Set("kvmGetRegs", Napi::Function::New(env, GetRegs));
  exports.Set("kvmSetRegs", Napi::Function::New(env, SetRegs));
  exports.Set("kvmGetSregs", Napi::Function::New(env, GetSregs));
  exports.Set("kvmSetSregs", Napi::Function::New(env, SetSregs));
  exports.Set("kvmGetSupportedCpuid", Napi::Function::New(env, GetSupportedCpuid));
  exports.Set("kvmSetCpuid2", Napi::Function::New(env, SetCpuid2));
}
