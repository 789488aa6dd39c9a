// The initialization an SEV-SNP or TDX VM needs after KVM_CREATE_VM and before memslots and
// vCPUs: each function is one KVM_MEMORY_ENCRYPT_OP sub-command on the VM fd. What to pass
// (GHCB version, TD attributes, the CPUID configuration) is decided in lib/kvm/vm-init.ts.
#include <vector>

#include "args.h"
#include "uapi_coco.h"

namespace {

/** The kernel's error plus the firmware's (PSP) or TDX module's status, when it gave one. */
Napi::Error EncryptOpError(Napi::Env env, int err, const char* syscall, const char* field, uint64_t status) {
  Napi::Error error = ErrnoError(env, err, syscall);
  if (status != 0) error.Set(field, Napi::BigInt::New(env, status));
  return error;
}

// KVM_SEV_INIT2 (struct kvm_sev_init): SNP (and SEV, SEV-ES) VMs of the new VM types.
// kvmSevInit2(vmFd, vmsaFeatures, ghcbVersion). INIT2 issues no firmware command through
// /dev/sev (sev_guest_init2 never reads kvm_sev_cmd.sev_fd), so none is passed; the /dev/sev
// fd matters from SNP_LAUNCH_START on, which KVM keeps for the VM's later commands.
Napi::Value SevInit2(const Napi::CallbackInfo& info) {
  Args args(info);
  uapi::kvm_sev_init init{};
  init.vmsa_features = args.U64(1, "vmsaFeatures");
  uint32_t ghcb = args.U32(2, "ghcbVersion");
  if (ghcb > UINT16_MAX) throw ArgumentError(info.Env(), "ghcbVersion must be a uint16");
  init.ghcb_version = static_cast<uint16_t>(ghcb);
  uapi::kvm_sev_cmd cmd{};
  cmd.id = uapi::KVM_SEV_INIT2;
  cmd.data = reinterpret_cast<uint64_t>(&init);
  if (RetryIoctl(args.Fd(0), uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) {
    throw EncryptOpError(info.Env(), errno, "ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_INIT2)", "firmwareError", cmd.error);
  }
  return info.Env().Undefined();
}

// KVM_TDX_CAPABILITIES: supported TD attributes and XFAM, and the configurable CPUID bits
// as raw kvm_cpuid_entry2 records. The entry count is the TDX module's; E2BIG means our
// buffer was too small, so grow it.
Napi::Value TdxCapabilities(const Napi::CallbackInfo& info) {
  Args args(info);
  int fd = args.Fd(0);
  for (uint32_t capacity = 64; capacity <= 4096; capacity *= 2) {
    std::vector<uint8_t> storage(sizeof(uapi::kvm_tdx_capabilities) + capacity * sizeof(uapi::kvm_cpuid_entry2));
    auto* caps = reinterpret_cast<uapi::kvm_tdx_capabilities*>(storage.data());
    caps->cpuid.nent = capacity;
    uapi::kvm_tdx_cmd cmd{};
    cmd.id = uapi::KVM_TDX_CAPABILITIES;
    cmd.data = reinterpret_cast<uint64_t>(caps);
    if (RetryIoctl(fd, uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) {
      if (errno == E2BIG) continue;
      throw EncryptOpError(info.Env(), errno, "ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_CAPABILITIES)", "hwError", cmd.hw_error);
    }
    Napi::Object result = Napi::Object::New(info.Env());
    result.Set("supportedAttributes", U64Value(info.Env(), caps->supported_attrs));
    result.Set("supportedXfam", U64Value(info.Env(), caps->supported_xfam));
    uint32_t nent = caps->cpuid.nent <= capacity ? caps->cpuid.nent : capacity;
    result.Set("cpuid",
               Napi::Buffer<uint8_t>::Copy(info.Env(), reinterpret_cast<uint8_t*>(caps->cpuid.entries), nent * sizeof(uapi::kvm_cpuid_entry2)));
    return result;
  }
  throw ErrnoError(info.Env(), E2BIG, "ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_CAPABILITIES)");
}

// KVM_TDX_INIT_VM (struct kvm_tdx_init_vm followed by the CPUID entries). Measurement
// registers (mrconfigid, mrowner, mrownerconfig) stay zero: launch measurement and
// attestation are the caller's business, not guestmem's.
Napi::Value TdxInitVm(const Napi::CallbackInfo& info) {
  Args args(info);
  if (!info[3].IsTypedArray()) throw ArgumentError(info.Env(), "cpuid must be a Buffer of kvm_cpuid_entry2 records");
  Napi::Uint8Array entries = info[3].As<Napi::Uint8Array>();
  if (entries.ByteLength() % sizeof(uapi::kvm_cpuid_entry2) != 0 || entries.ByteLength() > 4096 * sizeof(uapi::kvm_cpuid_entry2)) {
    throw ArgumentError(info.Env(), "cpuid must hold whole 40-byte kvm_cpuid_entry2 records (at most 4096)");
  }
  std::vector<uint8_t> storage(sizeof(uapi::kvm_tdx_init_vm) + entries.ByteLength());
  auto* init = reinterpret_cast<uapi::kvm_tdx_init_vm*>(storage.data());
  init->attributes = args.U64(1, "attributes");
  init->xfam = args.U64(2, "xfam");
  init->cpuid.nent = static_cast<uint32_t>(entries.ByteLength() / sizeof(uapi::kvm_cpuid_entry2));
  std::copy(entries.Data(), entries.Data() + entries.ByteLength(), reinterpret_cast<uint8_t*>(init->cpuid.entries));
  uapi::kvm_tdx_cmd cmd{};
  cmd.id = uapi::KVM_TDX_INIT_VM;
  cmd.data = reinterpret_cast<uint64_t>(init);
  if (RetryIoctl(args.Fd(0), uapi::KVM_MEMORY_ENCRYPT_OP, &cmd) < 0) {
    throw EncryptOpError(info.Env(), errno, "ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_INIT_VM)", "hwError", cmd.hw_error);
  }
  return info.Env().Undefined();
}

}  // namespace

void InitConfidentialVm(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmSevInit2", Napi::Function::New(env, SevInit2));
  exports.Set("kvmTdxCapabilities", Napi::Function::New(env, TdxCapabilities));
  exports.Set("kvmTdxInitVm", Napi::Function::New(env, TdxInitVm));
}
