// KVM_HC_MAP_GPA_RANGE as the guest asks it (Documentation/virt/kvm/x86/hypercalls.rst):
// a0 = gpa, a1 = number of 4 KiB pages, a2 = attributes (bits 0-1 a page-size hint,
// bit 4 set = encrypted, i.e. private). KVM itself answers a misaligned gpa, zero pages
// and overflow with -KVM_EINVAL without exiting; what reaches us is decoded here, and
// what we refuse gets the same answer. The value goes back in the guest's rax.

import { invalidArgType, outOfRange } from '../common/errors';
import { describeValue } from '../common/validators';
import type { PageState } from '../tracker/state-change-channel';

/** The hypercall number a guest converts its memory with (KVM_HC_MAP_GPA_RANGE). */
export const KVM_HC_MAP_GPA_RANGE = 12n;
export const KVM_CAP_EXIT_HYPERCALL = 201;
/** The MAP_GPA_RANGE attribute bit that asks for private (encrypted) memory. */
export const KVM_MAP_GPA_RANGE_ENCRYPTED = 1n << 4n;
const PAGE_SIZE_HINT = 3n;
const KNOWN_ATTRIBUTES = KVM_MAP_GPA_RANGE_ENCRYPTED | PAGE_SIZE_HINT;
const PAGE_SIZE_HINT_1G = 2n;
const PAGE = 4096n;
const U64_LIMIT = 1n << 64n;
const SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Guest-visible error values (include/uapi/linux/kvm_para.h), returned negated. */
export const KVM_EINVAL = 22;
export const KVM_EFAULT = 14;

export interface ConversionRequest {
  /** Numbers where exact (the fast path of every range check below us), else bigints. */
  gpa: number | bigint;
  size: number | bigint;
  to: PageState;
}

export type DecodedRequest = ConversionRequest | { rejected: string };

/**
 * A MAP_GPA_RANGE hypercall's arguments as a conversion request, or why it is refused (-EINVAL
 * to the guest).
 */
export function decodeMapGpaRange(args: readonly bigint[]): DecodedRequest {
  // The exit decoder hands three u64 registers; a caller of this export may hand anything.
  if (!Array.isArray(args as unknown)) throw invalidArgType(`the hypercall's arguments must be an array of bigints, got ${describeValue(args)}`);
  for (let i = 0; i < 3; i++) {
    const arg: unknown = (args as readonly unknown[])[i];
    if (arg === undefined) continue;
    if (typeof arg !== 'bigint') throw invalidArgType(`args[${i}] must be a bigint (a 64-bit register), got ${describeValue(arg)}`);
    if (arg < 0n || arg >= U64_LIMIT) throw outOfRange(`args[${i}] must be within [0, 2^64) (a 64-bit register), got ${arg}`);
  }
  const [gpa = 0n, pages = 0n, attributes = 0n] = args;
  if ((attributes & ~KNOWN_ATTRIBUTES) !== 0n) return { rejected: `unknown attribute bits 0x${(attributes & ~KNOWN_ATTRIBUTES).toString(16)}` };
  if ((attributes & PAGE_SIZE_HINT) > PAGE_SIZE_HINT_1G) return { rejected: 'page-size hint 3 is reserved' };
  if (pages === 0n) return { rejected: 'zero pages' };
  if (gpa % PAGE !== 0n) return { rejected: `gpa 0x${gpa.toString(16)} is not 4 KiB aligned` };
  const size = pages * PAGE;
  const end = gpa + size;
  if (end > U64_LIMIT) return { rejected: 'the range wraps past 2^64' };
  const to: PageState = (attributes & KVM_MAP_GPA_RANGE_ENCRYPTED) !== 0n ? 'private' : 'shared';
  return end <= SAFE ? { gpa: Number(gpa), size: Number(size), to } : { gpa, size, to };
}
