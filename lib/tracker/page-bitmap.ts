// One bit per granule, in 32-bit words. Every range operation works a word at a time
// (masks for the partial words at each end, fills or word scans in between), so its
// cost follows the range, never the size of the bitmap. Every public method checks its
// arguments first (integers inside the bitmap, with Node's error codes): a NaN or an
// Infinity would otherwise make a scan loop forever, a fraction or a string would touch the
// wrong bits, and a range past the end would be half applied. The tracker's hot methods
// (fill, convert, scan, collectRuns) check in one inlined test of plain comparisons and
// name the bad argument only when it fails, so a conversion pays a few instructions.

import { allocationFailed, invalidArgType, outOfRange } from '../common/errors';
import { checkInteger, describeValue } from '../common/validators';

const ALL = 0xffffffff;
/** Word spans up to this long are filled by a loop, longer ones by TypedArray.fill. */
const SHORT_SPAN = 64;

/** Bits [lo, hi) of a word, 0 <= lo < hi <= 32. */
function mask(lo: number, hi: number): number {
  return ((ALL >>> (32 - (hi - lo))) << lo) >>> 0;
}

/**
 * Bit index within its word. Not `bit % 32`: bit indices go past 2^31, so V8 keeps them as
 * doubles, and a double's `%` is a call into C (fmod) costing more than the rest of a
 * one-page conversion; a floor, a multiply and a subtract are exact and cheap.
 */
