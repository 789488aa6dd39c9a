// The host's view of a block's shared backing (the memfd), by guest physical address:
// what the guest left in shared pages, and what the host puts there for it.

import type { RamBlock } from '../memory/ram-block';
import { outOfRange } from '../common/errors';

function offsetOf(block: RamBlock, gpa: bigint, length: number): number {
  const offset = Number(gpa - BigInt(block.gpa));
  if (offset < 0 || offset + length > block.size) throw outOfRange(`[0x${gpa.toString(16)}, +${length}) is outside ${block.name}`);
  return offset;
}

/** A copy of the memfd's bytes at [gpa, gpa + length). */
export function readShared(block: RamBlock, gpa: bigint, length: number): Buffer {
  return block.shared.read(offsetOf(block, gpa, length), length);
}

export function writeShared(block: RamBlock, gpa: bigint, bytes: Uint8Array): void {
  block.shared.write(offsetOf(block, gpa, bytes.length), bytes);
}
