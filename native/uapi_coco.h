// Confidential-VM initialization and launch uAPI: AMD SEV-SNP (KVM_SEV_INIT2, Linux 6.10+;
// SNP_LAUNCH_START/UPDATE/FINISH, 6.11+) and Intel TDX (KVM_TDX_CAPABILITIES, INIT_VM,
// INIT_VCPU, INIT_MEM_REGION, FINALIZE_VM, Linux 6.16+), all sub-commands of
// KVM_MEMORY_ENCRYPT_OP on the VM fd (TDX's INIT_VCPU and INIT_MEM_REGION on a vCPU fd).
// From arch/x86/include/uapi/asm/kvm.h and
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
constexpr uint32_t KVM_SEV_SNP_LAUNCH_START = 100;
constexpr uint32_t KVM_SEV_SNP_LAUNCH_UPDATE = 101;
constexpr uint32_t KVM_SEV_SNP_LAUNCH_FINISH = 102;

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

// ---- SEV-SNP launch (Linux 6.11+) ----
// LAUNCH_START: the guest policy (bit 17 must be one; bit 16 allows SMT) and the OS-visible
// workarounds; flags must be 0.
struct kvm_sev_snp_launch_start {
  uint64_t policy;
  uint8_t gosvw[16];
  uint16_t flags;
  uint8_t pad0[6];
  uint64_t pad1[4];
};
static_assert(sizeof(kvm_sev_snp_launch_start) == 64);
static_assert(offsetof(kvm_sev_snp_launch_start, policy) == 0);
static_assert(offsetof(kvm_sev_snp_launch_start, gosvw) == 8);
static_assert(offsetof(kvm_sev_snp_launch_start, flags) == 24);
static_assert(offsetof(kvm_sev_snp_launch_start, pad0) == 26);
static_assert(offsetof(kvm_sev_snp_launch_start, pad1) == 32);

// Page types of LAUNCH_UPDATE (the firmware's own values).
constexpr uint8_t KVM_SEV_SNP_PAGE_TYPE_NORMAL = 0x1;
constexpr uint8_t KVM_SEV_SNP_PAGE_TYPE_ZERO = 0x3;
constexpr uint8_t KVM_SEV_SNP_PAGE_TYPE_UNMEASURED = 0x4;
constexpr uint8_t KVM_SEV_SNP_PAGE_TYPE_SECRETS = 0x5;
constexpr uint8_t KVM_SEV_SNP_PAGE_TYPE_CPUID = 0x6;

// LAUNCH_UPDATE: copies [uaddr, uaddr + len) into the guest_memfd pages from gfn_start and
// measures them. On success the kernel may have done only part: it advances gfn_start, uaddr
// and len past what it did, and the caller calls again until len is 0.
struct kvm_sev_snp_launch_update {
  uint64_t gfn_start;
  uint64_t uaddr;
  uint64_t len;
  uint8_t type;
  uint8_t pad0;
  uint16_t flags;
  uint32_t pad1;
  uint64_t pad2[4];
};
static_assert(sizeof(kvm_sev_snp_launch_update) == 64);
static_assert(offsetof(kvm_sev_snp_launch_update, gfn_start) == 0);
static_assert(offsetof(kvm_sev_snp_launch_update, uaddr) == 8);
static_assert(offsetof(kvm_sev_snp_launch_update, len) == 16);
static_assert(offsetof(kvm_sev_snp_launch_update, type) == 24);
static_assert(offsetof(kvm_sev_snp_launch_update, pad0) == 25);
static_assert(offsetof(kvm_sev_snp_launch_update, flags) == 26);
static_assert(offsetof(kvm_sev_snp_launch_update, pad1) == 28);
static_assert(offsetof(kvm_sev_snp_launch_update, pad2) == 32);

constexpr size_t KVM_SEV_SNP_FINISH_DATA_SIZE = 32;

// LAUNCH_FINISH: encrypts and measures every vCPU's VMSA and ends the launch. No ID block
// (id_block_en 0): guestmem leaves attestation identity to the caller.
struct kvm_sev_snp_launch_finish {
  uint64_t id_block_uaddr;
  uint64_t id_auth_uaddr;
  uint8_t id_block_en;
  uint8_t auth_key_en;
  uint8_t vcek_disabled;
  uint8_t host_data[KVM_SEV_SNP_FINISH_DATA_SIZE];
  uint8_t pad0[3];
  uint16_t flags;
  uint64_t pad1[4];
};
static_assert(sizeof(kvm_sev_snp_launch_finish) == 88);
static_assert(offsetof(kvm_sev_snp_launch_finish, id_block_uaddr) == 0);
static_assert(offsetof(kvm_sev_snp_launch_finish, id_auth_uaddr) == 8);
static_assert(offsetof(kvm_sev_snp_launch_finish, id_block_en) == 16);
static_assert(offsetof(kvm_sev_snp_launch_finish, auth_key_en) == 17);
static_assert(offsetof(kvm_sev_snp_launch_finish, vcek_disabled) == 18);
static_assert(offsetof(kvm_sev_snp_launch_finish, host_data) == 19);
static_assert(offsetof(kvm_sev_snp_launch_finish, pad0) == 51);
static_assert(offsetof(kvm_sev_snp_launch_finish, flags) == 54);
static_assert(offsetof(kvm_sev_snp_launch_finish, pad1) == 56);

// ---- TDX (enum kvm_tdx_cmd_id) ----
constexpr uint32_t KVM_TDX_CAPABILITIES = 0;
constexpr uint32_t KVM_TDX_INIT_VM = 1;
constexpr uint32_t KVM_TDX_INIT_VCPU = 2;        // vCPU fd; data = the vCPU's initial RCX
constexpr uint32_t KVM_TDX_INIT_MEM_REGION = 3;  // vCPU fd; data = kvm_tdx_init_mem_region
constexpr uint32_t KVM_TDX_FINALIZE_VM = 4;      // VM fd; data = 0
constexpr uint32_t KVM_TDX_GET_CPUID = 5;        // vCPU fd; data = struct kvm_cpuid2 (in/out)

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

// KVM_TDX_INIT_MEM_REGION's flag: extend the TD's measurement (MRTD) with the pages too.
constexpr uint32_t KVM_TDX_MEASURE_MEMORY_REGION = 1;

// Copies nr_pages pages from source_addr into the TD's private memory at gpa (private in
// KVM's attributes already). The kernel advances all three as it goes and, interrupted,
// returns EINTR or EAGAIN with the struct saying what is left.
struct kvm_tdx_init_mem_region {
  uint64_t source_addr;
  uint64_t gpa;
  uint64_t nr_pages;
};
static_assert(sizeof(kvm_tdx_init_mem_region) == 24);
static_assert(offsetof(kvm_tdx_init_mem_region, source_addr) == 0);
static_assert(offsetof(kvm_tdx_init_mem_region, gpa) == 8);
static_assert(offsetof(kvm_tdx_init_mem_region, nr_pages) == 16);

}  // namespace uapi