function bitOf(bit: number, word: number): number {
  return bit - word * 32;
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

/** What a range held before {@link PageBitmap.exchange}: every bit clear, every bit set, or both. */
export const enum Held {
  Clear = 0,
  Set = 1,
  Mixed = 2,
}

/** A maximal run of equal bits: [first, count]. */
export type Run = [first: number, count: number];

/**
 * Runs as flat (first, count) pairs in one growing buffer that is reused from one change to
 * the next, so that a change of many runs allocates nothing once the buffer is big enough.
 */
export class RunList {
  // A plain array, not a Float64Array: granule indices below 2^30 stay small integers
  // (V8's Smis), so the bitmap work that reads them back stays in integer arithmetic.
  private readonly data: number[] = [];
  /** Number of runs. */
  length = 0;
  /** The runs' counts added up. */
  total = 0;

  clear(): void {
    this.length = 0;
    this.total = 0;
  }

  push(first: number, count: number): void {
    const at = 2 * this.length;
    if (at < this.data.length) {
      this.data[at] = first;
      this.data[at + 1] = count;
    } else {
      this.data.push(first, count);
    }
    this.length++;
    this.total += count;
  }

  first(i: number): number {
    return this.data[2 * i]!;
  }

  count(i: number): number {
    return this.data[2 * i + 1]!;
  }

  /** push, joined to the last run where it ends at `first` (runs found in windows, at a window's edge). */
  pushJoined(first: number, count: number): void {
    const last = 2 * this.length - 1;
    if (last > 0 && this.data[last - 1]! + this.data[last]! === first) {
      this.data[last] = this.data[last]! + count;
      this.total += count;
    } else {
      this.push(first, count);
    }
  }

  /** A copy as Run tuples (for a report or an undo log that must outlive the next change). */
  toRuns(): Run[] {
    const runs: Run[] = [];
    for (let i = 0; i < this.length; i++) runs.push([this.first(i), this.count(i)]);
    return runs;
  }
}

/** Bitmaps below this many bits exchange with int32 indices throughout (exchangeWords). */
const INT32_BITS = 2 ** 31;
/** The window exchangeWords works in on a larger bitmap: its bit indices stay int32. */
const WINDOW_BITS = 2 ** 30;

/** Whole words [from, to) set to `filler`: TypedArray.fill is a call into C++ that costs more than a short loop. */
function fillInts(words: Int32Array, from: number, to: number, filler: number): void {
  if (to - from > SHORT_SPAN) words.fill(filler, from, to);
  else for (let i = from; i < to; i++) words[i] = filler;
}

/**
 * The conversion's loop (PageBitmap.exchange) over int32 words, for bit indices below 2^31:
 * shifts and masks only, no double arithmetic (a `/` or `%` on a double, a Math.floor, is
 * what made the loop cost 2.5× its C counterpart), no allocation, and words compared with
 * -1 and 0 (an Int32Array word is never 0xffffffff, a double). Runs that change are listed
 * in `out` at their edges inside each word (Math.clz32 of the lowest set bit); a word
 * wholly in the other state flips whole, and so does every such word after it.
 */
function exchangeWords(words: Int32Array, start: number, count: number, value: boolean, out: RunList): Held {
  out.clear();
  if (count === 0) return value ? Held.Set : Held.Clear;
  if (count === 1) {
    // One granule (the commonest conversion): one bit.
    const index = start >>> 5;
    const bit = 1 << (start & 31);
    const word = words[index]!;
    const was = (word & bit) !== 0;
    if (was !== value) {
      words[index] = word ^ bit;
      out.push(start, 1);
    }
    return was ? Held.Set : Held.Clear;
  }
  const end = (start + count) | 0;
  const firstWord = start >>> 5;
  const lastWord = (end - 1) >>> 5;
  // A word XORed with `target` has its bits that are not yet at `value` set: those flip.
  const target = value ? -1 : 0;
  const opposite = ~target;
  let kept = 0;
  let open = -1;
  for (let index = firstWord; index <= lastWord; index++) {
    let inside = -1;
    if (index === firstWord) inside = -1 << (start & 31);
    if (index === lastWord) inside &= -1 >>> (31 - ((end - 1) & 31));
    const word = words[index]!;
    if (inside === -1 && word === opposite) {
      let stop = index + 1;
      while (stop < lastWord && words[stop] === opposite) stop++;
      if (open < 0) open = index << 5;
      fillInts(words, index, stop, target);
      index = stop - 1;
      continue;
    }
    const flip = (word ^ target) & inside;
    kept |= ~(word ^ target) & inside;
    if (flip === 0) {
      if (open >= 0) {
        out.push(open, (index << 5) - open);
        open = -1;
      }
      continue;
    }
    words[index] = word ^ flip;
    if (flip === -1 && open >= 0) continue;
    // The runs inside this word: edges between flipped and kept bits.
    const base = index << 5;
    let at = 0;
    while (at < 32) {
      if (open < 0) {
        const ones = flip & (-1 << at);
        if (ones === 0) break;
        at = 31 - Math.clz32(ones & -ones);
        open = base + at;
      }
      const zeros = ~flip & (-1 << at);
      if (zeros === 0) break;
      at = 31 - Math.clz32(zeros & -zeros);
      out.push(open, base + at - open);
      open = -1;
    }
  }
  if (open >= 0) out.push(open, end - open);
  if (out.length === 0) return value ? Held.Set : Held.Clear;
  return kept === 0 ? (value ? Held.Clear : Held.Set) : Held.Mixed;
}

/**
 * A bitmap of granules (1 = shared), worked on a 32-bit word at a time: ranges set, cleared,
 * counted and listed as runs in O(range / 32).
 */
export class PageBitmap {
  /** The largest bitmap the engine can hold: 2^32 words of 32 bits (16 GiB). */
  static readonly MAX_BITS = 2 ** 37;

  readonly bits: number;
  private readonly words: Uint32Array;
  /** The same words as int32, for exchangeWords. */
  private readonly ints: Int32Array;
  /** exchangeWindows's runs of one window, reused. */
  private windowRuns: RunList | null = null;

  /**
   * A bitmap of `bits` bits, all clear, in memory of its own; or, with `memory`, over the
   * words already in that memory (a SharedArrayBuffer that other threads see too, from
   * `byteOffset`, a multiple of 4): the bits are whatever that memory holds. Two threads
   * that build one over the same memory see one bitmap; their writers must take turns (the
   * block's lock), as a plain read or write of a word is not atomic with another.
   */
  constructor(bits: number, memory?: { buffer: SharedArrayBuffer | ArrayBuffer; byteOffset?: number }) {
    if (typeof bits !== 'number') throw invalidArgType(`bitmap size must be a number, got ${describeValue(bits)}`);
    if (!Number.isSafeInteger(bits) || bits < 0 || bits > PageBitmap.MAX_BITS) {
      throw outOfRange(`bitmap size must be an integer in [0, 2^37] bits, got ${bits}`);
    }
    this.bits = bits;
    if (memory !== undefined) {
      this.words = PageBitmap.wordsOver(bits, memory.buffer, memory.byteOffset ?? 0);
      this.ints = new Int32Array(this.words.buffer, this.words.byteOffset, this.words.length);
      return;
    }
    try {
      this.words = new Uint32Array(Math.ceil(bits / 32));
    } catch (cause) {
      throw allocationFailed(`cannot allocate a bitmap of ${bits} bits (${Math.ceil(bits / 8)} bytes): ${(cause as Error).message}`, cause);
    }
    // The zeroed pages come from the kernel lazily; touch them all now, at creation, so that
    // a conversion never pays a first-touch page fault (a 1 TiB block's 32 MiB bitmap would
    // otherwise fault 8192 times, each costing more than a conversion).
    this.words.fill(0);
    this.ints = new Int32Array(this.words.buffer, 0, this.words.length);
  }

  /** Bytes the words of a bitmap of `bits` bits take: what a buffer for one must hold. */
  static bytesFor(bits: number): number {
    return Math.ceil(bits / 32) * 4;
  }

  /**
   * A SharedArrayBuffer of `bytes` bytes (zeroed, every page touched now for the reason the
   * constructor gives), or ERR_MEMORY_ALLOCATION_FAILED saying how much was asked for.
   */
  static sharedMemory(bytes: number, what = 'a shared bitmap'): SharedArrayBuffer {
    let buffer: SharedArrayBuffer;
    try {
      buffer = new SharedArrayBuffer(bytes);
    } catch (cause) {
      throw allocationFailed(`cannot allocate ${what} of ${bytes} bytes: ${(cause as Error).message}`, cause);
    }
    new Uint8Array(buffer).fill(0);
    return buffer;
  }

  private static wordsOver(bits: number, buffer: SharedArrayBuffer | ArrayBuffer, byteOffset: number): Uint32Array {
    if (!(buffer instanceof SharedArrayBuffer) && !(buffer instanceof ArrayBuffer)) {
      throw invalidArgType(`bitmap memory must be a SharedArrayBuffer or an ArrayBuffer, got ${describeValue(buffer)}`);
    }
    checkInteger(byteOffset, 'byteOffset', 0, buffer.byteLength);
    if (byteOffset % 4 !== 0) throw outOfRange(`byteOffset must be a multiple of 4, got ${byteOffset}`);
    const needed = PageBitmap.bytesFor(bits);
    if (buffer.byteLength - byteOffset < needed) {
      throw outOfRange(`a bitmap of ${bits} bits needs ${needed} bytes from offset ${byteOffset}, but the buffer has ${buffer.byteLength - byteOffset}`);
    }
    return new Uint32Array(buffer, byteOffset, needed / 4);
  }

  /** Whether one bit is set. */
  test(bit: number): boolean {
    checkInteger(bit, 'bit', 0, this.bits - 1);
    const word = Math.floor(bit / 32);
    return (this.words[word]! & (1 << bitOf(bit, word))) !== 0;
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
    this.fill(start, count, value);
  }

  /** fillRange with its checks made cheap for the tracker's conversion path (see the top of the file). */
  fill(start: number, count: number, value: boolean): void {
    if (!this.isRange(start, count) || typeof value !== 'boolean') this.refuse(start, count, value);
    if (count === 0) return;
    const end = start + count;
    const firstWord = Math.floor(start / 32);
    const lastWord = Math.floor((end - 1) / 32);
    const words = this.words;
    if (firstWord === lastWord) {
      const m = mask(bitOf(start, firstWord), bitOf(end - 1, lastWord) + 1);
      words[firstWord] = value ? words[firstWord]! | m : words[firstWord]! & ~m;
      return;
    }
    const head = mask(bitOf(start, firstWord), 32);
    const tail = mask(0, bitOf(end - 1, lastWord) + 1);
    words[firstWord] = value ? words[firstWord]! | head : words[firstWord]! & ~head;
    this.fillWords(firstWord + 1, lastWord, value ? ALL : 0);
    words[lastWord] = value ? words[lastWord]! | tail : words[lastWord]! & ~tail;
  }

  /** Whole words [from, to) set to `filler`: TypedArray.fill is a call into C++ that costs more than a short loop. */
  private fillWords(from: number, to: number, filler: number): void {
    if (to - from > SHORT_SPAN) this.words.fill(filler, from, to);
    else for (let i = from; i < to; i++) this.words[i] = filler;
  }

  /**
   * A state change's whole bitmap step in one pass over the range's words (checked as fill
   * is), named as Atomics.exchange (it writes and returns what was there; a conversion is
   * the whole sequence of which this is one step): sets (`value` true) or clears bits [start, start + count), lists in `out`
   * (cleared first) the maximal runs of bits that changed, and says what the range held
   * before. One loop, no scans before it: the cost follows the range, a word at a time.
   * A bitmap of fewer than 2^31 bits (8 TiB of 4 KiB granules) runs exchangeWords straight;
   * a larger one runs it over windows of its words (exchangeWindows).
   */
  exchange(start: number, count: number, value: boolean, out: RunList): Held {
    if (!this.isRange(start, count) || typeof value !== 'boolean') this.refuse(start, count, value);
    if (!(out instanceof RunList)) throw invalidArgType(`out must be a RunList, got ${describeValue(out)}`);
    if (this.bits < INT32_BITS) return exchangeWords(this.ints, start, count, value, out);
    return this.exchangeWindows(start, count, value, out);
  }

  /**
   * exchange for a bitmap of 2^31 bits or more: exchangeWords over windows of at most 2^30
   * bits, each a view of the words from the window's first (so that its indices stay
   * int32), its runs moved back to the bitmap's indices and joined across window edges.
   * It allocates a view per window: blocks of 8 TiB and more pay that, the others nothing.
   */
  private exchangeWindows(start: number, count: number, value: boolean, out: RunList): Held {
    out.clear();
    const local = (this.windowRuns ??= new RunList());
    let changedSome = false;
    let keptSome = false;
    const end = start + count;
    for (let at = start; at < end; ) {
      const word = Math.floor(at / 32);
      const bit = at - word * 32;
      const bits = Math.min(end - at, WINDOW_BITS - bit);
      const held = exchangeWords(this.ints.subarray(word, word + Math.ceil((bit + bits) / 32)), bit, bits, value, local);
      if (local.length > 0) changedSome = true;
      if (local.length === 0 || held === Held.Mixed) keptSome = true;
      for (let i = 0; i < local.length; i++) out.pushJoined(word * 32 + local.first(i), local.count(i));
      at += bits;
    }
    if (!changedSome) return value ? Held.Set : Held.Clear;
    return keptSome ? Held.Mixed : value ? Held.Clear : Held.Set;
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

  /** First bit equal to `value` in [from, end), or `end` (checked as fill is; an empty or inverted window finds nothing). */
  scan(from: number, end: number, value: boolean): number {
    if (!this.isBound(from) || !this.isBound(end) || typeof value !== 'boolean') this.refuseWindow(from, end, value);
    return this.findNext(from, end, value ? 0 : ALL);
  }

  /** Appends the maximal runs of bits equal to `value` in [start, end) to `out` (checked as scan is). */
  collectRuns(start: number, end: number, value: boolean, out: RunList): void {
    if (!this.isBound(start) || !this.isBound(end) || typeof value !== 'boolean') this.refuseWindow(start, end, value);
    if (!(out instanceof RunList)) throw invalidArgType(`out must be a RunList, got ${describeValue(out)}`);
    const inRun = value ? 0 : ALL;
    let cursor = start;
    while (cursor < end) {
      const runStart = this.findNext(cursor, end, inRun);
      if (runStart >= end) break;
      const runEnd = this.findNext(runStart, end, ~inRun >>> 0);
      out.push(runStart, runEnd - runStart);
      cursor = runEnd;
    }
  }

  /** `invert` is XORed into each word, so one scan finds set bits (0) or clear bits (ALL). */
  private findNext(from: number, end: number, invert: number): number {
    if (from >= end) return end;
    const words = this.words;
    let index = Math.floor(from / 32);
    const lastWord = Math.floor((end - 1) / 32);
    let word = ((words[index]! ^ invert) & mask(bitOf(from, index), 32)) >>> 0;
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
      return popcount((words[firstWord]! & mask(bitOf(start, firstWord), bitOf(end - 1, lastWord) + 1)) >>> 0);
    }
    let total = popcount((words[firstWord]! & mask(bitOf(start, firstWord), 32)) >>> 0);
    for (let i = firstWord + 1; i < lastWord; i++) total += popcount(words[i]!);
    return total + popcount((words[lastWord]! & mask(0, bitOf(end - 1, lastWord) + 1)) >>> 0);
  }

  /**
   * Maximal runs of bits equal to `value` inside [start, start + count), clipped to it,
   * in ascending order. Costs O(words in the window + runs).
   */
  runs(start: number, count: number, value: boolean): Run[] {
    this.checkRange(start, count);
    if (typeof value !== 'boolean') throw invalidArgType(`value must be a boolean, got ${describeValue(value)}`);
    const runs = new RunList();
    this.collectRuns(start, start + count, value, runs);
    return runs.toRuns();
  }

  /** An integer in [0, bits]: comparisons only (a NaN fails them all), for the hot paths. */
  private isBound(value: number): boolean {
    return typeof value === 'number' && value >= 0 && value <= this.bits && Math.floor(value) === value;
  }

  private isRange(start: number, count: number): boolean {
    return this.isBound(start) && this.isBound(count) && start + count <= this.bits;
  }

  /** Throws the error that names what is wrong with a range that failed isRange. */
  private refuse(start: number, count: number, value: unknown): never {
    this.checkRange(start, count);
    throw invalidArgType(`value must be a boolean, got ${describeValue(value)}`);
  }

  private refuseWindow(from: number, end: number, value: unknown): never {
    this.checkWindow(from, end);
    throw invalidArgType(`value must be a boolean, got ${describeValue(value)}`);
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
