// secret-snp's host side (guest/secret-snp.s). The guest speaks only the GHCB MSR protocol,
// which has no port to sync on: the host makes secret's sync-1 checks while it answers the
// guest's page state change of the page to shared (the loop tells onConversion before the
// vCPU re-enters), and its sync-2 checks at the end. The guest's own checks come back as its
// termination request (guest/ghcb.inc): set 0 code 0 when every one held.

import { GUESTMEM_TERM_SET } from '../ghcb-msr';
import type { ProgramHost } from '../program-host';
import { readShared, writeShared } from '../shared-bytes';
import { checkMessage, HOST_NOTE, SECRET } from './secret';

const PAGE = 4096;

/** What each of the guest's check ids means (guest/secret-snp.s). */
export const SNP_GUEST_CHECKS: Record<number, string> = {
  1: 'the page state change to private was not answered done',
  2: 'the guest did not read its secret back from the private page',
  3: 'the page state change to shared was not answered done',
  4: 'the guest did not read the host\'s note in the shared page',
  5: 'the SEV information response was wrong (GHCB protocol below 2, or a C-bit its page tables lack)',
  6: 'PVALIDATE of the private page failed',
  7: 'rescinding the page\'s validation failed',
};

export const secretSnpProgram: ProgramHost = {
  description: 'secret on SEV-SNP: page state changes, PVALIDATE and the C-bit through the GHCB MSR protocol; ends with a termination request',
  vmType: 'snp',
  boot: (context) => ({ dataGpa: context.dataGpa, dataPages: 1 }),
  onConversion(event, context) {
    if (event.gpa !== context.dataGpa || event.to !== 'shared' || event.outcome !== 'converted') return;
    const visible = readShared(context.block, context.dataGpa, PAGE).indexOf(SECRET) >= 0;
    context.check('memfd-hides-secret', !visible, visible ? 'the shared memfd shows the private page\'s secret' : 'the page turned shared does not show the secret written while it was private');
    writeShared(context.block, context.dataGpa, HOST_NOTE);
  },
  finish: checkMessage,
  termination(sev) {
    if (!sev) return 'the guest ended without an SEV termination request';
    if (sev.reasonSet === 0 && sev.reasonCode === 0) return null;
    if (sev.reasonSet === GUESTMEM_TERM_SET.check) return `guest check ${sev.reasonCode} failed: ${SNP_GUEST_CHECKS[sev.reasonCode] ?? 'unknown check'}`;
    if (sev.reasonSet === GUESTMEM_TERM_SET.vc) return `the guest took a #VC it did not expect (exit code 0x${sev.reasonCode.toString(16)})`;
    return `the guest terminated with reason set ${sev.reasonSet} code 0x${sev.reasonCode.toString(16)}`;
  },
};
