// The launch of an SEV-SNP or TDX VM, after its initialization (confidential_vm.cc): the
// sub-commands of KVM_MEMORY_ENCRYPT_OP that put measured pages into private memory and end
// the launch, so that the vCPUs may run. Each function is one sub-command (the partial-
// progress loops the kernel's documentation asks for included); the order is kept by
// lib/kvm/vm-launch.ts. Every argument is checked before the first ioctl: a page address or
// size the kernel would refuse never reaches it.
#include <cstring>
#include <vector>

#include "args.h"
#include "uapi_coco.h"

namespace {

constexpr uint64_t kPageSize = 4096;

Napi::Error CodedError(Napi::Env env, const char* code, const std::string& message, bool range) {
  // Node's classes for its codes: ERR_OUT_OF_RANGE is a RangeError, ERR_INVALID_ARG_VALUE a TypeError.
  Napi::Error error =
      range ? static_cast<Napi::Error>(Napi::RangeError::New(env, message)) : static_cast<Napi::Error>(Napi::TypeError::New(env, message));
  error.Set("code", Napi::String::New(env, code));
  return error;
}

/** A value past its limit: Node's ERR_OUT_OF_RANGE. */
Napi::Error OutOfRange(Napi::Env env, const std::string& message) {
  return CodedError(env, "ERR_OUT_OF_RANGE", message, true);
}

/** A value of the right type that the kernel would refuse (unaligned): ERR_INVALID_ARG_VALUE. */
Napi::Error InvalidValue(Napi::Env env, const std::string& message) {
  return CodedError(env, "ERR_INVALID_ARG_VALUE", message, false);
}

uint64_t PageAligned(const Args& args, const Napi::CallbackInfo& info, size_t index, const char* name) {
  uint64_t value = args.U64(index, name);
  if (value % kPageSize != 0) throw InvalidValue(info.Env(), std::string(name) + " must be a multiple of 4096");
  return value;
}

/** Exactly `size` bytes from a Uint8Array into `out`; false (out untouched) for undefined or null. */
bool FixedBytes(const Napi::CallbackInfo& info, size_t index, const char* name, uint8_t* out, size_t size) {
  Napi::Value value = info[index];
  if (value.IsUndefined() || value.IsNull()) return false;
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw ArgumentError(info.Env(), std::string(name) + " must be a Uint8Array or undefined");
  }
  Napi::Uint8Array bytes = value.As<Napi::Uint8Array>();
  if (bytes.ByteLength() != size) throw OutOfRange(info.Env(), std::string(name) + " must be exactly " + std::to_string(size) + " bytes");
  std::memcpy(out, bytes.Data(), size);
  return true;
}

Napi::Error SevFailure(Napi::Env env, int err, const char* step, uint32_t firmware) {
  Napi::Error error = ErrnoError(env, err, std::string("ioctl(KVM_MEMORY_ENCRYPT_OP, ") + step + ")");
  if (firmware != 0) error.Set("firmwareError", Napi::BigInt::New(env, static_cast<uint64_t>(firmware)));
  return error;
}

Napi::Error TdxFailure(Napi::Env env, int err, const char* step, uint64_t status) {
  Napi::Error error = ErrnoError(env, err, std::string("ioctl(KVM_MEMORY_ENCRYPT_OP, ") + step + ")");
  if (status != 0) error.Set("hwError", Napi::BigInt::New(env, status));
  return error;
}

uapi::kvm_sev_cmd SevCommand(uint32_t id, void* data, int sev_fd) {
  uapi::kvm_sev_cmd cmd{};
  cmd.id = id;
  cmd.data = reinterpret_cast<uint64_t>(data);
  cmd.sev_fd = static_cast<uint32_t>(sev_fd);
  return cmd;
}

