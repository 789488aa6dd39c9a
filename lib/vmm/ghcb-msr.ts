// The GHCB MSR protocol's requests and responses (AMD's GHCB specification, "GHCB MSR
// Protocol"; Linux's arch/x86/include/asm/sev-common.h, and sev.c's
// sev_handle_vmgexit_msr_protocol for KVM's answers), as an SNP guest (guest/ghcb.inc) and
// the VMM see them: bits 11:0 are GHCBInfo, the rest its data. KVM answers SEV info and
// CPUID itself, hands a page state change to the VMM as KVM_HC_MAP_GPA_RANGE (one 4 KiB
// page; 0x015 back with error 0, or bit 63 set when the VMM refused) and a termination
// request as KVM_SYSTEM_EVENT_SEV_TERM.

/** GHCBInfo codes. */
export const GHCB_MSR = {
  sevInfoResponse: 0x001n,
  sevInfoRequest: 0x002n,
  cpuidRequest: 0x004n,
  cpuidResponse: 0x005n,
  pageStateRequest: 0x014n,
  pageStateResponse: 0x015n,
  terminationRequest: 0x100n,
} as const;

/**
 * guestmem's reason sets (guest/ghcb.inc), beside the GHCB specification's set 0 (general)
 * and Linux's set 1: a failed check (the code is its id), a #VC the program did not expect
 * (the code is its exit code, 0xff for any above 0xfe).
 */
export const GUESTMEM_TERM_SET = { check: 0xe, vc: 0xf } as const;

/** The page state change operations (GHCBData[55:52]). */
export const PAGE_STATE = { private: 1n, shared: 2n } as const;

/** The MSR that holds the GHCB's address or an MSR-protocol value (MSR_AMD64_SEV_ES_GHCB). */
export const MSR_GHCB = 0xc0010130;

const INFO_MASK = 0xfffn;
const GFN_MASK = (1n << 40n) - 1n;

/** A page state change request for the 4 KiB page at `gpa`. */
export function pageStateRequest(gpa: bigint, to: keyof typeof PAGE_STATE): bigint {
  return (PAGE_STATE[to] << 52n) | (((gpa >> 12n) & GFN_MASK) << 12n) | GHCB_MSR.pageStateRequest;
}

/** A page state change request decoded; null for another request. */
export function decodePageStateRequest(value: bigint): { gpa: bigint; to: 'private' | 'shared' | number } | null {
  if ((value & INFO_MASK) !== GHCB_MSR.pageStateRequest) return null;
  const op = (value >> 52n) & 0xfn;
  const to = op === PAGE_STATE.private ? 'private' : op === PAGE_STATE.shared ? 'shared' : Number(op);
  return { gpa: ((value >> 12n) & GFN_MASK) << 12n, to };
}

/** The response to a page state change: error 0 when done (GHCBData[63:32]). */
export function pageStateResponse(error: bigint): bigint {
  return (error << 32n) | GHCB_MSR.pageStateResponse;
}

/** The SEV information response: protocol versions and the C-bit position. */
export function sevInfoResponse(max: number, min: number, encryptionBit: number): bigint {
  return (BigInt(max & 0xffff) << 48n) | (BigInt(min & 0xffff) << 32n) | (BigInt(encryptionBit & 0xff) << 24n) | GHCB_MSR.sevInfoResponse;
}

/** The SEV information response decoded; null for another value. */
export function decodeSevInfoResponse(value: bigint): { max: number; min: number; encryptionBit: number } | null {
  if ((value & INFO_MASK) !== GHCB_MSR.sevInfoResponse) return null;
  return { max: Number((value >> 48n) & 0xffffn), min: Number((value >> 32n) & 0xffffn), encryptionBit: Number((value >> 24n) & 0xffn) };
}

/** A termination request with `reasonSet` (4 bits) and `reasonCode` (8 bits). */
export function terminationRequest(reasonSet: number, reasonCode: number): bigint {
  return (BigInt(reasonSet & 0xf) << 12n) | (BigInt(reasonCode & 0xff) << 16n) | GHCB_MSR.terminationRequest;
}
