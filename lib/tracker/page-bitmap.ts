// One bit per granule, in 32-bit words. Every range operation works a word at a time
// (masks for the partial words at each end, fills or word scans in between), so its
// cost follows the range, never the size of the bitmap. Every public method checks its
// arguments first (integers inside the bitmap, with Node's error codes): a NaN or an
// Infinity would otherwise make a scan loop forever, a fraction or a string would touch the
// wrong bits, and a range past the end would be half applied.

import { checkInteger, describeValue, invalidArgType, outOfRange } from '../common/errors';

const ALL = 0xffffffff;

/** Bits [lo, hi) of a word, 0 <= lo < hi <= 32. */
function mask(lo: number, hi: number): number {
  return ((ALL >>> (32 - (hi - lo))) << lo) >>> 0;
}

/** Index of the lowest set bit of a non-zero word. */
function lowestSetBit(word: number): number {
  return 31 - Math.clz32(word & -word);
}

function popcount(word: number): number {
  word -= (word >>> 1) & 0x55555555;
  word = (word & 0x33333333) + ((word >>> 2) & 0x33333333);
  return (((word + (word >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

/** A maximal run of equal bits: [first, count]. */
export type Run = [first: number, count: number];

/**
 * A bitmap of granules (1 = shared), worked on a 32-bit word at a time: ranges set, cleared,
 * counted and listed as runs in O(range / 32).
 */
export class PageBitmap {
  /** The largest bitmap the engine can hold: 2^32 words of 32 bits (16 GiB). */
  static readonly MAX_BITS = 2 ** 37;

  readonly bits: number;
  private readonly words: Uint32Array;

  constructor(bits: number) {
    if (typeof bits !== 'number') throw invalidArgType(`bitmap size must be a number, got ${describeValue(bits)}`);
    if (!Number.isSafeInteger(bits) || bits < 0 || bits > PageBitmap.MAX_BITS) {
      throw outOfRange(`bitmap size must be an integer in [0, 2^37] bits, got ${bits}`);
    }
    this.bits = bits;
    try {
      this.words = new Uint32Array(Math.ceil(bits / 32));
    } catch (cause) {
      throw Object.assign(new RangeError(`cannot allocate a bitmap of ${bits} bits (${Math.ceil(bits / 8)} bytes): ${(cause as Error).message}`, { cause }), {
        code: 'ERR_MEMORY_ALLOCATION_FAILED',
      });
    }
    // The zeroed pages come from the kernel lazily; touch them all now, at creation, so that
    // a conversion never pays a first-touch page fault (a 1 TiB block's 32 MiB bitmap would
    // otherwise fault 8192 times, each costing more than a conversion).
    this.words.fill(0);
  }

  /** Whether one bit is set. */
  test(bit: number): boolean {
    checkInteger(bit, 'bit', 0, this.bits - 1);
    return (this.words[Math.floor(bit / 32)]! & (1 << (bit % 32))) !== 0;
  }

  /** Sets bits [start, start + count). */
  setRange(start: number, count: number): void {
    this.fillRange(start, count, true);
  }

  /** Clears bits [start, start + count). */
  clearRange(start: number, count: number): void {
    this.fillRange(start, count, false);
  }

  /** Sets (`value` true) or clears `count` bits from `start`, a word at a time. */
  fillRange(start: number, count: number, value: boolean): void {
    this.checkRange(start, count);
    if (typeof value !== 'boolean') throw invalidArgType(`value must be a boolean, got ${describeValue(value)}`);
    if (count === 0) return;
    const end = start + count;
    const firstWord = Math.floor(start / 32);
    const lastWord = Math.floor((end - 1) / 32);
    const words = this.words;
    if (firstWord === lastWord) {
      const m = mask(start % 32, ((end - 1) % 32) + 1);
      words[firstWord] = value ? words[firstWord]! | m : words[firstWord]! & ~m;
      return;
    }
    const head = mask(start % 32, 32);
    const tail = mask(0, ((end - 1) % 32) + 1);
    words[firstWord] = value ? words[firstWord]! | head : words[firstWord]! & ~head;
    words.fill(value ? ALL : 0, firstWord + 1, lastWord);
    words[lastWord] = value ? words[lastWord]! | tail : words[lastWord]! & ~tail;
  }

  /** First set bit in [from, end), or `end` if there is none. */
  findNextSet(from: number, end: number = this.bits): number {
    this.checkWindow(from, end);
    return this.findNext(from, end, 0);
  }

  /** First clear bit in [from, end), or `end` if there is none. */
  findNextClear(from: number, end: number = this.bits): number {
    this.checkWindow(from, end);
    return this.findNext(from, end, ALL);
  }

  /** `invert` is XORed into each word, so one scan finds set bits (0) or clear bits (ALL). */
  private findNext(from: number, end: number, invert: number): number {
    if (from >= end) return end;
    const words = this.words;
    let index = Math.floor(from / 32);
    const lastWord = Math.floor((end - 1) / 32);
    let word = ((words[index]! ^ invert) & mask(from % 32, 32)) >>> 0;
    while (word === 0) {
      if (++index > lastWord) return end;
      word = (words[index]! ^ invert) >>> 0;
    }
    const found = index * 32 + lowestSetBit(word);
    return found < end ? found : end;
  }

  /** Whether every bit of [start, start + count) is set. */
  isAllSet(start: number, count: number): boolean {
    this.checkRange(start, count);
    return this.findNext(start, start + count, ALL) >= start + count;
  }

  /** Whether every bit of [start, start + count) is clear. */
  isAllClear(start: number, count: number): boolean {
    this.checkRange(start, count);
    return this.findNext(start, start + count, 0) >= start + count;
  }

  /** Number of set bits in [start, start + count). */
  countSet(start: number, count: number): number {
    this.checkRange(start, count);
    if (count === 0) return 0;
    const end = start + count;
    const firstWord = Math.floor(start / 32);
    const lastWord = Math.floor((end - 1) / 32);
    const words = this.words;
    if (firstWord === lastWord) {
      return popcount((words[firstWord]! & mask(start % 32, ((end - 1) % 32) + 1)) >>> 0);
    }
    let total = popcount((words[firstWord]! & mask(start % 32, 32)) >>> 0);
    for (let i = firstWord + 1; i < lastWord; i++) total += popcount(words[i]!);
    return total + popcount((words[lastWord]! & mask(0, ((end - 1) % 32) + 1)) >>> 0);
  }

  /**
   * Maximal runs of bits equal to `value` inside [start, start + count), clipped to it,
   * in ascending order. Costs O(words in the window + runs).
   */
  runs(start: number, count: number, value: boolean): Run[] {
    this.checkRange(start, count);
    if (typeof value !== 'boolean') throw invalidArgType(`value must be a boolean, got ${describeValue(value)}`);
    const end = start + count;
    const result: Run[] = [];
    const inRun = value ? 0 : ALL;
    let cursor = start;
    while (cursor < end) {
      const runStart = this.findNext(cursor, end, inRun);
      if (runStart >= end) break;
      const runEnd = this.findNext(runStart, end, ~inRun >>> 0);
      result.push([runStart, runEnd - runStart]);
      cursor = runEnd;
    }
    return result;
  }

  /** [start, start + count) must lie inside the bitmap, in whole bits. */
  private checkRange(start: number, count: number): void {
    checkInteger(start, 'start', 0, this.bits);
    checkInteger(count, 'count', 0, this.bits - start);
  }

  /** [from, end) must lie inside the bitmap; an empty or inverted window finds nothing. */
  private checkWindow(from: number, end: number): void {
    checkInteger(end, 'end', 0, this.bits);
    checkInteger(from, 'from', 0, this.bits);
  }
}
