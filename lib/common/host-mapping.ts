// A mapping of host memory (a memfd, a VFIO region) of any size the kernel accepts, and
// the windows JavaScript reaches its bytes through. The mapping's address is what KVM and
// VFIO need; JS never gets one ArrayBuffer over all of it (Node 20 cannot make one past
// 4 GiB). view() makes a window on demand over the part asked for: it keeps the memory
// mapped while it is referenced and is released when collected. unmap() releases the
// memory at once and empties every window still alive.

import { constants as bufferConstants } from 'node:buffer';
import { checkBytes, type Bytes } from './byte-range';
import { closedError, invalidArgType, invalidArgValue, outOfRange } from './errors';
import { checkMmap, checkOurMemory } from './mapping-guard';
import { native, type NativeMappingHandle } from './native';

const MADV_REMOVE = 9;

/**
 * madvise(MADV_REMOVE) over [address, address + length): frees a shared mapping's pages (they
 * read back as zero), as QEMU's ram_block_discard_range does for shared RAM. Refused first
 * unless the range is this process's shared read-write memory.
 */
export function removeMemory(address: Bytes, length: Bytes): void {
  checkOurMemory(address, length, 'madvise');
  native().madvise(address, length, MADV_REMOVE);
}

/** The longest window: Node's buffer limit, and no more than the addon makes (2^32). */
export function maxWindowBytes(): number {
  return Math.min(bufferConstants.MAX_LENGTH, native().maxWindow);
}

/**
 * Mappings whose unmap() munmaps (made here, or adopted with `owned`), weakly: memory
 * adopted by address inside one of them pins it, so that its owner's close() (or its
 * collection) cannot unmap what the adopted windows still reach (a read there is SIGSEGV).
 */
const unmappers = new Set<WeakRef<HostMapping>>();

/** The live mappings of `unmappers` that overlap [address, address + size). */
function unmappersOver(address: bigint, size: bigint): HostMapping[] {
  const found: HostMapping[] = [];
  for (const ref of unmappers) {
    const mapping = ref.deref();
    if (mapping === undefined) unmappers.delete(ref);
    else if (mapping.address < address + size && address < mapping.address + mapping.size) found.push(mapping);
  }
  return found;
}

/**
 * A host mapping (mmap) made by the addon, reached from JavaScript through windows made on
 * demand (`view`, `read`, `write`), never one buffer over all of it; `close()` unmaps at once
 * and empties every window still alive.
 */
export class HostMapping {
  readonly address: bigint;
  readonly size: bigint;
  #handle: NativeMappingHandle | null;
  /** This mapping's entry in `unmappers`, if its unmap() munmaps. */
  #entry: WeakRef<HostMapping> | null = null;
  /** The mappings this one was adopted from, kept mapped (and alive) until it unmaps. */
  #pinned: HostMapping[] = [];
  /** Adopted mappings inside this one still open; its munmap waits for the last. */
  #pins = 0;
  /** The handle unmap() let go of while pinned: munmapped when the last pin goes. */
  #deferred: NativeMappingHandle | null = null;

