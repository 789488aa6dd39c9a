// Byte offsets and sizes at the API boundary, granule indices inside.
// A byte value is a number (a safe integer) or a bigint (for the part of the 64-bit
// space above 2^53); both are checked for type, alignment and 64-bit overflow here,
// once, so the tracker works on granule indices that are always safe numbers.

import { invalidArgType, outOfRange } from './errors';
import { checkInteger, describeValue } from './validators';

/** A byte count or address: a number where it is a safe integer, else a bigint (up to 2^64 − 1). */
export type Bytes = number | bigint;

const U64_LIMIT = 1n << 64n;

/**
 * True iff `value` is a power of two up to 2^63 (a granule the 64-bit space has room for).
 * Bit tests, not Math.log2: log2 rounds, so it calls 2^51 + 1 a power of two. Past 2^53
 * every double is an integer, and dividing by 2^30 is exact, so the test stays exact there.
 */
export function isPowerOfTwo(value: number): boolean {
  if (!Number.isInteger(value) || value <= 0 || value > 2 ** 63) return false;
  if (value <= 0x40000000) return (value & (value - 1)) === 0;
  // Above 2^30 a power of two is 2^30 times a smaller one, exactly.
  return value % 0x40000000 === 0 && isPowerOfTwo(value / 0x40000000);
}

/**
 * Checks a granularity: a power of two up to 2^63 bytes (the 64-bit space has room for one
 * granule).
 */
export function checkGranularity(value: unknown, name = 'granularity'): number {
  if (typeof value !== 'number') throw invalidArgType(`${name} must be a number, got ${describeValue(value)}`);
  if (!isPowerOfTwo(value)) throw outOfRange(`${name} must be a power of two up to 2^63, got ${Number.isSafeInteger(value) ? value : describeValue(value)}`);
  return value;
}

/** The GranuleRange constructor's rules; see there. */
function checkGranuleRange(first: number, count: number, granularity: number): void {
  checkInteger(first, 'first', 0, Number.MAX_SAFE_INTEGER);
  checkInteger(count, 'count', 0, Number.MAX_SAFE_INTEGER - first);
  checkGranularity(granularity);
  // Exact in floating point: a safe integer times a power of two only moves the exponent.
  if ((first + count) * granularity > 2 ** 64) {
    throw outOfRange(`granule range [${first}, +${count}) of ${granularity} bytes ends past 2^64`);
  }
}

/** Passed by granuleRangeOf, and only there: the values were checked by its caller. */
const TRUSTED: unique symbol = Symbol('checked by the caller');

/** A range of granules [first, first + count), with its byte view. */
export class GranuleRange {
  // `declare`: assigned in the constructor only, not first defined as undefined (ES2022
  // class fields would, costing a shape change per range on the conversion path).
  declare readonly first: number;
  declare readonly count: number;
  declare readonly granularity: number;

  /**
   * Checked, so that no range can exist that is negative, fractional or past the 64-bit
   * space: `first` and `count` are non-negative safe integers, `granularity` a power of two,
   * and the range ends at or below 2^64 bytes.
   */
  constructor(first: number, count: number, granularity: number);
  constructor(first: number, count: number, granularity: number, trusted?: typeof TRUSTED) {
    // Small, so that the conversion path's `new` is inlined: the checks live apart.
    if (trusted !== TRUSTED) checkGranuleRange(first, count, granularity);
    this.first = first;
    this.count = count;
    this.granularity = granularity;
  }

  get end(): number {
    return this.first + this.count;
  }

  /** Byte offset as a number; throws if it is not exactly representable (use offsetBigInt). */
  get offset(): number {
    return exactNumber(this.first * this.granularity, () => this.offsetBigInt);
  }

  get size(): number {
    return exactNumber(this.count * this.granularity, () => this.sizeBigInt);
  }

  get offsetBigInt(): bigint {
    return BigInt(this.first) * BigInt(this.granularity);
  }

  get sizeBigInt(): bigint {
    return BigInt(this.count) * BigInt(this.granularity);
  }

  /** Bytes as numbers where exact, else bigints: for logs and JSON-like reports. */
  toJSON(): { offset: Bytes; size: Bytes } {
    return { offset: bytesOf(this.first, this.granularity), size: bytesOf(this.count, this.granularity) };
  }

  /** The range in granules and bytes, for messages. */
  toString(): string {
    return `[0x${this.offsetBigInt.toString(16)}, +0x${this.sizeBigInt.toString(16)})`;
  }
}

/**
 * A GranuleRange from values already checked to satisfy the constructor's rules (a part of
 * a checked range, or a range toGranuleRange has just validated): the conversion path makes
 * one per run and should not check the same numbers again.
 */
export function granuleRangeOf(first: number, count: number, granularity: number): GranuleRange {
  return new (GranuleRange as new (first: number, count: number, granularity: number, trusted: typeof TRUSTED) => GranuleRange)(first, count, granularity, TRUSTED);
}

function exactNumber(value: number, big: () => bigint): number {
  if (Number.isSafeInteger(value)) return value;
  throw outOfRange(`byte value ${big()} is above 2^53; read it with the BigInt accessor`);
}

