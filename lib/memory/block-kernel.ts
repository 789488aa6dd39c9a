// The kernel calls of a conversion, as one block makes them: KVM's memory attributes over its
// guest range, the discard of its shared backing, the punch-hole of its guest_memfd. On the
// main thread they go through the objects that own the fds; in another thread, through the
// same fds by number (fds are process-wide), owned by nobody there: the main thread's
// RamBlock closes them, after every thread has stopped converting (close takes the lock).

import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, KVM_MEMORY_ATTRIBUTE_PRIVATE } from '../kvm/kvm-constants';
import { GuestmemError, invalidArgType } from '../common/errors';
import type { GuestMemfd } from '../kvm/kvm';
import { Vm } from '../kvm/kvm';
import type { MemoryVm } from '../kvm/memory-vm';
import { removeMemory } from '../common/host-mapping';
import { native } from '../common/native';
import type { SharedMemory } from '../kvm/shared-memory';
import type { PageState } from '../tracker/state-change-channel';
import { defineThreadKind, type ThreadDescriptor } from '../common/thread-kinds';

/** The kernel calls a conversion makes, with block-relative offsets but for KVM's. */
export interface BlockKernel {
  /** KVM_SET_MEMORY_ATTRIBUTES over [gpa, gpa + size). */
  setMemoryAttributes(gpa: number, size: number, to: PageState): void;
  /** Frees [offset, offset + size) of the shared backing (the range turned private). */
  discardShared(offset: number, size: number): void;
  /** Frees [offset, offset + size) of the guest_memfd window (the range turned shared). */
  punchPrivate(offset: number, size: number): void;
}

/**
 * A VM that can say how another thread reaches it: a stand-in VM of a test, whose "kernel"
 * lives in shared memory, describes itself (a kind defined with defineThreadKind('kernel')).
 */
export interface ThreadDescribableVm {
  describeForThreads(shared: SharedMemory, guestMemfd: GuestMemfd): ThreadDescriptor;
}


/** The calls through the objects that own the fds (the main thread's RamBlock). */
export function ownedKernel(vm: MemoryVm, shared: SharedMemory, guestMemfd: GuestMemfd): BlockKernel {
  return {
    setMemoryAttributes: (gpa, size, to) => vm.setMemoryAttributes(gpa, size, to),
    discardShared: (offset, size) => shared.discard(offset, size),
    punchPrivate: (offset, size) => guestMemfd.punchHole(offset, size),
  };
}

/**
 * What another thread needs to make the same calls: the fd numbers and offsets ('kvm'), or
 * the stand-in's own description. ERR_GUESTMEM_UNSUPPORTED for a VM in another process
 * (KVM takes VM ioctls only from the process that made the VM: a DelegatedVm).
 */
export function describeKernel(vm: MemoryVm, shared: SharedMemory, guestMemfd: GuestMemfd): ThreadDescriptor {
  const describable = vm as Partial<ThreadDescribableVm>;
  if (typeof describable.describeForThreads === 'function') return describable.describeForThreads(shared, guestMemfd);
  if (!(vm instanceof Vm)) {
    throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', 'a block of a VM in another process cannot be converted from another thread: its KVM calls go through that process');
  }
  const sharedFile = shared.closed ? null : fdOrNull(shared);
  return {
    kind: 'kvm',
    vmFd: vm.fd,
    shared: sharedFile === null ? { address: shared.address } : { fd: sharedFile, fileOffset: shared.fileOffset },
    guestMemfd: { fd: guestMemfd.fd, offset: guestMemfd.offset, size: guestMemfd.size },
  };
}

function fdOrNull(shared: SharedMemory): number | null {
  try {
    return shared.fd;
  } catch {
    // Memory adopted by address: discarded by madvise, as on the main thread.
    return null;
  }
}

interface KvmKernelDescriptor {
  vmFd: number;
  shared: { fd: number; fileOffset: bigint } | { address: bigint };
  guestMemfd: { fd: number; offset: bigint; size: bigint };
}

/** The 'kvm' kind: the same calls by fd number, as SharedMemory.discard and GuestMemfd.punchHole make them. */
function borrowedKernel(descriptor: ThreadDescriptor): BlockKernel {
  const { vmFd, shared, guestMemfd } = descriptor as unknown as KvmKernelDescriptor;
  if (typeof vmFd !== 'number' || typeof guestMemfd?.fd !== 'number') throw invalidArgType('a kvm kernel descriptor needs vmFd and guestMemfd.fd');
  return {
    setMemoryAttributes: (gpa, size, to) => native().kvmSetMemoryAttributes(vmFd, BigInt(gpa), BigInt(size), to === 'private' ? KVM_MEMORY_ATTRIBUTE_PRIVATE : 0n),
    discardShared: (offset, size) => {
      if ('fd' in shared) native().fallocate(shared.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, shared.fileOffset + BigInt(offset), BigInt(size));
      else removeMemory(shared.address + BigInt(offset), BigInt(size));
    },
    punchPrivate: (offset, size) => native().fallocate(guestMemfd.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, guestMemfd.offset + BigInt(offset), BigInt(size)),
  };
}

defineThreadKind('kernel', 'kvm', borrowedKernel);
