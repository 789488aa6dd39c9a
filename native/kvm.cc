// KVM: the system fd (/dev/kvm) and VM fds. Each function is one ioctl.
#include <fcntl.h>

#include "args.h"
#include "fault_injection.h"
#include "uapi.h"

namespace {

Napi::Value GetApiVersion(const Napi::CallbackInfo& info) {
  Args args(info);
  int result = RetryIoctlInt(args.Fd(0), uapi::KVM_GET_API_VERSION, 0);
  if (result < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_GET_API_VERSION)");
  return Napi::Number::New(info.Env(), result);
}

// Works on /dev/kvm and on a VM fd (KVM_CAP_CHECK_EXTENSION_VM): a VM's answer is the
// one that counts for VM-type-dependent capabilities such as memory attributes.
Napi::Value CheckExtension(const Napi::CallbackInfo& info) {
  Args args(info);
  int result = RetryIoctlInt(args.Fd(0), uapi::KVM_CHECK_EXTENSION, args.U32(1, "capability"));
  if (result < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_CHECK_EXTENSION)");
  return Napi::Number::New(info.Env(), result);
}

Napi::Value CreateVm(const Napi::CallbackInfo& info) {
  Args args(info);
  // KVM returns the VM fd with O_CLOEXEC already set.
  int fd = RetryIoctlInt(args.Fd(0), uapi::KVM_CREATE_VM, args.U32(1, "type"));
  if (fd < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_CREATE_VM)");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value CreateGuestMemfd(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_create_guest_memfd request{};
  request.size = args.U64(1, "size");
  request.flags = args.U64(2, "flags");
  int fd = RetryIoctl(args.Fd(0), uapi::KVM_CREATE_GUEST_MEMFD, &request);
  if (fd < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_CREATE_GUEST_MEMFD)");
  // 6.12 hands the guest_memfd out without O_CLOEXEC; a child must not inherit guest memory.
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) {
    int err = errno;
    close(fd);
    throw ErrnoError(info.Env(), err, "fcntl(F_SETFD, FD_CLOEXEC)");
  }
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value SetUserMemoryRegion2(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_userspace_memory_region2 region{};
  region.slot = args.U32(1, "slot");
  region.flags = args.U32(2, "flags");
  region.guest_phys_addr = args.U64(3, "gpa");
  region.memory_size = args.U64(4, "size");
  region.userspace_addr = args.U64(5, "userspaceAddress");
  region.guest_memfd = args.U32(6, "guestMemfd");
  region.guest_memfd_offset = args.U64(7, "guestMemfdOffset");
  if (FaultableIoctl("ioctl:KVM_SET_USER_MEMORY_REGION2", args.Fd(0), uapi::KVM_SET_USER_MEMORY_REGION2, &region) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(KVM_SET_USER_MEMORY_REGION2)");
  }
  return info.Env().Undefined();
}

Napi::Value SetMemoryAttributes(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_memory_attributes request{};
  request.address = args.U64(1, "gpa");
  request.size = args.U64(2, "size");
  request.attributes = args.U64(3, "attributes");
  if (FaultableIoctl("ioctl:KVM_SET_MEMORY_ATTRIBUTES", args.Fd(0), uapi::KVM_SET_MEMORY_ATTRIBUTES, &request) < 0) {
    throw ErrnoError(info.Env(), errno, "ioctl(KVM_SET_MEMORY_ATTRIBUTES)");
  }
  return info.Env().Undefined();
}

// Maps [gpa, gpa + size) into the VM's page tables ahead of the guest's first touch. The
// kernel stops early (returning 0 after some progress) on a signal or a reschedule, with
// the request advanced past what it mapped: resume until nothing is left.
Napi::Value PreFaultMemory(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_pre_fault_memory request{};
  request.gpa = args.U64(1, "gpa");
  request.size = args.U64(2, "size");
  int fd = args.Fd(0);
  while (request.size > 0) {
    if (RetryIoctl(fd, uapi::KVM_PRE_FAULT_MEMORY, &request) < 0) {
      throw ErrnoError(info.Env(), errno, "ioctl(KVM_PRE_FAULT_MEMORY)");
    }
  }
  return info.Env().Undefined();
}

}  // namespace

void InitKvm(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmGetApiVersion", Napi::Function::New(env, GetApiVersion));
  exports.Set("kvmCheckExtension", Napi::Function::New(env, CheckExtension));
  exports.Set("kvmCreateVm", Napi::Function::New(env, CreateVm));
  exports.Set("kvmCreateGuestMemfd", Napi::Function::New(env, CreateGuestMemfd));
  exports.Set("kvmSetUserMemoryRegion2", Napi::Function::New(env, SetUserMemoryRegion2));
  exports.Set("kvmSetMemoryAttributes", Napi::Function::New(env, SetMemoryAttributes));
  exports.Set("kvmPreFaultMemory", Napi::Function::New(env, PreFaultMemory));
}
