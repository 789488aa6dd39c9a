// Confidential-VM initialisation uAPI: AMD SEV-SNP (KVM_SEV_INIT2, Linux 6.10+) and Intel
// TDX (KVM_TDX_CAPABILITIES, KVM_TDX_INIT_VM, Linux 6.16+), both sub-commands of
// KVM_MEMORY_ENCRYPT_OP on the VM fd. From arch/x86/include/uapi/asm/kvm.h and
// Documentation/virt/kvm/x86/{amd-memory-encryption,intel-tdx}.rst; pinned by static_assert
// like uapi.h, and compared with each harness kernel's headers by scripts/vm/check-uapi.sh
// (the TDX part only where the kernel has it: 7.2, not 6.12).
#pragma once

#include <linux/ioctl.h>
#include <cstddef>
#include <cstdint>

#include "uapi.h"
#include "uapi_vcpu.h"

namespace uapi {

// The kernel declares the argument as `unsigned long` but passes a pointer to a command
// struct (kvm_sev_cmd or kvm_tdx_cmd): the number encodes sizeof(unsigned long).
constexpr unsigned long KVM_MEMORY_ENCRYPT_OP = _IOWR(kKvmIo, 0xba, unsigned long);
static_assert(KVM_MEMORY_ENCRYPT_OP == 0xc008aeba);

// ---- SEV (enum sev_cmd_id) ----
constexpr uint32_t KVM_SEV_INIT2 = 22;

struct kvm_sev_cmd {
  uint32_t id;
  uint32_t pad0;
  uint64_t data;
  uint32_t error;   // the PSP firmware's status code when the command fails there
  uint32_t sev_fd;  // an open /dev/sev: proof that the caller may use the PSP
};
static_assert(sizeof(kvm_sev_cmd) == 24);
static_assert(offsetof(kvm_sev_cmd, data) == 8);
static_assert(offsetof(kvm_sev_cmd, error) == 16);
static_assert(offsetof(kvm_sev_cmd, sev_fd) == 20);

struct kvm_sev_init {
  uint64_t vmsa_features;
  uint32_t flags;
  uint16_t ghcb_version;
  uint16_t pad1;
  uint32_t pad2[8];
};
static_assert(sizeof(kvm_sev_init) == 48);
static_assert(offsetof(kvm_sev_init, flags) == 8);
static_assert(offsetof(kvm_sev_init, ghcb_version) == 12);
static_assert(offsetof(kvm_sev_init, pad1) == 14);
static_assert(offsetof(kvm_sev_init, pad2) == 16);

// ---- TDX (enum kvm_tdx_cmd_id) ----
constexpr uint32_t KVM_TDX_CAPABILITIES = 0;
constexpr uint32_t KVM_TDX_INIT_VM = 1;

struct kvm_tdx_cmd {
  uint32_t id;
  uint32_t flags;
  uint64_t data;
  uint64_t hw_error;  // the TDX module's SEAMCALL status when it refused
};
static_assert(sizeof(kvm_tdx_cmd) == 24);
static_assert(offsetof(kvm_tdx_cmd, data) == 8);
static_assert(offsetof(kvm_tdx_cmd, hw_error) == 16);

// Followed by cpuid.nent kvm_cpuid_entry2 records: the CPUID bits userspace may configure
// (a set bit is configurable), one entry per leaf/subleaf the TDX module lets it set.
struct kvm_tdx_capabilities {
  uint64_t supported_attrs;
  uint64_t supported_xfam;
  uint64_t kernel_tdvmcallinfo_1_r11;
  uint64_t user_tdvmcallinfo_1_r11;
  uint64_t kernel_tdvmcallinfo_1_r12;
  uint64_t user_tdvmcallinfo_1_r12;
  uint64_t reserved[250];
  kvm_cpuid2 cpuid;
};
static_assert(sizeof(kvm_tdx_capabilities) == 2056);
static_assert(offsetof(kvm_tdx_capabilities, supported_xfam) == 8);
static_assert(offsetof(kvm_tdx_capabilities, kernel_tdvmcallinfo_1_r11) == 16);
static_assert(offsetof(kvm_tdx_capabilities, user_tdvmcallinfo_1_r12) == 40);
static_assert(offsetof(kvm_tdx_capabilities, reserved) == 48);
static_assert(offsetof(kvm_tdx_capabilities, cpuid) == 2048);

// Followed by cpuid.nent entries: the TD's CPUID values, each for a leaf that
// KVM_TDX_CAPABILITIES listed (any other leaf is EINVAL).
struct kvm_tdx_init_vm {
  uint64_t attributes;
  uint64_t xfam;
  uint64_t mrconfigid[6];
  uint64_t mrowner[6];
  uint64_t mrownerconfig[6];
  uint64_t reserved[12];
  kvm_cpuid2 cpuid;
};
static_assert(sizeof(kvm_tdx_init_vm) == 264);
static_assert(offsetof(kvm_tdx_init_vm, xfam) == 8);
static_assert(offsetof(kvm_tdx_init_vm, mrconfigid) == 16);
static_assert(offsetof(kvm_tdx_init_vm, mrowner) == 64);
static_assert(offsetof(kvm_tdx_init_vm, mrownerconfig) == 112);
static_assert(offsetof(kvm_tdx_init_vm, reserved) == 160);
static_assert(offsetof(kvm_tdx_init_vm, cpuid) == 256);

}  // namespace uapi
