// The shared backing of guest memory: a memfd, sized and mapped MAP_SHARED, sparse until
// touched. Its address goes into memslots and DMA mappings; JS reads and writes it through
// windows (view/read/write) of at most Node's buffer limit each, never one ArrayBuffer over
// the whole of it, so a block may be as large as the kernel allows. close() unmaps at once
// and empties every window still alive.
//
// A VMM that already has its guest RAM hands it over instead (adopt): a memfd (or any
// shareable fd) at an offset, or memory already mapped in this process by address. What
// guestmem did not create it does not close or unmap, unless told to (`close: true`): an
// adopted fd is duplicated, and only the duplicate is ours.

import fs from 'node:fs';
import { checkBytes, checkExtent, type Bytes } from '../common/byte-range';
import { closedError, GuestmemError, invalidArgType, invalidArgValue, outOfRange } from '../common/errors';
import { FdOwner } from '../common/fd-owner';
import { HostMapping, removeMemory } from '../common/host-mapping';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from './kvm-constants';
import { native } from '../common/native';

/** off_t is signed: a file (and a mapping offset) stops below 2^63. */
const MAX_FILE_SIZE = (1n << 63n) - 1n;
const PAGE = 4096n;

/**
 * Shared memory a VMM already has. `fd`: a memfd, shmem or regular file (nothing else: a
 * device's or KVM's fd may fault on read, SIGBUS), mapped here at `offset` (page-aligned);
 * the fd is duplicated unless `close` is true (then guestmem takes that fd and closes it).
 *
 * `unsafeAddress`: memory this process has mapped shared and read-write already (a memfd
 * or shmem mapping, checked in /proc/self/maps); unmapped on close only if `close`.
 * **Unsafe by nature**: guestmem cannot know when the memory's real owner unmaps it, and a
 * read after that is SIGSEGV; the caller must keep it mapped until this object is closed.
 * Memory of a SharedMemory of this process is the exception: it is kept mapped while
 * adopted (and may not be adopted with `close: true`). `address` is the older name of
 * `unsafeAddress`, still accepted.
 */
export type SharedMemorySource =
  | { fd: number; offset?: Bytes; close?: boolean }
  | { unsafeAddress: Bytes; close?: boolean }
  /** Deprecated: the same as `unsafeAddress`, whose name says what it is. */
  | { address: Bytes; close?: boolean };

class SharedFile extends FdOwner {
  constructor(fd: number) {
    super(fd, 'shared memory');
  }
}

/** The fd guestmem will own: the caller's own (told to close it), or a duplicate. */
export function takeFd(fd: unknown, close: unknown, what: string): number {
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw invalidArgType(`${what} fd must be a non-negative integer, got ${String(fd)}`);
  if (close !== undefined && typeof close !== 'boolean') throw invalidArgType(`${what} close must be a boolean, got ${typeof close}`);
  try {
    fs.fstatSync(fd);
  } catch (error) {
    throw new GuestmemError('ERR_GUESTMEM_CLOSED', `${what} fd ${fd} is not open`, { cause: error, errno: (error as NodeJS.ErrnoException).errno, syscall: 'fstat' });
  }
  return close === true ? fd : native().dupCloexec(fd);
}

/**
 * The shared backing of a RAM block: a memfd mapped once (or a VMM's memory adopted by fd or
 * address), whose address KVM and VFIO get; punch-hole gives back what a conversion to
 * private leaves.
 */
export class SharedMemory implements Disposable {
  /** Bytes, as a bigint: blocks may pass 2^53 with a large granule. */
  readonly size: bigint;
  /** Host virtual address of the mapping. */
  readonly address: bigint;
  /** Where the memory starts in its file (0 for one guestmem created). */
  readonly fileOffset: bigint;
  readonly #mapping: HostMapping;
  /** The file behind it; null when adopted by address alone. */
  readonly #file: SharedFile | null;
  #closed = false;

  private constructor(file: SharedFile | null, mapping: HostMapping, fileOffset: bigint) {
    this.#file = file;
    this.size = mapping.size;
    this.address = mapping.address;
    this.fileOffset = fileOffset;
    this.#mapping = mapping;
  }

