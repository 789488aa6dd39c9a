// What a confidential guest's KVM_EXIT_SYSTEM_EVENT says. An SEV-ES/SNP guest cannot use
// port I/O to end (it causes #VC); it asks the hypervisor to terminate it with the GHCB MSR
// protocol's termination request (GHCBInfo 0x100, the reason set in bits 12-15, the reason
// code in bits 16-23), which KVM hands to userspace as KVM_SYSTEM_EVENT_SEV_TERM with the
// GHCB MSR value in data[0]. A TD that reports a fatal error (TDG.VP.VMCALL
// <ReportFatalError>) arrives as KVM_SYSTEM_EVENT_TDX_FATAL (Linux 6.16+) with R12, its
// error code, in data[0]. Both end the guest: the VMM must not run it again.

import { KVM_SYSTEM_EVENT_SEV_TERM, KVM_SYSTEM_EVENT_TDX_FATAL } from '../kvm/kvm-constants';

export { KVM_SYSTEM_EVENT_SEV_TERM, KVM_SYSTEM_EVENT_TDX_FATAL };

const GHCB_MSR_INFO_MASK = 0xfffn;
const GHCB_MSR_TERM_REQ = 0x100n;

/** The reason codes of reason set 0 (general), from the GHCB specification. */
const GENERAL_REASONS: Record<number, string> = {
  0: 'general termination request',
  1: 'SEV-ES / GHCB protocol range is not supported',
  2: 'SEV-SNP features are not supported',
};

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
  if ((msr & GHCB_MSR_INFO_MASK) !== GHCB_MSR_TERM_REQ) return null;
  return { reasonSet: Number((msr >> 12n) & 0xfn), reasonCode: Number((msr >> 16n) & 0xffn), ghcbMsr: msr };
}

/** One clause: why a confidential guest ended, from its system event; null for another event. */
export function describeTermination(type: number, data: readonly bigint[]): string | null {
  const sev = decodeSevTermination(type, data);
  if (sev) {
    const known = sev.reasonSet === 0 ? GENERAL_REASONS[sev.reasonCode] : undefined;
    return `SEV termination request, reason set ${sev.reasonSet} code 0x${sev.reasonCode.toString(16)}${known ? ` (${known})` : ''}`;
  }
  if (type === KVM_SYSTEM_EVENT_SEV_TERM) return `SEV termination (GHCB MSR 0x${(data[0] ?? 0n).toString(16)})`;
  if (type === KVM_SYSTEM_EVENT_TDX_FATAL) return `TDX fatal error reported by the TD, error code 0x${(data[0] ?? 0n).toString(16)}`;
  return null;
}
