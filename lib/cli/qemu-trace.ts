// QEMU trace logs (log backend) of a confidential guest's conversions:
//   [<pid>@<seconds>.<micros>:]kvm_convert_memory start 0x<gpa> size 0x<bytes> shared_to_private|private_to_shared
//   [<pid>@<seconds>.<micros>:]ram_block_attributes_state_change offset 0x<off> size 0x<bytes> from '<discarded|populated|mixture>' to '<discarded|populated>'
// The first kind is replayed by gpa; the second, where present, is what QEMU's tracker saw
// for the conversion before it, and is checked against ours. Every other line is skipped.

import type { PageState } from '../state-change-channel';
import { ScriptError } from './conversion-script';

export interface TraceCheck {
  line: number;
  offset: number;
  size: number;
  from: PageState | 'mixture';
  to: PageState;
}

export interface TraceConversion {
  line: number;
  gpa: number;
  size: number;
  to: PageState;
  checks: TraceCheck[];
}

export interface ParsedTrace {
  conversions: TraceConversion[];
  skipped: number;
  /** state_change lines before the first kvm_convert_memory: nothing to check them against. */
  orphanChecks: number;
}

const PREFIX = String.raw`^\s*(?:\d+@\d+\.\d+:)?\s*`;
const CONVERT = new RegExp(`${PREFIX}kvm_convert_memory start 0x([0-9a-f]+) size 0x([0-9a-f]+) (shared_to_private|private_to_shared)\\s*$`, 'i');
const STATE_CHANGE = new RegExp(
  `${PREFIX}ram_block_attributes_state_change offset 0x([0-9a-f]+) size 0x([0-9a-f]+) from '(discarded|populated|mixture)' to '(discarded|populated)'\\s*$`,
  'i',
);

/** QEMU's RamDiscardManager words: populated = shared, discarded = private. */
function state(word: string): PageState | 'mixture' {
  return word === 'populated' ? 'shared' : word === 'discarded' ? 'private' : 'mixture';
}

function hex(text: string, line: number): number {
  const value = Number.parseInt(text, 16);
  if (!Number.isSafeInteger(value)) throw new ScriptError(line, `0x${text} is above 2^53`);
  return value;
}

export function parseTrace(text: string): ParsedTrace {
  const trace: ParsedTrace = { conversions: [], skipped: 0, orphanChecks: 0 };
  text.split('\n').forEach((raw, index) => {
    const line = index + 1;
    const convert = CONVERT.exec(raw);
    if (convert) {
      trace.conversions.push({
        line,
        gpa: hex(convert[1]!, line),
        size: hex(convert[2]!, line),
        to: convert[3]!.toLowerCase() === 'shared_to_private' ? 'private' : 'shared',
        checks: [],
      });
      return;
    }
    const change = STATE_CHANGE.exec(raw);
    if (change) {
      const last = trace.conversions[trace.conversions.length - 1];
      const check: TraceCheck = { line, offset: hex(change[1]!, line), size: hex(change[2]!, line), from: state(change[3]!.toLowerCase()), to: state(change[4]!.toLowerCase()) as PageState };
      if (last) last.checks.push(check);
      else trace.orphanChecks++;
      return;
    }
    if (raw.trim() !== '') trace.skipped++;
  });
  return trace;
}

/** The smallest 2 MiB-aligned block holding every conversion. */
export function inferBlock(trace: ParsedTrace): { gpa: number; size: number } | null {
  if (trace.conversions.length === 0) return null;
  const align = 2 * 1024 * 1024;
  let low = Infinity;
  let high = 0;
  for (const c of trace.conversions) {
    low = Math.min(low, c.gpa);
    high = Math.max(high, c.gpa + c.size);
  }
  const gpa = Math.floor(low / align) * align;
  return { gpa, size: Math.ceil((high - gpa) / align) * align };
}
