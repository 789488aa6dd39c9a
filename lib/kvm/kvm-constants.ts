// KVM uAPI numbers the TypeScript side needs (Linux 6.12 include/uapi; TDX's VM type from
// 6.16; guest_memfd flags from 6.18). scripts/vm/check-uapi.sh checks each against the
// harness kernels' own headers.

export const KVM_CAP_USER_MEMORY2 = 231;
export const KVM_CAP_MEMORY_ATTRIBUTES = 233;
export const KVM_CAP_GUEST_MEMFD = 234;
export const KVM_CAP_VM_TYPES = 235;
export const KVM_CAP_PRE_FAULT_MEMORY = 236;
/** The GUEST_MEMFD_FLAG_* bits KVM_CREATE_GUEST_MEMFD accepts for this VM (0 before 6.18). */
export const KVM_CAP_GUEST_MEMFD_FLAGS = 244;

/** The host may mmap the guest_memfd. */
export const GUEST_MEMFD_FLAG_MMAP = 1 << 0;
/** Its pages start shared (mappable), not private: the basis of in-place conversion. */
export const GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1;

export const KVM_MEM_GUEST_MEMFD = 1 << 2;
export const KVM_MEMORY_ATTRIBUTE_PRIVATE = 1n << 3n;

/** x86 VM types: the bit index in KVM_CAP_VM_TYPES and the KVM_CREATE_VM argument. */
export const VM_TYPES = {
  default: 0,
  'sw-protected': 1,
  sev: 2,
  'sev-es': 3,
  snp: 4,
  tdx: 5,
} as const;

export type VmType = keyof typeof VM_TYPES;

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
