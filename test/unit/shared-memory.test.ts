// The shared backing needs no KVM: memfd, mmap and punch-hole run on any Linux host.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { SharedMemory } from '../../lib/shared-memory';
import { native } from '../../lib/native';
import { assertSystemError } from '../support/errors';

const MiB = 1 << 20;

describe('SharedMemory (memfd + mmap + punch-hole)', () => {
  it('maps the memfd shared: writes through the buffer land in the file', () => {
    using memory = SharedMemory.create(2 * MiB);
    const bytes = new Uint8Array(memory.buffer);
    bytes.set([1, 2, 3], 4096);
    const fromFile = Buffer.alloc(3);
    fs.readSync(memory.fd, fromFile, 0, 3, 4096);
    assert.deepEqual([...fromFile], [1, 2, 3]);
    assert.equal(typeof memory.address, 'bigint');
    assert.ok(memory.address > 0n);
  });

  it('really frees punched pages (st_blocks drops) and they read back zero', () => {
    using memory = SharedMemory.create(8 * MiB);
    new Uint8Array(memory.buffer).fill(0xa5);
    const before = memory.allocatedBytes();
    assert.ok(before >= 8 * MiB, `all 8 MiB allocated (${before})`);
    memory.discard(2 * MiB, 4 * MiB);
    const after = memory.allocatedBytes();
    assert.ok(before - after >= 4 * MiB, `4 MiB freed: ${before} -> ${after}`);
    const bytes = new Uint8Array(memory.buffer);
    assert.equal(bytes[2 * MiB], 0);
    assert.equal(bytes[6 * MiB - 1], 0);
    assert.equal(bytes[2 * MiB - 1], 0xa5);
    assert.equal(bytes[6 * MiB], 0xa5);
  });

  it('keeps the mapping alive after close, and refuses fd use after close', () => {
    const memory = SharedMemory.create(MiB);
    const bytes = new Uint8Array(memory.buffer);
    memory.close();
    memory.close();
    bytes[0] = 7;
    assert.equal(bytes[0], 7);
    assert.throws(() => memory.discard(0, 4096), { code: 'ERR_GUESTMEM_CLOSED' });
  });

  it('rejects bad input in JS before any syscall', () => {
    using memory = SharedMemory.create(MiB);
    assert.throws(() => memory.discard(0, 2 * MiB), /outside the 1048576-byte shared memory/);
    assert.throws(() => memory.discard(-1, 4096), RangeError);
    assert.throws(() => memory.discard('0' as unknown as number, 4096), TypeError);
    assert.throws(() => SharedMemory.create(0), RangeError);
  });

  it('reports the kernel error Node-style for a closed fd', () => {
    const fd = native().memfdCreate('closed');
    fs.closeSync(fd);
    assertSystemError(() => native().fallocate(fd, 3, 0, 4096), 'EBADF', 'fallocate');
  });

  it('unmaps explicitly once, detaching the buffer', () => {
    const fd = native().memfdCreate('unmap');
    fs.ftruncateSync(fd, 4096);
    const { buffer } = native().mmap(fd, 4096, 0, true);
    native().munmap(buffer);
    assert.equal(buffer.byteLength, 0);
    native().munmap(buffer);
    fs.closeSync(fd);
  });
});
