import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Held, PageBitmap, RunList, type Run } from '../../lib/tracker/page-bitmap';

/** The oracle: one boolean per bit, every operation a plain loop. */
class NaiveBitmap {
  readonly bits: boolean[];
  constructor(n: number) {
    this.bits = new Array<boolean>(n).fill(false);
  }
  fill(start: number, count: number, value: boolean): void {
    for (let i = start; i < start + count; i++) this.bits[i] = value;
  }
  runs(start: number, count: number, value: boolean): Run[] {
    const result: Run[] = [];
    for (let i = start; i < start + count; i++) {
      if (this.bits[i] !== value) continue;
      const last = result[result.length - 1];
      if (last && last[0] + last[1] === i) last[1]++;
      else result.push([i, 1]);
    }
    return result;
  }
}

describe('PageBitmap', () => {
  it('starts clear and sets, clears and tests single bits and word edges', () => {
    const bitmap = new PageBitmap(100);
    assert.equal(bitmap.isAllClear(0, 100), true);
    bitmap.setRange(31, 2);
    assert.deepEqual([30, 31, 32, 33].map((i) => bitmap.test(i)), [false, true, true, false]);
    assert.equal(bitmap.findNextSet(0), 31);
    assert.equal(bitmap.findNextClear(31), 33);
    bitmap.clearRange(32, 1);
    assert.deepEqual(bitmap.runs(0, 100, true), [[31, 1]]);
  });

  it('reports the end of the window when nothing is found', () => {
    const bitmap = new PageBitmap(64);
    assert.equal(bitmap.findNextSet(10, 40), 40);
    bitmap.setRange(0, 64);
    assert.equal(bitmap.findNextClear(0), 64);
    assert.equal(bitmap.findNextSet(40, 40), 40);
  });

  it('fills whole words in the middle of a long range', () => {
    const bitmap = new PageBitmap(1000);
    bitmap.setRange(5, 990);
    assert.equal(bitmap.countSet(0, 1000), 990);
    assert.deepEqual(bitmap.runs(0, 1000, false), [[0, 5], [995, 5]]);
    assert.equal(bitmap.isAllSet(5, 990), true);
    assert.equal(bitmap.isAllSet(4, 2), false);
  });

  it('handles bit indices beyond 2^32 (a huge block)', () => {
    const bits = 2 ** 32 + 64;
    // 512 MiB of words: an index past 2^32 must not wrap (no 32-bit shifts on indices).
    const bitmap = new PageBitmap(bits);
    bitmap.setRange(2 ** 32 + 3, 5);
    assert.deepEqual(bitmap.runs(2 ** 32, 64, true), [[2 ** 32 + 3, 5]]);
    assert.equal(bitmap.test(3), false);
    // exchange there too (the same bitmap: each one is 512 MiB), with runs across word edges.
    const base = 2 ** 32 - 1000;
    const out = new RunList();
    bitmap.fillRange(base + 30, 5, true);
    bitmap.fillRange(base + 100, 60, true);
    assert.equal(bitmap.exchange(base + 20, 200, true, out), Held.Mixed);
    assert.deepEqual(out.toRuns(), [[base + 20, 10], [base + 35, 65], [base + 160, 60]]);
    assert.equal(bitmap.exchange(base + 20, 200, false, out), Held.Set);
    assert.deepEqual(out.toRuns(), [[base + 20, 200]]);
    assert.equal(bitmap.exchange(base + 64, 1, false, out), Held.Clear);
    assert.equal(out.length, 0);
    // A range longer than exchange's window on a bitmap this large (2^30 bits): the runs on
    // either side of the window's edge come out joined.
    const edge = 2 ** 30;
    bitmap.fillRange(edge - 10, 20, true);
    assert.equal(bitmap.exchange(5, edge + 95, false, out), Held.Mixed);
    assert.deepEqual(out.toRuns(), [[edge - 10, 20]]);
    assert.equal(bitmap.exchange(5, edge + 95, true, out), Held.Clear);
    assert.deepEqual(out.toRuns(), [[5, edge + 95]]);
    assert.equal(out.total, edge + 95);
    assert.equal(bitmap.exchange(5, edge + 95, true, out), Held.Set);
    assert.equal(out.length, 0);
  });

  it('agrees with a naive model on random operations', () => {
    const size = 200;
    const op = fc.record({
      start: fc.nat(size - 1),
      count: fc.nat(size),
      value: fc.boolean(),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), fc.nat(size - 1), fc.nat(size), (ops, qStart, qCount) => {
        const bitmap = new PageBitmap(size);
        const naive = new NaiveBitmap(size);
        for (const { start, count, value } of ops) {
          const n = Math.min(count, size - start);
          bitmap.fillRange(start, n, value);
          naive.fill(start, n, value);
        }
        const n = Math.min(qCount, size - qStart);
        assert.deepEqual(bitmap.runs(qStart, n, true), naive.runs(qStart, n, true));
        assert.deepEqual(bitmap.runs(qStart, n, false), naive.runs(qStart, n, false));
        assert.equal(bitmap.countSet(qStart, n), naive.runs(qStart, n, true).reduce((s, r) => s + r[1], 0));
        const firstSet = naive.bits.slice(qStart, qStart + n).indexOf(true);
        assert.equal(bitmap.findNextSet(qStart, qStart + n), firstSet < 0 ? qStart + n : qStart + firstSet);
        const firstClear = naive.bits.slice(qStart, qStart + n).indexOf(false);
        assert.equal(bitmap.findNextClear(qStart, qStart + n), firstClear < 0 ? qStart + n : qStart + firstClear);
      }),
      { numRuns: 500 },
    );
  });

  it('exchange flips a range in one pass: the runs that changed, what it held, the bits after (against the model)', () => {
    // Sizes past SHORT_SPAN words, so that both fills (loop and TypedArray.fill) are reached.
    const size = 32 * 80 + 7;
    const op = fc.record({ start: fc.nat(size - 1), count: fc.integer({ min: 1, max: size }), value: fc.boolean() });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 30 }), (ops) => {
        const bitmap = new PageBitmap(size);
        const naive = new NaiveBitmap(size);
        const out = new RunList();
        for (const { start, count, value } of ops) {
          const n = Math.min(count, size - start);
          const changing = naive.runs(start, n, !value);
          const held = changing.length === 0 ? (value ? Held.Set : Held.Clear) : changing.length === 1 && changing[0]![1] === n ? (value ? Held.Clear : Held.Set) : Held.Mixed;
          assert.equal(bitmap.exchange(start, n, value, out), held);
          assert.deepEqual(out.toRuns(), changing);
          assert.equal(out.total, changing.reduce((sum, [, c]) => sum + c, 0));
          naive.fill(start, n, value);
          if (ops.length % 3 === 0) {
            bitmap.fillRange(start, n, !value);
            naive.fill(start, n, !value);
          }
        }
        assert.deepEqual(bitmap.runs(0, size, true), naive.runs(0, size, true));
      }),
      { numRuns: 400 },
    );
  });

});