// kvmSevSnpLaunchStart(vmFd, sevFd, policy, gosvw?, flags): the /dev/sev fd must stay open
// until the launch ends (KVM keeps its number and uses it for each later firmware command).
Napi::Value SevSnpLaunchStart(const Napi::CallbackInfo& info) {
  Args args(info);
  int vm_fd = args.Fd(0);
  int sev_fd = args.Fd(1);
  uapi::kvm_sev_snp_launch_start start{};
  start.policy = args.U64(2, "policy");
  FixedBytes(info, 3, "gosvw", start.gosvw, sizeof(start.gosvw));
  uint32_t flags = args.U32(4, "flags");
  if (flags > UINT16_MAX) throw OutOfRange(info.Env(), "flags must be a uint16");
  start.flags = static_cast<uint16_t>(flags);
  uapi::kvm_sev_cmd cmd = SevCommand(uapi::KVM_SEV_SNP_LAUNCH_START, &start, sev_fd);
  if (RetryIoctl(vm_fd, uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) throw SevFailure(info.Env(), errno, "KVM_SEV_SNP_LAUNCH_START", cmd.error);
  return info.Env().Undefined();
}

// kvmSevSnpLaunchUpdate(vmFd, sevFd, gpa, uaddr, length, type) -> { gpa, uaddr, length }:
// one KVM_SEV_SNP_LAUNCH_UPDATE; gpa, uaddr and length in bytes, each page-aligned,
// length > 0. Returns what is left as the kernel advanced the struct (length 0: all done);
// the loop over partial progress, and which failures to retry, are lib/kvm/snp-launch.ts's.
// The kernel reports any failure of kvm_gmem_populate, a pending signal's -EINTR included,
// as EIO, and writes nothing back then (sev.c, snp_launch_update), so nothing here retries
// on EINTR or EAGAIN: neither comes back.
Napi::Value SevSnpLaunchUpdate(const Napi::CallbackInfo& info) {
  Args args(info);
  int vm_fd = args.Fd(0);
  int sev_fd = args.Fd(1);
  uint64_t gpa = PageAligned(args, info, 2, "gpa");
  uint64_t uaddr = PageAligned(args, info, 3, "uaddr");
  uint64_t len = PageAligned(args, info, 4, "length");
  uint32_t type = args.U32(5, "type");
  if (len == 0) throw OutOfRange(info.Env(), "length must be at least one page");
  if (gpa + len < gpa || uaddr + len < uaddr) throw OutOfRange(info.Env(), "the range passes 2^64");
  if (type != uapi::KVM_SEV_SNP_PAGE_TYPE_NORMAL && type != uapi::KVM_SEV_SNP_PAGE_TYPE_ZERO && type != uapi::KVM_SEV_SNP_PAGE_TYPE_UNMEASURED &&
      type != uapi::KVM_SEV_SNP_PAGE_TYPE_SECRETS && type != uapi::KVM_SEV_SNP_PAGE_TYPE_CPUID) {
    throw OutOfRange(info.Env(), "type must be a KVM_SEV_SNP_PAGE_TYPE_* (1, 3, 4, 5 or 6)");
  }
  uapi::kvm_sev_snp_launch_update update{};
  update.gfn_start = gpa / kPageSize;
  update.uaddr = uaddr;
  update.len = len;
  update.type = static_cast<uint8_t>(type);
  uapi::kvm_sev_cmd cmd = SevCommand(uapi::KVM_SEV_SNP_LAUNCH_UPDATE, &update, sev_fd);
  if (ioctl(vm_fd, uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) throw SevFailure(info.Env(), errno, "KVM_SEV_SNP_LAUNCH_UPDATE", cmd.error);
  Napi::Object left = Napi::Object::New(info.Env());
  left.Set("gpa", U64Value(info.Env(), update.gfn_start * kPageSize));
  left.Set("uaddr", U64Value(info.Env(), update.uaddr));
  left.Set("length", U64Value(info.Env(), update.len));
  return left;
}

// kvmSevSnpLaunchFinish(vmFd, sevFd, hostData?): no ID block, no author key; host_data (32
// bytes) goes into the attestation report when given.
Napi::Value SevSnpLaunchFinish(const Napi::CallbackInfo& info) {
  Args args(info);
  int vm_fd = args.Fd(0);
  int sev_fd = args.Fd(1);
  uapi::kvm_sev_snp_launch_finish finish{};
  FixedBytes(info, 2, "hostData", finish.host_data, sizeof(finish.host_data));
  uapi::kvm_sev_cmd cmd = SevCommand(uapi::KVM_SEV_SNP_LAUNCH_FINISH, &finish, sev_fd);
  if (RetryIoctl(vm_fd, uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) throw SevFailure(info.Env(), errno, "KVM_SEV_SNP_LAUNCH_FINISH", cmd.error);
  return info.Env().Undefined();
}

// kvmTdxInitVcpu(vcpuFd, rcx): on the vCPU fd, after KVM_SET_CPUID2. The vCPU sub-commands
// (INIT_VCPU, INIT_MEM_REGION) never return the TDX module's status: KVM does not copy the
// command back (tdx_vcpu_unlocked_ioctl), so hw_error stays what we sent, and their errors
// carry none (KVM logs a SEAMCALL failure to the kernel log instead).
Napi::Value TdxInitVcpu(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  uapi::kvm_tdx_cmd cmd{};
  cmd.id = uapi::KVM_TDX_INIT_VCPU;
  cmd.data = args.U64(1, "rcx");
  if (RetryIoctl(fd, uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) throw ErrnoError(info.Env(), errno, "ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_INIT_VCPU)");
  return info.Env().Undefined();
}

// kvmTdxGetCpuid(vcpuFd) -> Buffer: KVM_TDX_GET_CPUID, the CPUID the TDX module shows the
// TD, as raw kvm_cpuid_entry2 records (a vCPU sub-command too: no hw_error). E2BIG means
// the buffer was too small; the kernel then says in nent how many it needs.
Napi::Value TdxGetCpuid(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  uint32_t capacity = 256;
  for (int attempt = 0; attempt < 4; attempt++) {
    std::vector<uint8_t> storage(sizeof(uapi::kvm_cpuid2) + capacity * sizeof(uapi::kvm_cpuid_entry2));
    auto* cpuid = reinterpret_cast<uapi::kvm_cpuid2*>(storage.data());
    cpuid->nent = capacity;
    uapi::kvm_tdx_cmd cmd{};
    cmd.id = uapi::KVM_TDX_GET_CPUID;
    cmd.data = reinterpret_cast<uint64_t>(cpuid);
    if (RetryIoctl(fd, uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) {
      if (errno == E2BIG && cpuid->nent > capacity && cpuid->nent <= 4096) {
        capacity = cpuid->nent;
        continue;
      }
      throw ErrnoError(info.Env(), errno, "ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_GET_CPUID)");
    }
    uint32_t nent = cpuid->nent <= capacity ? cpuid->nent : capacity;
    return Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<uint8_t*>(cpuid->entries), nent * sizeof(uapi::kvm_cpuid_entry2));
  }
  throw ErrnoError(info.Env(), E2BIG, "ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_GET_CPUID)");
}

// kvmTdxInitMemRegion(vcpuFd, sourceAddress, gpa, pages, measure): page-aligned source and
// gpa, pages > 0. Called again with the struct the kernel advanced after EAGAIN or EINTR,
// as QEMU's tdx_init_fw_mem_region does. No hw_error: see kvmTdxInitVcpu.
Napi::Value TdxInitMemRegion(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  uapi::kvm_tdx_init_mem_region region{};
  region.source_addr = PageAligned(args, info, 1, "sourceAddress");
  region.gpa = PageAligned(args, info, 2, "gpa");
  region.nr_pages = args.U64(3, "pages");
  if (!info[4].IsBoolean()) throw ArgumentError(info.Env(), "measure must be a boolean");
  bool measure = info[4].As<Napi::Boolean>().Value();
  if (region.nr_pages == 0) throw OutOfRange(info.Env(), "pages must be at least 1");
  if (region.nr_pages > UINT64_MAX / kPageSize) throw OutOfRange(info.Env(), "pages * 4096 passes 2^64");
  uint64_t bytes = region.nr_pages * kPageSize;
  if (region.gpa + bytes < region.gpa || region.source_addr + bytes < region.source_addr) throw OutOfRange(info.Env(), "the range passes 2^64");
  while (region.nr_pages != 0) {
    uapi::kvm_tdx_cmd cmd{};
    cmd.id = uapi::KVM_TDX_INIT_MEM_REGION;
    cmd.flags = measure ? uapi::KVM_TDX_MEASURE_MEMORY_REGION : 0;
    cmd.data = reinterpret_cast<uint64_t>(&region);
    if (ioctl(fd, uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      throw ErrnoError(info.Env(), errno, "ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_INIT_MEM_REGION)");
    }
    // Success means every page was done (the kernel leaves nr_pages at 0).
    break;
  }
  return info.Env().Undefined();
}

// kvmTdxFinalizeVm(vmFd): ends the TD's build; nothing may be measured after it. EBUSY (the
// TDX module's TD lock was taken) is for lib/kvm/tdx-launch.ts to retry.
Napi::Value TdxFinalizeVm(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_tdx_cmd cmd{};
  cmd.id = uapi::KVM_TDX_FINALIZE_VM;
  if (RetryIoctl(args.Fd(0), uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) throw TdxFailure(info.Env(), errno, "KVM_TDX_FINALIZE_VM", cmd.hw_error);
  return info.Env().Undefined();
}

}  // namespace

void InitConfidentialLaunch(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmSevSnpLaunchStart", Napi::Function::New(env, SevSnpLaunchStart));
  exports.Set("kvmSevSnpLaunchUpdate", Napi::Function::New(env, SevSnpLaunchUpdate));
  exports.Set("kvmSevSnpLaunchFinish", Napi::Function::New(env, SevSnpLaunchFinish));
  exports.Set("kvmTdxInitVcpu", Napi::Function::New(env, TdxInitVcpu));
  exports.Set("kvmTdxGetCpuid", Napi::Function::New(env, TdxGetCpuid));
  exports.Set("kvmTdxInitMemRegion", Napi::Function::New(env, TdxInitMemRegion));
  exports.Set("kvmTdxFinalizeVm", Napi::Function::New(env, TdxFinalizeVm));
}
