// Checks of arguments from outside, made before any syscall: each returns the value it
// checked or throws Node's own codes (ERR_INVALID_ARG_TYPE, ERR_OUT_OF_RANGE), and the words
// an error message uses to show a value it refused.

import { invalidArgType, outOfRange } from './errors';

/** Checks that `value` is an integer in [min, max] and returns it, with Node's codes. */
export function checkInteger(value: unknown, name: string, min: number, max: number): number {
  if (typeof value !== 'number') throw invalidArgType(`${name} must be a number, got ${describeValue(value)}`);
  if (!Number.isInteger(value) || value < min || value > max) {
    throw outOfRange(`${name} must be an integer in [${min}, ${max}], got ${value}`);
  }
  return value;
}

/** A value as an error message shows it: its type, and the value itself where short. */
export function describeValue(value: unknown): string {
  if (value === null || value === undefined) return String(value);
  if (typeof value === 'bigint') return `bigint ${value}n`;
  if (typeof value === 'string') return `string '${value.length > 40 ? `${value.slice(0, 40)}…` : value}'`;
  if (typeof value === 'function' || typeof value === 'object') return typeof value;
  // eslint-disable-next-line @typescript-eslint/no-base-to-string -- objects and functions returned above: only primitives reach here
  return `${typeof value} ${String(value)}`;
}
