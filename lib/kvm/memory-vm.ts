// What guest memory needs of a VM: the calls RamBlock and GuestMemory make. A `Vm` is one;
// a `DelegatedVm` is another, for a VM that lives in another process (KVM refuses VM
// ioctls from any process but the one that created the VM).

import type { Bytes } from '../common/byte-range';
import type { GuestMemfd, MemoryRegion } from './kvm';

/** What guest memory needs of a VM: a {@link Vm} in this process, or a {@link DelegatedVm}. */
export interface MemoryVm {
  /** The KVM_CREATE_VM type number; -1 where unknown. */
  readonly type: number;
  readonly closed: boolean;
  readonly supportsGuestMemfd: boolean;
  /** The KVM_MEMORY_ATTRIBUTE_* bits the VM supports. */
  readonly memoryAttributes: bigint;
  readonly supportsPreFault: boolean;
  /** KVM_CREATE_GUEST_MEMFD. */
  createGuestMemfd(size: Bytes, flags?: Bytes): GuestMemfd;
  /** KVM_SET_USER_MEMORY_REGION2. */
  setUserMemoryRegion(region: MemoryRegion): void;
  /** Deletes a memslot (KVM_SET_USER_MEMORY_REGION2 with size 0). */
  deleteMemorySlot(slot: number): void;
  /** KVM_SET_MEMORY_ATTRIBUTES over [gpa, gpa + size). */
  setMemoryAttributes(gpa: Bytes, size: Bytes, to: 'private' | 'shared' | bigint): void;
  /** KVM_PRE_FAULT_MEMORY through one of the VM's vCPUs. */
  preFaultMemory(vcpuFd: number, gpa: Bytes, size: Bytes): void;
}
