// A VM that belongs to another process: an existing VMM created it and keeps it. KVM binds
// a VM to the memory map of the process that created it and answers every VM ioctl from
// any other process with EIO (virt/kvm/kvm_main.c, kvm_vm_ioctl), so a separate guestmem
// process cannot set the VM's memory attributes itself: it asks the VMM, through the
// functions given here (a pipe, a socket, whatever the VMM speaks). Everything else a
// conversion does (the tracker, VFIO mappings, punch-holes on the memfd and the
// guest_memfd) works from any process that holds the fds.
//
// Such a VM has its memslots already: blocks adopt them (RamBlockOptions.memslot), so
// creating a guest_memfd or a memslot here is refused.

import { checkExtent, type Bytes } from '../common/byte-range';
import { GuestmemError, invalidArgType } from '../common/errors';
import { describeValue } from '../common/validators';
import type { GuestMemfd, MemoryRegion } from './kvm';
import { KVM_MEMORY_ATTRIBUTE_PRIVATE } from './kvm-constants';
import type { MemoryVm } from './memory-vm';

/** What the VMM that owns the VM does for a {@link DelegatedVm}: its KVM calls, made there. */
export interface VmDelegate {
  /** The VM's type number, if the VMM says (-1 otherwise). */
  type?: number;
  /** The KVM_MEMORY_ATTRIBUTE_* bits the VM supports (default: PRIVATE). */
  memoryAttributes?: bigint;
  /**
   * KVM_SET_MEMORY_ATTRIBUTES done by the VMM, synchronously; must throw if it failed
   * (nothing changed then). A conversion's steps are ordered around this call, so a promise
   * is refused (ERR_GUESTMEM_ASYNC_DELEGATE) and the delegate is not asked again.
   */
  setMemoryAttributes(gpa: bigint, size: bigint, attributes: bigint): void;
  /** Deletes a memslot in the VMM, for a block told to delete the memslot it adopted. */
  deleteMemorySlot?(slot: number): void;
}

function notHere(what: string): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `${what}: the VM belongs to another process (KVM answers its ioctls only there); adopt what that VMM made (RamBlockOptions shared, guestMemfd, memslot)`);
}

/**
 * A VM owned by another process, for guest memory whose blocks adopt that VMM's memfd,
 * guest_memfd and memslots: memory attributes are set by the VMM through the delegate.
 */
export class DelegatedVm implements MemoryVm {
  readonly type: number;
  readonly memoryAttributes: bigint;
  readonly supportsGuestMemfd = true;
  readonly supportsPreFault = false;
  #closed = false;
  /** Set once the delegate answered with a promise: what the VMM did is unknown from then on. */
  #broken: GuestmemError | null = null;

  constructor(private readonly delegate: VmDelegate) {
    if (delegate === null || typeof delegate !== 'object' || typeof delegate.setMemoryAttributes !== 'function') {
      throw invalidArgType('a DelegatedVm needs { setMemoryAttributes(gpa, size, attributes) }');
    }
    const { type = -1, memoryAttributes = KVM_MEMORY_ATTRIBUTE_PRIVATE, deleteMemorySlot } = delegate;
    if (typeof type !== 'number' || !Number.isInteger(type) || type < -1 || type > 0xffffffff) throw invalidArgType(`the delegate's type must be a VM type number (or -1), got ${describeValue(type)}`);
    if (typeof memoryAttributes !== 'bigint' || memoryAttributes < 0n || memoryAttributes >= 1n << 64n) throw invalidArgType(`the delegate's memoryAttributes must be a 64-bit bigint, got ${describeValue(memoryAttributes)}`);
    if (deleteMemorySlot !== undefined && typeof deleteMemorySlot !== 'function') throw invalidArgType(`the delegate's deleteMemorySlot must be a function, got ${describeValue(deleteMemorySlot)}`);
    this.type = type;
    this.memoryAttributes = memoryAttributes;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Stops asking the VMM (blocks stop deleting memslots through it); the VM is the VMM's. */
  close(): void {
    this.#closed = true;
  }

  /** KVM_SET_MEMORY_ATTRIBUTES, asked of the VMM (it throws if the VMM failed). */
  setMemoryAttributes(gpa: Bytes, size: Bytes, to: 'private' | 'shared' | bigint): void {
    const [start, length] = checkExtent(gpa, size, 1n << 64n, 'attribute range');
    const attributes = to === 'private' ? KVM_MEMORY_ATTRIBUTE_PRIVATE : to === 'shared' ? 0n : to;
    if (typeof attributes !== 'bigint') throw invalidArgType(`attributes must be 'private', 'shared' or a bigint, got ${String(to)}`);
    if (this.#closed) throw new GuestmemError('ERR_GUESTMEM_CLOSED', 'the delegated VM is closed');
    if (this.#broken) throw this.#broken;
    const answer: unknown = this.delegate.setMemoryAttributes(start, length, attributes);
    if (answer != null && typeof (answer as PromiseLike<unknown>).then === 'function') {
      // The conversion cannot wait here (its steps are synchronous), and a promise's
      // rejection must not end the process: the change counts as failed, and since the VMM
      // may still apply it, its attributes and the tracker may disagree from now on (a
      // block's repair() cannot see that), so the delegate is not trusted again.
      Promise.resolve(answer).catch(() => {});
      this.#broken = new GuestmemError(
        'ERR_GUESTMEM_ASYNC_DELEGATE',
        `the VMM's setMemoryAttributes returned a promise for [0x${start.toString(16)}, +0x${length.toString(16)}); ` +
          'it must be synchronous (throw on failure); if the VMM still applies it, KVM and the tracker disagree there. ' +
          'Further attribute changes through this DelegatedVm are refused',
      );
      throw this.#broken;
    }
  }

  /** Asks the VMM to delete a memslot; refused when the delegate cannot. */
  deleteMemorySlot(slot: number): void {
    if (!this.delegate.deleteMemorySlot) throw notHere(`deleting memslot ${slot}`);
    this.delegate.deleteMemorySlot(slot);
  }

  /** Refused: the VMM made the guest_memfd; blocks adopt it. */
  createGuestMemfd(): GuestMemfd {
    throw notHere('creating a guest_memfd');
  }

  /** Refused: the VMM made the memslots; blocks adopt them. */
  setUserMemoryRegion(region: MemoryRegion): void {
    throw notHere(`creating memslot ${region.slot}`);
  }

  /** Refused: pre-faulting is a vCPU ioctl of the VMM's. */
  preFaultMemory(): void {
    throw notHere('KVM_PRE_FAULT_MEMORY');
  }
}