  /** A memfd of `size` bytes (number or bigint), mapped shared and writable. */
  static create(size: Bytes, name = 'guestmem-shared'): SharedMemory {
    const length = checkSize(size);
    const fd = native().memfdCreate(name);
    try {
      native().ftruncate(fd, length);
      return new SharedMemory(new SharedFile(fd), HostMapping.map(fd, length, 0n, `shared memory ${name}`), 0n);
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  }

  /** Shared memory a VMM already has, of `size` bytes (see SharedMemorySource). */
  static adopt(source: SharedMemorySource, size: Bytes, name = 'guestmem-shared'): SharedMemory {
    const length = checkSize(size);
    if (source === null || typeof source !== 'object') throw invalidArgType(`shared memory source must be { fd } or { unsafeAddress }, got ${source === null ? 'null' : typeof source}`);
    if ('fd' in source) {
      const offset = checkBytes(source.offset ?? 0, 'shared memory offset');
      if (offset % PAGE !== 0n) throw outOfRange(`shared memory offset must be a multiple of ${PAGE}, got ${offset}`);
      if (offset + length > MAX_FILE_SIZE) throw outOfRange('shared memory offset + size must stay below 2^63');
      const fd = takeFd(source.fd, source.close, 'shared memory');
      try {
        refuseUnmappable(fd, source.fd);
        // mmap is guarded: a range past the end of a regular file is refused (SIGBUS otherwise).
        return new SharedMemory(new SharedFile(fd), HostMapping.map(fd, length, offset, `shared memory ${name}`), offset);
      } catch (error) {
        fs.closeSync(fd);
        throw error;
      }
    }
    if ('unsafeAddress' in source || 'address' in source) {
      const address = checkBytes('unsafeAddress' in source ? source.unsafeAddress : source.address, 'shared memory address');
      if (address === 0n || address % PAGE !== 0n) throw outOfRange(`shared memory address must be a non-zero multiple of ${PAGE}, got 0x${address.toString(16)}`);
      if (source.close !== undefined && typeof source.close !== 'boolean') throw invalidArgType(`shared memory close must be a boolean, got ${typeof source.close}`);
      return new SharedMemory(null, HostMapping.adopt(address, length, `shared memory ${name}`, source.close === true), 0n);
    }
    throw invalidArgType('shared memory source must have an fd or an unsafeAddress');
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** The file's fd (ERR_GUESTMEM_CLOSED after close; ERR_GUESTMEM_UNSUPPORTED when adopted by address). */
  get fd(): number {
    if (this.#closed) throw closedError('shared memory');
    if (!this.#file) throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', 'this shared memory was adopted by address: it has no fd');
    return this.#file.fd;
  }

  /** A window onto [offset, offset + length) (see HostMapping.view). */
  view(offset: Bytes, length: number): Uint8Array {
    return this.#mapping.view(offset, length);
  }

  /** A copy of [offset, offset + length). */
  read(offset: Bytes, length: number): Buffer {
    return this.#mapping.read(offset, length);
  }

  /** Copies `bytes` into the memory at `offset`. */
  write(offset: Bytes, bytes: Uint8Array): void {
    this.#mapping.write(offset, bytes);
  }

  /**
   * Frees the pages of a range; it reads back as zero. A file: fallocate PUNCH_HOLE |
   * KEEP_SIZE at its place in the file. Memory known by address only (always a shared
   * mapping): MADV_REMOVE, which frees the file's pages as QEMU's ram_block_discard_range
   * does for shared RAM.
   */
  discard(offset: Bytes, size: Bytes): void {
    const [start, length] = checkExtent(offset, size, this.size, 'discard', 'shared memory');
    if (this.#closed) throw closedError('shared memory');
    if (this.#file) {
      native().fallocate(this.#file.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, this.fileOffset + start, length);
      return;
    }
    removeMemory(this.address + start, length);
  }

  /** Bytes of memory the file holds now (st_blocks * 512); not known for memory adopted by address. */
  allocatedBytes(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }

  /** Unmaps (memory adopted by address only if told to) and closes the fd guestmem owns. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#mapping.unmap();
    } finally {
      this.#file?.close();
    }
  }

  /** close(), for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Refuses an fd that is not a regular file (memfd and shmem files are): the mmap guard
 * checks a regular file's size, but a vCPU's or a device's fd maps pages that fault on
 * read (SIGBUS), which no check of the range can see.
 */
function refuseUnmappable(fd: number, callerFd: number): void {
  const stat = fs.fstatSync(fd);
  if (stat.isFile()) return;
  const kind = stat.isCharacterDevice() ? 'a character device' : stat.isBlockDevice() ? 'a block device' : stat.isDirectory() ? 'a directory'
    : stat.isFIFO() ? 'a pipe' : stat.isSocket() ? 'a socket' : 'not a file (an anonymous inode: KVM, VFIO, eventfd)';
  throw invalidArgValue(`shared memory fd ${callerFd} is ${kind}: only a memfd, shmem or regular file can back shared memory`);
}

function checkSize(size: Bytes): bigint {
  const length = checkBytes(size, 'shared memory size');
  if (length === 0n || length > MAX_FILE_SIZE) throw outOfRange(`shared memory size must be within [1, 2^63), got ${length}`);
  return length;
}
