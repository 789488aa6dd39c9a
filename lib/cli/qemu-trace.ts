// QEMU trace logs (log backend) of a confidential guest's conversions:
//   [<pid>@<seconds>.<micros>:]kvm_convert_memory start 0x<gpa> size 0x<bytes> shared_to_private|private_to_shared
//   [<pid>@<seconds>.<micros>:]ram_block_attributes_state_change offset 0x<off> size 0x<bytes> from '<discarded|populated|mixture>' to '<discarded|populated>'
// The first kind is replayed by gpa; the second, where present, is what QEMU's tracker saw
// for the conversion before it, and is checked against ours. Every other line is skipped.

import type { Bytes } from '../common/byte-range';
import type { PageState } from '../tracker/page-state';
import { exactBytes, parseDigits } from './sizes';

/** Addresses and sizes are exact: numbers up to 2^53, bigints past it (2^64 or more too). */
export interface TraceCheck {
  line: number;
  offset: Bytes;
  size: Bytes;
  from: PageState | 'mixture';
  to: PageState;
}

export interface TraceConversion {
  line: number;
  gpa: Bytes;
  size: Bytes;
  to: PageState;
  checks: TraceCheck[];
}

export interface ParsedTrace {
  conversions: TraceConversion[];
  skipped: number;
  /** state_change lines before the first kvm_convert_memory: nothing to check them against. */
  orphanChecks: number;
}

// One way to match each space: `\s*(?:…)?\s*` let the two runs split leading blanks in
// n ways, quadratic in a line of spaces (a 65,000-space line took 2.8 s). Every pattern
// applied to input must stay linear; test/support/hostile-patterns.ts times them.
const PREFIX = String.raw`^\s*(?:\d+@\d+\.\d+:\s*)?`;
const CONVERT = new RegExp(`${PREFIX}kvm_convert_memory start 0x([0-9a-f]+) size 0x([0-9a-f]+) (shared_to_private|private_to_shared)\\s*$`, 'i');
const STATE_CHANGE = new RegExp(
  `${PREFIX}ram_block_attributes_state_change offset 0x([0-9a-f]+) size 0x([0-9a-f]+) from '(discarded|populated|mixture)' to '(discarded|populated)'\\s*$`,
  'i',
);

/** QEMU's RamDiscardManager words: populated = shared, discarded = private. */
function state(word: string): PageState | 'mixture' {
  return word === 'populated' ? 'shared' : word === 'discarded' ? 'private' : 'mixture';
}

function hex(text: string): Bytes {
  return exactBytes(parseDigits(text, true));
}

export function parseTrace(text: string): ParsedTrace {
  const trace: ParsedTrace = { conversions: [], skipped: 0, orphanChecks: 0 };
  text.split('\n').forEach((raw, index) => {
    const line = index + 1;
    const convert = CONVERT.exec(raw);
    if (convert) {
      trace.conversions.push({
        line,
        gpa: hex(convert[1]!),
        size: hex(convert[2]!),
        to: convert[3]!.toLowerCase() === 'shared_to_private' ? 'private' : 'shared',
        checks: [],
      });
      return;
    }
    const change = STATE_CHANGE.exec(raw);
    if (change) {
      const last = trace.conversions[trace.conversions.length - 1];
      const check: TraceCheck = { line, offset: hex(change[1]!), size: hex(change[2]!), from: state(change[3]!.toLowerCase()), to: state(change[4]!.toLowerCase()) as PageState };
      if (last) last.checks.push(check);
      else trace.orphanChecks++;
      return;
    }
    if (raw.trim() !== '') trace.skipped++;
  });
  return trace;
}

const U64_LIMIT = 1n << 64n;

/** x86's widest guest physical address (MAXPHYADDR 52): no real guest converts above it. */
export const GUEST_PHYS_LIMIT = 1n << 52n;

/** A replay's granule: QEMU converts guest pages. */
const TRACE_PAGE = 4096n;

/**
 * Whether a replay can carry out this conversion in some block: non-empty, page-aligned
 * and ending within `limit`. The others are rejected whatever the block, so they neither
 * shape an inferred block nor count as memory the trace touches.
 */
export function isConvertible(c: TraceConversion, limit = U64_LIMIT): boolean {
  const start = BigInt(c.gpa);
  const size = BigInt(c.size);
  return size > 0n && start % TRACE_PAGE === 0n && size % TRACE_PAGE === 0n && start + size <= limit;
}

/**
 * The smallest 2 MiB-aligned block holding every conversion that isConvertible within
 * `limit` (2^64 for the tracker alone, GUEST_PHYS_LIMIT for a real VM); the others are
 * rejected when replayed. With none inside, 2 MiB at 0.
 */
export function inferBlock(trace: ParsedTrace, limit = U64_LIMIT): { gpa: Bytes; size: Bytes } | null {
  if (trace.conversions.length === 0) return null;
  const align = 2n * 1024n * 1024n;
  let low: bigint | null = null;
  let high = 0n;
  for (const c of trace.conversions) {
    const start = BigInt(c.gpa);
    const end = start + BigInt(c.size);
    if (!isConvertible(c, limit)) continue;
    if (low === null || start < low) low = start;
    if (end > high) high = end;
  }
  if (low === null) return { gpa: 0, size: Number(align) };
  const gpa = (low / align) * align;
  const size = ((high - gpa + align - 1n) / align) * align;
  return { gpa: exactBytes(gpa), size: exactBytes(size) };
}
