// Byte quantities on the command line and in scripts: decimal, 0x hex, or with a binary
// suffix (K, M, G, T; "KiB" and "MB" mean the same), e.g. 64M, 0x100000, 2G.

import { UsageError } from './usage-error';

const UNITS: Record<string, number> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

export function parseSize(text: string, what: string): number {
  // 'iB' only after a unit letter: 4096ib is not a size.
  const match = /^(0x[0-9a-f]+|\d+)\s*(?:([kmgtp])(?:i?b)?|b)?$/i.exec(text.trim());
  if (!match) throw new UsageError(`${what}: '${text}' is not a size (examples: 4096, 0x1000, 64M, 2G)`);
  const value = Number(match[1]) * UNITS[(match[2] ?? '').toLowerCase()]!;
  if (!Number.isSafeInteger(value)) throw new UsageError(`${what}: '${text}' is too large`);
  return value;
}

/** "OFF+LEN" (both sizes), as in --range 1M+64K. */
export function parseRange(text: string, what: string): { offset: number; size: number } {
  const parts = text.split('+');
  if (parts.length !== 2) throw new UsageError(`${what}: '${text}' is not OFFSET+LENGTH (example: 1M+64K)`);
  return { offset: parseSize(parts[0]!, `${what} offset`), size: parseSize(parts[1]!, `${what} length`) };
}

export function formatBytes(bytes: number): string {
  for (const [unit, scale] of [['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) {
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale} ${unit}`;
  }
  return `${bytes} B`;
}
