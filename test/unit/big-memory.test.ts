// Shared memory past Node's buffer limit (4 GiB on Node 20): blocks of 8 GiB and 1 TiB
// made, read and written at their far ends through windows, and every size Node cannot
// wrap refused with a RangeError. It runs in a child process: the old failure was an abort
// (double free) that no catch could see, and it must fail this test, not kill mocha.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const CHILD = path.resolve(__dirname, '..', 'support', 'big-memory-child.js');

describe('shared memory past Node\'s buffer limit (child process)', () => {
  it('makes 8 GiB and 1 TiB blocks, reaches their far ends, and refuses what Node cannot wrap', function () {
    this.timeout(60_000);
    const child = spawnSync(process.execPath, ['--expose-gc', CHILD], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(child.signal, null, `the child was killed by ${child.signal}: ${child.stderr}`);
    assert.equal(child.status, 0, child.stderr);
    const report = JSON.parse(child.stdout.trim());
    const range = { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' };
    assert.deepEqual(report.readBack, [[0x10, 0x20], [0x11, 0x21], [0x12, 0x22]]);
    assert.equal(report.size, String(8 * 1024 ** 3));
    assert.equal(report.farByte, 0x7f);
    assert.equal(report.teraByte, 0x33);
    // Sparse: only the pages touched hold memory.
    assert.ok(report.allocated <= 3 * 4096, `8 GiB block holds ${report.allocated} bytes`);
    assert.ok(report.teraAllocated <= 4096, `1 TiB block holds ${report.teraAllocated} bytes`);
    assert.ok(report.maxWindow >= 2 ** 32 - 1);
    assert.deepEqual(report.wholeView, range);
    assert.deepEqual(report.wholeRead, range);
    assert.deepEqual(report.pastLimitRead, range);
    assert.deepEqual(report.nativeHugeWindow, [range, range]);
    assert.equal(report.nativeNotAHandle.name, 'TypeError', 'a non-handle is refused by the addon');
    // A window keeps its memory mapped after the owner is collected; collected too, it goes.
    assert.deepEqual(report.lifetime, { ownerCollected: true, afterOwnerGone: [0x45, 0x44], mappedWhileReferenced: true, unmappedOnceCollected: true });
    assert.equal(report.petabyte.code, 'ENOMEM');
    assert.deepEqual(report.pastOffT, range);
  });
});
