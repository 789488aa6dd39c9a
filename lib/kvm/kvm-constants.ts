// KVM uAPI numbers the TypeScript side needs (Linux 6.12 include/uapi; TDX's VM type from
// 6.16; guest_memfd flags from 6.18). scripts/vm/check-uapi.sh checks each against the
// harness kernels' own headers.

/** KVM capability: KVM_SET_USER_MEMORY_REGION2 (memslots with a guest_memfd). */
export const KVM_CAP_USER_MEMORY2 = 231;
/**
 * KVM capability: KVM_SET_MEMORY_ATTRIBUTES; its value is the set of attributes the VM
 * supports.
 */
export const KVM_CAP_MEMORY_ATTRIBUTES = 233;
/** KVM capability: KVM_CREATE_GUEST_MEMFD (private memory the host cannot map). */
export const KVM_CAP_GUEST_MEMFD = 234;
/** KVM capability: the VM types this host can create, as a bit mask. */
export const KVM_CAP_VM_TYPES = 235;
/**
 * KVM capability: KVM_PRE_FAULT_MEMORY, to map a range into the guest's page tables ahead of
 * its accesses.
 */
export const KVM_CAP_PRE_FAULT_MEMORY = 236;
/** The GUEST_MEMFD_FLAG_* bits KVM_CREATE_GUEST_MEMFD accepts for this VM (0 before 6.18). */
export const KVM_CAP_GUEST_MEMFD_FLAGS = 244;

/** The host may mmap the guest_memfd. */
export const GUEST_MEMFD_FLAG_MMAP = 1 << 0;
/** Its pages start shared (mappable), not private: the basis of in-place conversion. */
export const GUEST_MEMFD_FLAG_INIT_SHARED = 1 << 1;

/** Memslot flag: the slot's private pages come from a guest_memfd. */
export const KVM_MEM_GUEST_MEMFD = 1 << 2;
/** The memory attribute that makes a range private: KVM maps it from the guest_memfd. */
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

/** A VM type by name (`'default'`, `'sw-protected'`, `'snp'`, `'tdx'`) or by KVM's number. */
export type VmType = keyof typeof VM_TYPES;

/** fallocate(2) flag: allocate or punch without changing the file's size. */
export const FALLOC_FL_KEEP_SIZE = 0x01;
/**
 * fallocate(2) flag: free the range's pages (with KEEP_SIZE): what a conversion does to the
 * backing it leaves.
 */
export const FALLOC_FL_PUNCH_HOLE = 0x02;

/** kvm_run.system_event.type: an SEV-ES/SNP guest's termination request (data[0]: the GHCB MSR). */
export const KVM_SYSTEM_EVENT_SEV_TERM = 6;
/** kvm_run.system_event.type: a TD's fatal-error report (data[0..15]: its 16 GPRs, error code in R12; Linux 6.16+). */
export const KVM_SYSTEM_EVENT_TDX_FATAL = 7;

/** KVM capability: an in-kernel LAPIC with the I/O APIC left to userspace; args[0] = reserved I/O APIC pins. */
export const KVM_CAP_SPLIT_IRQCHIP = 121;
/** KVM capability: the LAPIC timer's bus cycle in ns (before any vCPU; needs an in-kernel LAPIC). */
export const KVM_CAP_X86_APIC_BUS_CYCLES_NS = 237;
