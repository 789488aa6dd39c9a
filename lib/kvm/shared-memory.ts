// The shared backing of guest memory: a memfd, sized and mapped MAP_SHARED, sparse until
// touched. Its address goes into memslots and DMA mappings; JS reads and writes it through
// windows (view/read/write) of at most Node's buffer limit each, never one ArrayBuffer over
// the whole of it, so a block may be as large as the kernel allows. close() unmaps at once
// and empties every window still alive.

import fs from 'node:fs';
import { checkBytes, checkExtent, type Bytes } from '../common/byte-range';
import { outOfRange } from '../common/errors';
import { FdOwner } from '../common/fd-owner';
import { HostMapping } from '../common/host-mapping';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from './kvm-constants';
import { native } from '../common/native';

/** off_t is signed: a file (and a mapping offset) stops below 2^63. */
const MAX_FILE_SIZE = (1n << 63n) - 1n;

/**
 * The shared backing of a RAM block: a memfd mapped once, whose address KVM and VFIO get;
 * punch-hole gives back what a conversion to private leaves.
 */
export class SharedMemory extends FdOwner {
  /** Bytes, as a bigint: blocks may pass 2^53 with a large granule. */
  readonly size: bigint;
  /** Host virtual address of the mapping. */
  readonly address: bigint;
  readonly #mapping: HostMapping;

  private constructor(fd: number, mapping: HostMapping) {
    super(fd, 'shared memory');
    this.size = mapping.size;
    this.address = mapping.address;
    this.#mapping = mapping;
  }

  /** A memfd of `size` bytes (number or bigint), mapped shared and writable. */
  static create(size: Bytes, name = 'guestmem-shared'): SharedMemory {
    const length = checkBytes(size, 'shared memory size');
    if (length === 0n || length > MAX_FILE_SIZE) throw outOfRange(`shared memory size must be within [1, 2^63), got ${length}`);
    const fd = native().memfdCreate(name);
    try {
      native().ftruncate(fd, length);
      return new SharedMemory(fd, HostMapping.map(fd, length, 0n, `shared memory ${name}`));
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
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

  /** Frees the pages of a range (fallocate PUNCH_HOLE | KEEP_SIZE); it reads back as zero. */
  discard(offset: Bytes, size: Bytes): void {
    const [start, length] = checkExtent(offset, size, this.size, 'discard', 'shared memory');
    native().fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, length);
  }

  /** Bytes of memory the memfd holds now (st_blocks * 512). */
  allocatedBytes(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }

  protected override beforeClose(): void {
    this.#mapping.unmap();
  }
}
