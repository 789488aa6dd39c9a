// One bit per granule, in 32-bit words. Every range operation works a word at a time
// (masks for the partial words at each end, fills or word scans in between), so its
// cost follows the range, never the size of the bitmap.

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

export class PageBitmap {
  readonly bits: number;
  private readonly words: Uint32Array;

  constructor(bits: number) {
    if (!Number.isSafeInteger(bits) || bits < 0) {
      throw new RangeError(`bitmap size must be a non-negative safe integer, got ${bits}`);
    }
    this.bits = bits;
    this.words = new Uint32Array(Math.ceil(bits / 32));
    // The zeroed pages come from the kernel lazily; touch them all now, at creation, so that
    // a conversion never pays a first-touch page fault (a 1 TiB block's 32 MiB bitmap would
    // otherwise fault 8192 times, each costing more than a conversion).
    this.words.fill(0);
  }

  test(bit: number): boolean {
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

  fillRange(start: number, count: number, value: boolean): void {
    if (count <= 0) return;
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
    return this.findNext(from, end, 0);
  }

  /** First clear bit in [from, end), or `end` if there is none. */
  findNextClear(from: number, end: number = this.bits): number {
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

  isAllSet(start: number, count: number): boolean {
    return this.findNextClear(start, start + count) >= start + count;
  }

  isAllClear(start: number, count: number): boolean {
    return this.findNextSet(start, start + count) >= start + count;
  }

  /** Number of set bits in [start, start + count). */
  countSet(start: number, count: number): number {
    if (count <= 0) return 0;
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
    const end = start + count;
    const result: Run[] = [];
    let cursor = start;
    while (cursor < end) {
      const runStart = value ? this.findNextSet(cursor, end) : this.findNextClear(cursor, end);
      if (runStart >= end) break;
      const runEnd = value ? this.findNextClear(runStart, end) : this.findNextSet(runStart, end);
      result.push([runStart, runEnd - runStart]);
      cursor = runEnd;
    }
    return result;
  }
}
