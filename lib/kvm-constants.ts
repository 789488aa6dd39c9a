// KVM uAPI numbers the TypeScript side needs (Linux 6.12 include/uapi; TDX's VM type from 6.16).

export const KVM_CAP_USER_MEMORY2 = 231;
export const KVM_CAP_MEMORY_ATTRIBUTES = 233;
export const KVM_CAP_GUEST_MEMFD = 234;
export const KVM_CAP_VM_TYPES = 235;

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
