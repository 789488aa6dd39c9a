// The shared backing of guest memory: a memfd, sized and mapped MAP_SHARED. Its address
// goes into memslots and DMA mappings; its ArrayBuffer lets JS read and write it. The
// mapping lives as long as the buffer (or any view of it), not as long as the fd.

import fs from 'node:fs';
import { checkExtent, type Bytes } from './byte-range';
import { invalidArgType, outOfRange } from './errors';
import { FdOwner } from './fd-owner';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from './kvm-constants';
import { native } from './native';

export class SharedMemory extends FdOwner {
  readonly size: number;
  /** Host virtual address of the mapping. */
  readonly address: bigint;
  readonly buffer: ArrayBuffer;

  private constructor(fd: number, size: number, mapping: { buffer: ArrayBuffer; address: bigint }) {
    super(fd, 'shared memory');
    this.size = size;
    this.address = mapping.address;
    this.buffer = mapping.buffer;
  }

  static create(size: number, name = 'guestmem-shared'): SharedMemory {
    if (typeof size !== 'number') throw invalidArgType(`size must be a number, got ${typeof size}`);
    if (!Number.isSafeInteger(size) || size <= 0) throw outOfRange(`size must be a positive safe integer, got ${size}`);
    const fd = native().memfdCreate(name);
    try {
      fs.ftruncateSync(fd, size);
      return new SharedMemory(fd, size, native().mmap(fd, size, 0, true));
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
  }

  /** Frees the pages of a range (fallocate PUNCH_HOLE | KEEP_SIZE); it reads back as zero. */
  discard(offset: Bytes, size: Bytes): void {
    const [start, length] = checkExtent(offset, size, BigInt(this.size), 'discard', 'shared memory');
    native().fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, length);
  }

  /** Bytes of memory the memfd holds now (st_blocks * 512). */
  allocatedBytes(): number {
    return fs.fstatSync(this.fd).blocks * 512;
  }
}
