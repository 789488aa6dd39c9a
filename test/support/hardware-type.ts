// Which confidential VM type the host suites run on: GUESTMEM_HOST_VM_TYPE (snp, tdx,
// sw-protected), else the hardware type the host has (SNP first), else none.

import type { ProbeReport } from '../../lib/host/probe';

export function hardwareType(report: ProbeReport): 'snp' | 'tdx' | 'sw-protected' | null {
  const wanted = process.env.GUESTMEM_HOST_VM_TYPE;
  if (wanted === 'snp' || wanted === 'tdx' || wanted === 'sw-protected') return wanted;
  return report.snpVm.ok ? 'snp' : report.tdxVm.ok ? 'tdx' : null;
}
