// The TDVMCALLs KVM hands to userspace as KVM_EXIT_TDX, and what the VMM answers: a
// TDVMCALL status (the GHCI specification's; arch/x86/include/asm/shared/tdx.h) that KVM
// copies to the TD's R10 on the next KVM_RUN (tdx.c, tdx_complete_simple and
// tdx_complete_get_td_vm_call_info). Linux 7.2 sends three (tdx.c, handle_tdvmcall):
//
// - GetQuote: a TD-Quote for attestation, which needs a quote-generation service on the
//   host. guestmem has none (attestation is out of scope): SUBFUNC_UNSUPPORTED, the answer
//   KVM itself fills in before the exit.
// - SetupEventNotifyInterrupt: the vector to raise when a quote is ready; with no quote
//   service, nothing would raise it: SUBFUNC_UNSUPPORTED, KVM's default as well.
// - GetTdVmCallInfo, leaf 1: which optional TDVMCALLs the host implements, in R11..R14, which
//   KVM prefills with 0 (none of them): SUCCESS, with those zeroes left as they are.
//
// Any other number (a later kernel's) is answered SUBFUNC_UNSUPPORTED, which a TD must
// handle for every optional call, rather than stopping the VM as the loop did before.

import type { TdxExit } from './vcpu-exit';

/** TDCALL leaves (the TD's RAX; the TDX module ABI). */
export const TDCALL_LEAF = { vpVmcall: 0, vpInfo: 1, memPageAccept: 6 } as const;

/**
 * TDVMCALL sub-function numbers (the TD's R11). KVM handles MapGPA (as KVM_HC_MAP_GPA_RANGE
 * to the VMM) and Instruction.IO (as KVM_EXIT_IO) itself; the rest reach the VMM here.
 */
export const TDVMCALL = {
  instructionIo: 30n,
  mapGpa: 0x10001n,
  getTdVmCallInfo: 0x10000n,
  getQuote: 0x10002n,
  setupEventNotifyInterrupt: 0x10004n,
} as const;

/** TDVMCALL status codes, as the TD reads them in R10. */
export const TDVMCALL_STATUS = {
  success: 0n,
  retry: 1n,
  invalidOperand: 0x8000000000000000n,
  alignError: 0x8000000000000002n,
  subfuncUnsupported: 0x8000000000000003n,
} as const;

/** The answer to a KVM_EXIT_TDX: the status, and why, for a report. */
export interface TdvmcallAnswer {
  status: bigint;
  call: string;
  why: string;
}

/** What the VMM answers the TDVMCALL of `exit` with. */
export function tdvmcallAnswer(exit: Pick<TdxExit, 'nr'>): TdvmcallAnswer {
  switch (exit.nr) {
    case TDVMCALL.getQuote:
      return { status: TDVMCALL_STATUS.subfuncUnsupported, call: 'GetQuote', why: 'no quote-generation service: attestation is out of scope' };
    case TDVMCALL.setupEventNotifyInterrupt:
      return { status: TDVMCALL_STATUS.subfuncUnsupported, call: 'SetupEventNotifyInterrupt', why: 'no quote service to raise it' };
    case TDVMCALL.getTdVmCallInfo:
      return { status: TDVMCALL_STATUS.success, call: 'GetTdVmCallInfo', why: 'no optional TDVMCALL implemented (R11..R14 left 0)' };
    default:
      return { status: TDVMCALL_STATUS.subfuncUnsupported, call: `TDVMCALL 0x${exit.nr.toString(16)}`, why: 'unknown to this VMM' };
  }
}
