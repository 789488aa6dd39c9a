// Byte offsets and sizes at the API boundary, granule indices inside.
// A byte value is a number (a safe integer) or a bigint (for the part of the 64-bit
// space above 2^53); both are checked for type, alignment and 64-bit overflow here,
// once, so the tracker works on granule indices that are always safe numbers.

import { invalidArgType, outOfRange } from './errors';

export type Bytes = number | bigint;

const U64_LIMIT = 1n << 64n;

/** A range of granules [first, first + count), with its byte view. */
export class GranuleRange {
  constructor(
    readonly first: number,
    readonly count: number,
    readonly granularity: number,
  ) {}

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

  toString(): string {
    return `[0x${this.offsetBigInt.toString(16)}, +0x${this.sizeBigInt.toString(16)})`;
  }
}

function exactNumber(value: number, big: () => bigint): number {
  if (Number.isSafeInteger(value)) return value;
  throw outOfRange(`byte value ${big()} is above 2^53; read it with the BigInt accessor`);
}

/** granules * granularity in bytes: a number where exact, else a bigint. */
export function bytesOf(granules: number, granularity: number): Bytes {
  const value = granules * granularity;
  return Number.isSafeInteger(value) ? value : BigInt(granules) * BigInt(granularity);
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
  throw invalidArgType(`${name} must be a number or a bigint, got ${typeof value}`);
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
  if (
    typeof offset === 'number' && typeof size === 'number' &&
    Number.isSafeInteger(offset) && Number.isSafeInteger(size) && offset >= 0 && size > 0 &&
    offset + size <= Number.MAX_SAFE_INTEGER &&
    offset % granularity === 0 && size % granularity === 0
  ) {
    const first = offset / granularity;
    const count = size / granularity;
    if (first + count <= limitGranules) return new GranuleRange(first, count, granularity);
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