/** granules * granularity in bytes: a number where exact, else a bigint. */
export function bytesOf(granules: number, granularity: number): Bytes {
  checkInteger(granules, 'granules', 0, Number.MAX_SAFE_INTEGER);
  checkGranularity(granularity);
  const value = granules * granularity;
  if (Number.isSafeInteger(value)) return value;
  const exact = BigInt(granules) * BigInt(granularity);
  if (exact > U64_LIMIT) throw outOfRange(`${granules} granules of ${granularity} bytes is ${exact} bytes, past the 64-bit space`);
  return exact;
}

/** A byte count for a message: "256 TiB", "1.5 GiB", "12 bytes" (rounded, for people). */
export function approximateBytes(bytes: number | bigint): string {
  const value = Number(bytes);
  for (const [unit, scale] of [['EiB', 2 ** 60], ['PiB', 2 ** 50], ['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) {
    if (value >= scale) return `${+(value / scale).toFixed(1)} ${unit}`;
  }
  return `${value} bytes`;
}

/** Checks that `value` is a valid 64-bit byte quantity and returns it as a bigint. */
export function checkBytes(value: unknown, name: string): bigint {
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw outOfRange(`${name} must be a non-negative safe integer (or a bigint), got ${value}`);
    }
    return BigInt(value);
  }
  if (typeof value === 'bigint') {
    if (value < 0n || value >= U64_LIMIT) throw outOfRange(`${name} must be within [0, 2^64), got ${value}`);
    return value;
  }
  throw invalidArgType(`${name} must be a number or a bigint, got ${describeValue(value)}`);
}

/**
 * A byte value that must also be a safe number: a guest physical address (x86 stops at
 * 2^52) or a memslot's size (at most 2^31 - 1 pages). Number or bigint in, number out.
 */
export function checkSafeBytes(value: unknown, name: string): number {
  const bytes = checkBytes(value, name);
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw outOfRange(`${name} 0x${bytes.toString(16)} is above 2^53, past any guest's physical addresses`);
  return Number(bytes);
}

/** Checks offset and size as 64-bit values whose sum stays within 2^64. */
export function checkSpan(offset: unknown, size: unknown, what: string): [bigint, bigint] {
  const start = checkBytes(offset, `${what} offset`);
  const length = checkBytes(size, `${what} size`);
  if (start + length > U64_LIMIT) throw outOfRange(`${what} [0x${start.toString(16)}, +0x${length.toString(16)}) overflows past 2^64`);
  return [start, length];
}

/**
 * checkSpan for a range a syscall acts on, inside an object of `limit` bytes: also refuses
 * an empty range (fallocate, KVM_SET_MEMORY_ATTRIBUTES and VFIO's map and unmap all answer
 * a zero length with EINVAL) and one that leaves the object (named in the message), so both
 * fail in JS first.
 */
export function checkExtent(offset: unknown, size: unknown, limit: bigint, what: string, object = 'object'): [bigint, bigint] {
  const [start, length] = checkSpan(offset, size, what);
  if (length === 0n) throw outOfRange(`${what} size must be greater than zero`);
  if (start + length > limit) {
    throw outOfRange(`${what} [0x${start.toString(16)}, +0x${length.toString(16)}) is outside the ${limit}-byte ${object}`);
  }
  return [start, length];
}

/**
 * Validates [offset, offset + size) against a space of `limitGranules` granules and returns
 * it in granules. Rejects wrong types, zero size, misalignment, overflow past 2^64 and
 * ranges that leave the space, each with a message naming the rule.
 */
export function toGranuleRange(
  offset: unknown,
  size: unknown,
  granularity: number,
  limitGranules: number,
  what = 'range',
): GranuleRange {
  // Fast path: small numbers need no bigint arithmetic, and their sum cannot pass 2^64.
  // Alignment by division, not `%`: dividing by a power of two is exact, and a double's `%`
  // (offsets past 2^31 are doubles in V8) is a slow call into C.
  if (
    typeof offset === 'number' && typeof size === 'number' &&
    Number.isSafeInteger(offset) && Number.isSafeInteger(size) && offset >= 0 && size > 0 &&
    offset + size <= Number.MAX_SAFE_INTEGER
  ) {
    const first = offset / granularity;
    const count = size / granularity;
    // Exact, positive and below 2^53 bytes: the constructor's rules hold already.
    if (Number.isInteger(first) && Number.isInteger(count) && first + count <= limitGranules) return granuleRangeOf(first, count, granularity);
  }
  return toGranuleRangeSlow(offset, size, granularity, limitGranules, what);
}

function toGranuleRangeSlow(
  offset: unknown,
  size: unknown,
  granularity: number,
  limitGranules: number,
  what: string,
): GranuleRange {
  const [start, length] = checkSpan(offset, size, what);
  const g = BigInt(granularity);
  if (length === 0n) throw outOfRange(`${what} size must be greater than zero`);
  if (start % g !== 0n) throw outOfRange(`${what} offset 0x${start.toString(16)} is not aligned to the granularity ${granularity}`);
  if (length % g !== 0n) throw outOfRange(`${what} size 0x${length.toString(16)} is not a multiple of the granularity ${granularity}`);
  const limit = BigInt(limitGranules) * g;
  if (start + length > limit) {
    throw outOfRange(
      `${what} [0x${start.toString(16)}, +0x${length.toString(16)}) is outside the block of 0x${limit.toString(16)} bytes`,
    );
  }
  return new GranuleRange(Number(start / g), Number(length / g), granularity);
}
