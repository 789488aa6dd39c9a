// Byte quantities on the command line, in scripts and in traces: decimal, 0x hex, or with a
// binary suffix (K, M, G, T, P, E; "KiB" and "MB" mean the same), e.g. 64M, 0x100000, 2G.
// A value is exact: a number up to 2^53, a bigint past it. Text that is not a number is a
// usage error; a number too large for its use is for the user of the value to refuse (a
// conversion of 2^64 or more is rejected and counted, not a malformed script line).

import type { Bytes } from '../common/byte-range';
import { UsageError } from './usage-error';

const UNITS: Record<string, bigint> = { '': 1n, k: 1n << 10n, m: 1n << 20n, g: 1n << 30n, t: 1n << 40n, p: 1n << 50n, e: 1n << 60n };
const U64_LIMIT = 1n << 64n;
/** Digits past this many say "2^64 or more" whatever they are; BigInt need not parse them. */
const MAX_DIGITS = 40;

/** A bigint as a number where that is exact, else as itself. */
export function exactBytes(value: bigint): Bytes {
  return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value;
}

export function addBytes(a: Bytes, b: Bytes): Bytes {
  return exactBytes(BigInt(a) + BigInt(b));
}

/** a - b, negative if b > a (a caller's check rejects it, as it would any negative offset). */
export function subtractBytes(a: Bytes, b: Bytes): Bytes {
  return exactBytes(BigInt(a) - BigInt(b));
}

/** Digits in base 16 or 10 as a bigint; anything past MAX_DIGITS significant digits is 2^64. */
export function parseDigits(digits: string, hex: boolean): bigint {
  const significant = digits.replace(/^0+(?=.)/, '');
  if (significant.length > MAX_DIGITS) return U64_LIMIT;
  return BigInt(hex ? `0x${significant}` : significant);
}

/**
 * Any size or offset, exact, possibly negative or 2^64 or more (whoever uses it rejects
 * those as it rejects any invalid range); a UsageError only for text that is not a number.
 */
export function parseBytes(text: string, what: string): Bytes {
  // 'iB' only after a unit letter: 4096ib is not a size.
  const match = /^(-?)(?:0x([0-9a-f]+)|(\d+))\s*(?:([kmgtpe])(?:i?b)?|b)?$/i.exec(text.trim());
  if (!match) throw new UsageError(`${what}: '${text}' is not a size (examples: 4096, 0x1000, 64M, 2G)`);
  const magnitude = parseDigits(match[2] ?? match[3]!, match[2] !== undefined) * UNITS[(match[4] ?? '').toLowerCase()]!;
  return exactBytes(match[1] ? -magnitude : magnitude);
}

/** A size or offset option: as parseBytes, and within [0, 2^64) (else a UsageError). */
export function parseSize(text: string, what: string): Bytes {
  const value = parseBytes(text, what);
  if (BigInt(value) < 0n) throw new UsageError(`${what}: '${text}' is negative`);
  if (BigInt(value) >= U64_LIMIT) throw new UsageError(`${what}: '${text}' is 2^64 or more; sizes and offsets are 64-bit`);
  return value;
}

/** "OFF+LEN" (both sizes), as in --range 1M+64K. */
export function parseRange(text: string, what: string): { offset: Bytes; size: Bytes } {
  const parts = text.split('+');
  if (parts.length !== 2) throw new UsageError(`${what}: '${text}' is not OFFSET+LENGTH (example: 1M+64K)`);
  return { offset: parseSize(parts[0]!, `${what} offset`), size: parseSize(parts[1]!, `${what} length`) };
}

export function formatBytes(bytes: Bytes): string {
  const value = BigInt(bytes);
  for (const [unit, shift] of [['EiB', 60n], ['PiB', 50n], ['TiB', 40n], ['GiB', 30n], ['MiB', 20n], ['KiB', 10n]] as const) {
    if (value >= 1n << shift && value % (1n << shift) === 0n) return `${value >> shift} ${unit}`;
  }
  return `${value} B`;
}
