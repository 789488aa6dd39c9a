// Numbers in scripts, traces and options go to 2^64 - 1 (bigints past 2^53): a conversion
// at 2^64 or past it, or one that overflows, is rejected and counted and the run goes on;
// only text that is not a number is a malformed line. 1 TiB blocks run as dry runs.

import assert from 'node:assert/strict';
import { formatBytes, parseBytes, parseSize } from '../../lib/cli/sizes';
import { parseTrace, inferBlock } from '../../lib/cli/qemu-trace';
import { guestmem } from '../support/cli';

const TiB = 2 ** 40;
const LAST_TIB_PAGE = TiB / 4096 - 1;
const TOP_TIB = (1n << 64n) - (1n << 40n);

describe('byte values to 2^64 in the CLI', () => {
  it('parses sizes exactly: numbers to 2^53, bigints past it, any count of digits', () => {
    assert.equal(parseBytes('64M', 'x'), 64 * 2 ** 20);
    assert.equal(parseBytes('0x1F_000'.replace('_', ''), 'x'), 0x1f000);
    assert.equal(parseBytes('9007199254740993', 'x'), 9007199254740993n);
    assert.equal(parseBytes('0xfffffffffffff000', 'x'), 0xfffffffffffff000n);
    assert.equal(parseBytes('16E', 'x'), 1n << 64n);
    assert.equal(parseBytes('-4096', 'x'), -4096);
    assert.equal(parseBytes('0'.repeat(60) + '12', 'x'), 12);
    assert.equal(parseBytes('9'.repeat(10_000), 'x'), 1n << 64n, 'past 2^64 is 2^64 or more, whatever the digits');
    assert.throws(() => parseBytes('12abc', 'offset'), /offset: '12abc' is not a size/);
    assert.throws(() => parseSize('16E', '--gpa'), /--gpa: '16E' is 2\^64 or more/);
    assert.throws(() => parseSize('-1', '--gpa'), /is negative/);
    assert.equal(parseSize('0xffffffffffffffff', '--gpa'), (1n << 64n) - 1n);
    assert.equal(formatBytes(1n << 60n), '1 EiB');
    assert.equal(formatBytes(3 * TiB), '3 TiB');
  });

  it('reads trace addresses past 2^53 and 2^64 exactly, and infers the block from the valid ones', () => {
    const trace = parseTrace([
      'kvm_convert_memory start 0xffffff0000000000 size 0x1000 private_to_shared',
      'kvm_convert_memory start 0xfffffffffffff000 size 0x2000 private_to_shared',
      'kvm_convert_memory start 0x10000000000000000 size 0x1000 private_to_shared',
      'kvm_convert_memory start 0xfffffffffffff000 size 0x1000 private_to_shared',
    ].join('\n'));
    assert.deepEqual(trace.conversions.map((c) => c.gpa), [0xffffff0000000000n, 0xfffffffffffff000n, 1n << 64n, 0xfffffffffffff000n]);
    assert.deepEqual(inferBlock(trace), { gpa: TOP_TIB, size: TiB });
  });

  describe('simulate', () => {
    const script = `block 1T
listen a 0 1T
convert 0 4K shared
convert 18446744073709547520 4096 shared   # a valid u64 offset outside the block
convert 18446744073709551616 4096 shared   # 2^64
convert 0xfffffffffffff000 0x2000 shared    # overflows past 2^64
convert 99999999999999999999999999999999999999999999 4K private
convert -4096 4K shared
convert 0xfffffffffff000 4K shared          # valid, past 2^53, outside the block
convert 1099511623680 4096 shared           # the last page of the block
`;

    it('rejects and counts conversions at or past 2^64, and goes on', () => {
      const result = guestmem(['simulate', '-', '--json'], script);
      assert.equal(result.status, 0, result.stderr);
      const report = JSON.parse(result.stdout);
      assert.equal(report.pages, TiB / 4096);
      assert.equal(report.ops, 8);
      assert.equal(report.rejected, 6);
      assert.deepEqual(report.shared, [[0, 1], [LAST_TIB_PAGE, 1]]);
      assert.deepEqual(report.listeners.a, { mapped: [[0, 1], [LAST_TIB_PAGE, 1]], errors: 0 });
    });

    it('draws rejected conversions far outside the block without failing', () => {
      const result = guestmem(['simulate', '-', '--svg', '/dev/null'], script);
      assert.equal(result.status, 0, result.stderr);
      assert.match(result.stdout, /block: 268435456 pages of 4096 bytes \(1 TiB\)/);
      assert.match(result.stdout, /conversions: 8 \(6 rejected, 0 failed\)/);
    });

    it('still exits 2 with the line number for text that is not a number', () => {
      const result = guestmem(['simulate', '-'], 'block 1T\nconvert 12abc 4096 shared\n');
      assert.equal(result.status, 2);
      assert.match(result.stderr, /line 2: offset: '12abc' is not a size/);
    });
  });

  describe('replay --dry-run of a 1 TiB block at the top of the 64-bit space', () => {
    const trace = [
      '1@1.000001:kvm_convert_memory start 0xffffff0000000000 size 0x1000 private_to_shared',
      "1@1.000002:ram_block_attributes_state_change offset 0x0 size 0x1000 from 'discarded' to 'populated'",
      'kvm_convert_memory start 0xfffffffffffff000 size 0x2000 private_to_shared',
      'kvm_convert_memory start 0x10000000000000000 size 0x1000 private_to_shared',
      'kvm_convert_memory start 0xfffffffffffff000 size 0x1000 private_to_shared',
      "ram_block_attributes_state_change offset 0xfffffff000 size 0x1000 from 'discarded' to 'populated'",
      '',
    ].join('\n');

    it('replays addresses past 2^53 with the block given, rejecting those past 2^64', () => {
      const result = guestmem(['replay', '-', '--dry-run', '--gpa', '0xffffff0000000000', '--size', '1T', '--json'], trace);
      assert.equal(result.status, 0, result.stderr + result.stdout);
      const report = JSON.parse(result.stdout);
      assert.deepEqual(report.block, { gpa: TOP_TIB.toString(), size: TiB });
      assert.equal(report.ops, 4);
      assert.equal(report.rejected, 2);
      assert.deepEqual(report.shared, [[0, 1], [LAST_TIB_PAGE, 1]]);
      assert.equal(report.checked, 2);
      assert.deepEqual(report.mismatches, []);
    });

    it('infers the same block from the trace', () => {
      const result = guestmem(['replay', '-', '--dry-run', '--json'], trace);
      assert.equal(result.status, 0, result.stderr + result.stdout);
      const report = JSON.parse(result.stdout);
      assert.deepEqual(report.block, { gpa: TOP_TIB.toString(), size: TiB });
      assert.equal(report.inferred, true);
      assert.deepEqual(report.shared, [[0, 1], [LAST_TIB_PAGE, 1]]);
    });

    it('counts every conversion outside a low block as rejected, and goes on', () => {
      const result = guestmem(['replay', '-', '--dry-run', '--gpa', '0', '--size', '1T', '--json'], trace);
      assert.equal(result.status, 1, 'the state-change checks of rejected conversions are mismatches');
      const report = JSON.parse(result.stdout);
      assert.equal(report.ops, 4);
      assert.equal(report.rejected, 4);
      assert.deepEqual(report.shared, []);
    });
  });

  it('refuses options at 2^64 with exit 2', () => {
    const result = guestmem(['replay', '-', '--dry-run', '--gpa', '16E', '--size', '1T'], 'kvm_convert_memory start 0x0 size 0x1000 private_to_shared\n');
    assert.equal(result.status, 2);
    assert.match(result.stderr, /--gpa: '16E' is 2\^64 or more/);
  });
});
