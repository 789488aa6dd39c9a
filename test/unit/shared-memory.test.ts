// The shared backing needs no KVM: memfd, mmap, windows and punch-hole run on any Linux host.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { maxWindowBytes } from '../../lib/common/host-mapping';
import { native } from '../../lib/common/native';
import { assertSystemError } from '../support/errors';

const MiB = 1 << 20;

describe('SharedMemory (memfd + mmap + windows + punch-hole)', () => {
  it('maps the memfd shared: writes through a window land in the file', () => {
    using memory = SharedMemory.create(2 * MiB);
    memory.view(4096, 3).set([1, 2, 3]);
    const fromFile = Buffer.alloc(3);
    fs.readSync(memory.fd, fromFile, 0, 3, 4096);
    assert.deepEqual([...fromFile], [1, 2, 3]);
    assert.equal(typeof memory.address, 'bigint');
    assert.ok(memory.address > 0n);
    assert.equal(memory.size, BigInt(2 * MiB));
  });

  it('reads copies and writes bytes at an offset, windows over the same pages agree', () => {
    using memory = SharedMemory.create(MiB);
    memory.write(BigInt(MiB - 4), Uint8Array.of(9, 8, 7, 6));
    const copy = memory.read(MiB - 4, 4);
    assert.deepEqual([...copy], [9, 8, 7, 6]);
    copy[0] = 0;
    assert.equal(memory.view(MiB - 4, 1)[0], 9, 'read() is a copy');
    const a = memory.view(MiB - 4096, 4096);
    const b = memory.view(MiB - 4096, 4096);
    a[0] = 0x5a;
    assert.equal(b[0], 0x5a);
    assert.equal(memory.view(0, 0).length, 0);
  });

  it('really frees punched pages (st_blocks drops) and they read back zero', () => {
    using memory = SharedMemory.create(8 * MiB);
    memory.view(0, 8 * MiB).fill(0xa5);
    const before = memory.allocatedBytes();
    assert.ok(before >= 8 * MiB, `all 8 MiB allocated (${before})`);
    memory.discard(2 * MiB, 4 * MiB);
    const after = memory.allocatedBytes();
    assert.ok(before - after >= 4 * MiB, `4 MiB freed: ${before} -> ${after}`);
    const bytes = memory.view(0, 8 * MiB);
    assert.equal(bytes[2 * MiB], 0);
    assert.equal(bytes[6 * MiB - 1], 0);
    assert.equal(bytes[2 * MiB - 1], 0xa5);
    assert.equal(bytes[6 * MiB], 0xa5);
  });

  it('unmaps on close: windows still alive are emptied, and nothing is usable after', () => {
    const memory = SharedMemory.create(MiB);
    const bytes = memory.view(0, 4096);
    bytes[0] = 7;
    memory.close();
    memory.close();
    assert.equal(bytes.byteLength, 0);
    assert.equal(bytes[0], undefined);
    assert.throws(() => memory.view(0, 1), { code: 'ERR_GUESTMEM_CLOSED' });
    assert.throws(() => memory.read(0, 1), { code: 'ERR_GUESTMEM_CLOSED' });
    assert.throws(() => memory.discard(0, 4096), { code: 'ERR_GUESTMEM_CLOSED' });
  });


  it('rejects bad input in JS before any syscall', () => {
    using memory = SharedMemory.create(MiB);
    assert.throws(() => memory.discard(0, 2 * MiB), /outside the 1048576-byte shared memory/);
    assert.throws(() => memory.discard(-1, 4096), RangeError);
    assert.throws(() => memory.discard('0' as unknown as number, 4096), TypeError);
    assert.throws(() => SharedMemory.create(0), RangeError);
    assert.throws(() => SharedMemory.create(1n << 63n), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => SharedMemory.create('1M' as unknown as number), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => memory.view(MiB - 1, 2), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => memory.view(0, 1.5), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => memory.view(0, 1n as unknown as number), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => memory.view(1n << 64n, 1), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => memory.write(0, [1] as unknown as Uint8Array), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => memory.read(0, maxWindowBytes() + 1), /past Node's buffer limit/);
  });

  it('reports the kernel error Node-style for a closed fd', () => {
    const fd = native().memfdCreate('closed');
    fs.closeSync(fd);
    assertSystemError(() => native().fallocate(fd, 3, 0, 4096), 'EBADF', 'fallocate');
    assertSystemError(() => native().ftruncate(fd, 4096), 'EBADF', 'ftruncate');
  });

  it('unmaps explicitly once through the addon, and refuses a handle it did not make', () => {
    const fd = native().memfdCreate('unmap');
    native().ftruncate(fd, 4096);
    const { handle } = native().mmap(fd, 4096, 0, true);
    const window = native().mapWindow(handle, 0, 4096);
    native().munmap(handle);
    assert.equal(window.byteLength, 0);
    native().munmap(handle);
    assert.throws(() => native().mapWindow(handle, 0, 1), { code: 'ERR_GUESTMEM_CLOSED' });
    assert.throws(() => native().mapWindow({} as never, 0, 1), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => native().munmap(window as never), { code: 'ERR_INVALID_ARG_TYPE' });
    fs.closeSync(fd);
  });
});
