// Counts on the command line (iterations, pages, vCPUs, seconds): decimal digits only, one
// parser for every command. Number() would take '' as 0, ' 1' as 1 and '0x10' as 16, and a
// command would quietly do something else than asked (an empty --guest-iterations skipped
// the guest loop); sizes, which do take hex and suffixes, are parsed by sizes.ts.

import { UsageError } from './usage-error';

/** `text` as an integer in [min, max], or `fallback` when absent; anything else is a UsageError. */
export function parseCount(text: string | undefined, fallback: number, what: string, min: number, max: number): number {
  if (text === undefined) return fallback;
  const value = /^\d{1,16}$/.test(text) ? Number(text) : NaN;
  if (!(value >= min && value <= max)) throw new UsageError(`${what} takes an integer in ${min}..${max}, got '${text}' (decimal digits only)`);
  return value;
}

/** A comma-separated list of counts, each as parseCount takes it (no empty items). */
export function parseCountList(text: string | undefined, fallback: number[], what: string, noun: string, min: number, max: number): number[] {
  if (text === undefined) return fallback;
  const items = text.split(',');
  if (items.some((item) => !/^\d{1,16}$/.test(item) || Number(item) < min || Number(item) > max)) {
    throw new UsageError(`${what} takes ${noun} ${min}..${max} separated by commas (decimal digits, no spaces), got '${text}'`);
  }
  return items.map(Number);
}
