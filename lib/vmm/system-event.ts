// What a confidential guest's KVM_EXIT_SYSTEM_EVENT says. An SEV-ES/SNP guest cannot use
// port I/O to end (it causes #VC); it asks the hypervisor to terminate it with the GHCB MSR
// protocol's termination request (GHCBInfo 0x100, the reason set in bits 12-15, the reason
// code in bits 16-23), which KVM hands to userspace as KVM_SYSTEM_EVENT_SEV_TERM with the
// GHCB MSR value in data[0]. A TD that reports a fatal error (TDG.VP.VMCALL
// <ReportFatalError>) arrives as KVM_SYSTEM_EVENT_TDX_FATAL (Linux 6.16+) with the TD's 16
// general-purpose registers in data[0..15] in the architectural order (RAX, RCX, RDX, RBX,
// RSP, RBP, RSI, RDI, R8..R15: tdx.c, tdx_report_fatal_error): the error code is R12,
// data[12]; R13, data[13], is a GPA when the error code's bit 63 says so; RCX, data[1], is a
// mask of the registers that carry a message, 8 bytes each in the order R14, R15, RBX, RDI,
// RSI, R8, R9, RDX (the GHCI specification; QEMU's tdx_handle_report_fatal_error). Both end
// the guest: the VMM must not run it again.

import { KVM_SYSTEM_EVENT_SEV_TERM, KVM_SYSTEM_EVENT_TDX_FATAL } from '../kvm/kvm-constants';
import { GHCB_MSR, GUESTMEM_TERM_SET } from './ghcb-msr';

export { KVM_SYSTEM_EVENT_SEV_TERM, KVM_SYSTEM_EVENT_TDX_FATAL };

const GHCB_MSR_INFO_MASK = 0xfffn;

/** The reason codes of reason set 0 (general), from the GHCB specification. */
const GENERAL_REASONS: Record<number, string> = {
  0: 'general termination request',
  1: 'SEV-ES / GHCB protocol range is not supported',
  2: 'SEV-SNP features are not supported',
};

/** What guestmem's own reason sets (guest/ghcb.inc) mean. */
function guestmemReason(sev: { reasonSet: number; reasonCode: number }): string | undefined {
  if (sev.reasonSet === GUESTMEM_TERM_SET.check) return `guestmem: the guest's check ${sev.reasonCode} failed`;
  if (sev.reasonSet === GUESTMEM_TERM_SET.vc) return `guestmem: a #VC the program did not expect, exit code 0x${sev.reasonCode.toString(16)}${sev.reasonCode === 0xff ? ' or above' : ''}`;
  return undefined;
}

/** An SNP (or SEV-ES) guest's termination request, decoded from the GHCB MSR value. */
export interface SevTermination {
  reasonSet: number;
  reasonCode: number;
  /** The GHCB MSR value as KVM passed it. */
  ghcbMsr: bigint;
}

/** Decodes KVM_SYSTEM_EVENT_SEV_TERM's data[0]; null when it is not a termination request. */
export function decodeSevTermination(type: number, data: readonly bigint[]): SevTermination | null {
  if (type !== KVM_SYSTEM_EVENT_SEV_TERM || data.length === 0) return null;
  const msr = data[0]!;
  if ((msr & GHCB_MSR_INFO_MASK) !== GHCB_MSR.terminationRequest) return null;
  return { reasonSet: Number((msr >> 12n) & 0xfn), reasonCode: Number((msr >> 16n) & 0xffn), ghcbMsr: msr };
}

/** Register numbers in KVM's order (the index into system_event.data). */
const R = { rcx: 1, rdx: 2, rbx: 3, rsi: 6, rdi: 7, r8: 8, r9: 9, r12: 12, r13: 13, r14: 14, r15: 15 } as const;
/** The registers a TD's fatal-error message fills, in the order the GHCI gives. */
const MESSAGE_REGISTERS = [R.r14, R.r15, R.rbx, R.rdi, R.rsi, R.r8, R.r9, R.rdx] as const;
const TDX_FATAL_GPA_VALID = 1n << 63n;

/** A TD's fatal-error report, decoded from its registers. */
export interface TdxFatalError {
  /** R12. */
  errorCode: bigint;
  /** R13, when the error code's bit 63 says it holds a GPA. */
  gpa?: bigint;
  /** The text the TD put in the registers RCX names, up to its first NUL (printable ASCII only). */
  message?: string;
}

/** Decodes KVM_SYSTEM_EVENT_TDX_FATAL's registers; null for another event or too few registers. */
export function decodeTdxFatalError(type: number, data: readonly bigint[]): TdxFatalError | null {
  if (type !== KVM_SYSTEM_EVENT_TDX_FATAL || data.length < 16) return null;
  const errorCode = data[R.r12]!;
  const fatal: TdxFatalError = { errorCode };
  if ((errorCode & TDX_FATAL_GPA_VALID) !== 0n) fatal.gpa = data[R.r13]!;
  const mask = data[R.rcx]!;
  const bytes: number[] = [];
  for (const reg of MESSAGE_REGISTERS) {
    if ((mask & (1n << BigInt(reg))) === 0n) continue;
    for (let i = 0n; i < 8n; i++) bytes.push(Number((data[reg]! >> (8n * i)) & 0xffn));
  }
  const end = bytes.indexOf(0);
  const text = String.fromCharCode(...(end < 0 ? bytes : bytes.slice(0, end))).replace(/[^\x20-\x7e]/g, '?');
  if (text.length > 0) fatal.message = text;
  return fatal;
}

/** One clause: why a confidential guest ended, from its system event; null for another event. */
export function describeTermination(type: number, data: readonly bigint[]): string | null {
  const sev = decodeSevTermination(type, data);
  if (sev) {
    const known = sev.reasonSet === 0 ? GENERAL_REASONS[sev.reasonCode] : guestmemReason(sev);
    return `SEV termination request, reason set ${sev.reasonSet} code 0x${sev.reasonCode.toString(16)}${known ? ` (${known})` : ''}`;
  }
  if (type === KVM_SYSTEM_EVENT_SEV_TERM) return `SEV termination (GHCB MSR 0x${(data[0] ?? 0n).toString(16)})`;
  const tdx = decodeTdxFatalError(type, data);
  if (tdx) {
    const gpa = tdx.gpa === undefined ? '' : `, GPA 0x${tdx.gpa.toString(16)}`;
    const message = tdx.message === undefined ? '' : `: ${JSON.stringify(tdx.message)}`;
    return `TDX fatal error reported by the TD, error code 0x${tdx.errorCode.toString(16)}${gpa}${message}`;
  }
  if (type === KVM_SYSTEM_EVENT_TDX_FATAL) return `TDX fatal error reported by the TD (${data.length} registers, not the 16 KVM sends)`;
  return null;
}
