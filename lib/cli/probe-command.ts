// `guestmem probe`: what this host supports for confidential-VM memory work, and for each
// missing piece why and what to do.

import { parseArgs } from 'node:util';
import { probe, type Feature, type ProbeReport } from '../probe';
import { printJson } from './output';

function line(name: string, feature: Feature, detail = ''): string {
  if (feature.ok) return `  ok       ${name}${detail ? `: ${detail}` : ''}`;
  return `  missing  ${name}: ${feature.why}${feature.fix ? `\n           fix: ${feature.fix}` : ''}`;
}

export function formatProbe(report: ProbeReport): string {
  return [
    'guestmem probe',
    line('native addon', report.nativeAddon),
    line('/dev/kvm', report.kvm, report.kvm.ok ? `API ${report.kvm.apiVersion}, VM types ${report.kvm.vmTypes?.join(', ')}` : ''),
    line('KVM_X86_SW_PROTECTED_VM', report.swProtectedVm),
    line('guest_memfd (KVM_CAP_GUEST_MEMFD)', report.guestMemfd),
    line('KVM_SET_USER_MEMORY_REGION2', report.userMemory2),
    line('memory attributes (PRIVATE)', report.memoryAttributes),
    line('IOMMU groups', report.iommuGroups, `${report.iommuGroups.count}`),
    line('devices bound to vfio-pci', report.vfioDevices, report.vfioDevices.devices.map((d) => `${d.bdf} (${d.vendor}:${d.device}, group ${d.iommuGroup})`).join(', ')),
    line('VFIO type1', report.type1, report.type1.dmaAvailableDefault !== undefined ? `dma_entry_limit ${report.type1.dmaAvailableDefault} mappings per container` : ''),
    line('iommufd', report.iommufd, report.iommufd.ok ? 'preferred: no mapping limit' : ''),
  ].join('\n');
}

export function probeCommand(args: string[]): number {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' } } });
  const report = probe();
  if (values.json) printJson(report);
  else console.log(formatProbe(report));
  return 0;
}
