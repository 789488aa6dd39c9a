// What a hostile caller passes, and what it must get back: arbitrary values (NaN, ±Infinity,
// negatives, fractions, strings, bigints past 2^64, null, objects with __proto__, symbols,
// functions) and the rule every public entry point keeps with them: a correct result, or
// an error with a code a program can switch on, within a time bound.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import fc from 'fast-check';

/** Codes an argument check may throw. */
export const ARGUMENT_CODES = ['ERR_INVALID_ARG_TYPE', 'ERR_INVALID_ARG_VALUE', 'ERR_OUT_OF_RANGE'];

/** No single call may take longer than this (generous: the machine is shared). */
export const CALL_BOUND_MS = 2000;

const SPECIAL_VALUES: unknown[] = [
  NaN, Infinity, -Infinity, -0, -1, 0.5, 1.5, 4095.999, 2 ** 53, 2 ** 53 + 2, 2 ** 64, -(2 ** 53), Number.MAX_VALUE, Number.EPSILON,
  null, undefined, '', '3', '0x1000', 'NaN', ' 4096', true, false,
  0n, 1n, -1n, 4096n, 2n ** 64n, 2n ** 64n + 4096n, 1n << 100n,
  [], [4096], {}, Object.create(null), JSON.parse('{"__proto__":{"offset":0,"size":4096}}'), { valueOf: () => 4096 }, { toString: () => '4096' },
  Symbol('hostile'), () => 4096, new Date(0),
];

/** Any value, biased to the ones that have broken code before. */
export const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...SPECIAL_VALUES) },
  { weight: 1, arbitrary: fc.double() },
  { weight: 1, arbitrary: fc.string({ maxLength: 6 }) },
  { weight: 1, arbitrary: fc.bigInt({ min: -(1n << 70n), max: 1n << 70n }) },
  { weight: 1, arbitrary: fc.integer() },
);

/** Either a hostile value or one from `valid`, half and half. */
export function sometimes<T>(valid: fc.Arbitrary<T>): fc.Arbitrary<unknown> {
  return fc.oneof(valid, hostileValue);
}

/**
 * Where progress goes: the file GUESTMEM_TEST_PROGRESS_FILE names (a pipe to a busy parent
 * would answer EAGAIN), else stderr.
 */
const progressFd = process.env.GUESTMEM_TEST_PROGRESS_FILE ? fs.openSync(process.env.GUESTMEM_TEST_PROGRESS_FILE, 'w') : 2;

/** Writes what is about to run, so that a hang or a crash in the child names its case. */
export function progress(label: string, args: unknown[]): void {
  fs.writeSync(progressFd, `case ${label}(${args.map((a) => fc.stringify(a)).join(', ').replace(/\s*\n\s*/g, ' ')})\n`);
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; error: unknown };

/** Calls `fn` (awaiting it if it returns a promise), bounded in time, and says how it ended. */
export async function bounded<T>(label: string, args: unknown[], fn: () => T | Promise<T>): Promise<Outcome<Awaited<T>>> {
  progress(label, args);
  const started = performance.now();
  let outcome: Outcome<Awaited<T>>;
  try {
    outcome = { ok: true, value: await fn() };
  } catch (error) {
    outcome = { ok: false, error };
  }
  const ms = performance.now() - started;
  assert.ok(ms <= CALL_BOUND_MS, `${label} took ${ms.toFixed(0)} ms`);
  return outcome;
}

/** The error is a TypeError or RangeError with one of Node's argument codes. */
export function assertArgumentError(error: unknown, context: string): void {
  const e = error as Error & { code?: unknown };
  assert.ok(e instanceof TypeError || e instanceof RangeError, `${context}: ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)} is not a TypeError or RangeError`);
  assert.ok(ARGUMENT_CODES.includes(e.code as string), `${context}: ${e.constructor.name} without an argument code (${String(e.code)}): ${e.message}`);
}

/** The error has one of `codes` (argument codes, or GuestmemError codes). */
export function assertCoded(error: unknown, codes: string[], context: string): void {
  const e = error as Error & { code?: unknown };
  assert.ok(e instanceof Error, `${context}: threw a non-error ${String(error)}`);
  assert.ok(codes.includes(e.code as string), `${context}: code ${String(e.code)} is not one of ${codes.join(', ')}: ${e.message}`);
}

/** A non-negative integer not above `max`, as the API means it (a number, not a string or a bigint). */
export function isIndex(value: unknown, max: number): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= max;
}

/** A byte value as the API takes it: a non-negative safe integer, or a bigint in [0, 2^64). */
export function isBytes(value: unknown): value is number | bigint {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0;
  return typeof value === 'bigint' && value >= 0n && value < 1n << 64n;
}

/** The oracle for powers of two up to 2^63 (a granule the 64-bit space has room for): exact, in bigints. */
export function isPowerOfTwoExact(value: unknown): boolean {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0 || value > 2 ** 63) return false;
  const big = BigInt(value);
  return (big & (big - 1n)) === 0n;
}
