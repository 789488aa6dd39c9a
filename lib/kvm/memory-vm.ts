// What guest memory needs of a VM: the calls RamBlock and GuestMemory make. A `Vm` is one;
// a `DelegatedVm` is another, for a VM that lives in another process (KVM refuses VM
// ioctls from any process but the one that created the VM).

import type { Bytes } from '../common/byte-range';
import type { GuestMemfd, MemoryRegion } from './kvm';

export interface MemoryVm {
  /** The KVM_CREATE_VM type number; -1 where unknown. */
  readonly type: number;
  readonly closed: boolean;
  readonly supportsGuestMemfd: boolean;
  /** The KVM_MEMORY_ATTRIBUTE_* bits the VM supports. */
  readonly memoryAttributes: bigint;
  readonly supportsPreFault: boolean;
  createGuestMemfd(size: Bytes, flags?: Bytes): GuestMemfd;
  setUserMemoryRegion(region: MemoryRegion): void;
  deleteMemorySlot(slot: number): void;
  setMemoryAttributes(gpa: Bytes, size: Bytes, to: 'private' | 'shared' | bigint): void;
  preFaultMemory(vcpuFd: number, gpa: Bytes, size: Bytes): void;
}