  private constructor(handle: NativeMappingHandle, address: bigint, size: bigint, readonly what: string, unmaps: boolean) {
    this.#handle = handle;
    this.address = address;
    this.size = size;
    if (unmaps) {
      this.#entry = new WeakRef(this);
      unmappers.add(this.#entry);
    }
  }

  /** mmap(MAP_SHARED) of [offset, offset + size) of an fd. */
  static map(fd: number, size: bigint, offset: bigint, what: string, writable = true): HostMapping {
    checkMmap(fd, size, offset, writable);
    const mapping = native().mmap(fd, size, offset, writable);
    return new HostMapping(mapping.handle, mapping.address, size, what, true);
  }

  /**
   * Memory this process already has mapped (checked in /proc/self/maps), reached through
   * windows like our own. `owned`: munmap it on unmap(); otherwise unmap() only empties the
   * windows and the memory stays its owner's. Memory of another HostMapping (a
   * SharedMemory of this process) keeps that one mapped until this one unmaps; taking it
   * `owned` is refused, as its unmap would pull the memory from under its owner.
   */
  static adopt(address: bigint, size: bigint, what: string, owned: boolean): HostMapping {
    address = checkBytes(address, `${what} address`);
    size = checkBytes(size, `${what} size`);
    const owners = unmappersOver(address, size);
    if (owned && owners.length > 0) {
      throw invalidArgValue(`${what}: [0x${address.toString(16)}, +0x${size.toString(16)}) is guestmem's own mapping (${owners[0]!.what}): it cannot be adopted with close: true, which would unmap it under its owner`);
    }
    checkOurMemory(address, size, 'adoptMapping');
    const mapping = native().adoptMapping(address, size, owned);
    const adopted = new HostMapping(mapping.handle, mapping.address, size, what, owned);
    adopted.#pinned = owners;
    for (const owner of owners) owner.#pins++;
    return adopted;
  }

  get unmapped(): boolean {
    return this.#handle === null;
  }

  /**
   * A window onto [offset, offset + length): writes through it land in the memory, and it
   * keeps the memory mapped until it is collected or unmap() empties it. At most
   * maxWindowBytes() long (Node's buffer limit); read larger ranges in parts.
   */
  view(offset: Bytes, length: number): Uint8Array {
    const start = this.checkWindow(offset, length, 'view');
    if (length === 0) return new Uint8Array(0);
    return new Uint8Array(native().mapWindow(this.handle(), start, length));
  }

  /** A copy of [offset, offset + length). */
  read(offset: Bytes, length: number): Buffer {
    const start = this.checkWindow(offset, length, 'read');
    if (length === 0) return Buffer.alloc(0);
    return Buffer.from(new Uint8Array(native().mapWindow(this.handle(), start, length)));
  }

  /** Copies `bytes` to `offset`. */
  write(offset: Bytes, bytes: Uint8Array): void {
    if (!(bytes instanceof Uint8Array)) throw invalidArgType(`${this.what} write: bytes must be a Uint8Array, got ${typeof bytes}`);
    const start = this.checkWindow(offset, bytes.length, 'write');
    if (bytes.length === 0) return;
    new Uint8Array(native().mapWindow(this.handle(), start, bytes.length)).set(bytes);
  }

  /**
   * Unmaps now; windows still alive become empty (byteLength 0). Idempotent. While memory
   * adopted from this mapping by address is open, the munmap waits for the last of them to
   * unmap (this object refuses use at once either way).
   */
  unmap(): void {
    const handle = this.#handle;
    if (handle === null) return;
    this.#handle = null;
    if (this.#entry) unmappers.delete(this.#entry);
    const pinned = this.#pinned;
    this.#pinned = [];
    try {
      if (this.#pins > 0) this.#deferred = handle;
      else native().munmap(handle);
    } finally {
      for (const owner of pinned) owner.unpin();
    }
  }

  private unpin(): void {
    if (--this.#pins > 0 || this.#deferred === null) return;
    const handle = this.#deferred;
    this.#deferred = null;
    native().munmap(handle);
  }

  private handle(): NativeMappingHandle {
    if (this.#handle === null) throw closedError(`${this.what} mapping`);
    return this.#handle;
  }

  /** Validates a window in JS, before any native call; returns its offset as a bigint. */
  private checkWindow(offset: Bytes, length: number, what: string): bigint {
    this.handle();
    if (typeof length !== 'number') throw invalidArgType(`${this.what} ${what} length must be a number, got ${typeof length}`);
    if (!Number.isSafeInteger(length) || length < 0) throw outOfRange(`${this.what} ${what} length must be a non-negative integer, got ${length}`);
    const limit = maxWindowBytes();
    if (length > limit) {
      throw outOfRange(`${this.what} ${what} of ${length} bytes is past Node's buffer limit (${limit} bytes): take it in parts`);
    }
    const start = checkBytes(offset, `${this.what} ${what} offset`);
    if (start + BigInt(length) > this.size) {
      throw outOfRange(`${this.what} ${what} [0x${start.toString(16)}, +0x${length.toString(16)}) is outside its 0x${this.size.toString(16)} bytes`);
    }
    return start;
  }
}
