// `guestmem probe`: what this host supports for confidential-VM memory work, and for each
// missing piece why and what to do.

import { VM_TYPES, type VmType } from '../kvm/kvm-constants';
import { capabilityFeature, probe, vmTypeFeature, CAPABILITIES, type Capability, type Feature, type ProbeReport } from '../host/probe';
import { UsageError } from './usage-error';
import { type1Reach, type Type1Reach } from '../vfio/type1-reach';
import { parseCommand, type CommandSpec } from './command-spec';
import { failureJson, printJson } from './output';
import { formatBytes, parseSize } from './sizes';

function line(name: string, feature: Feature, detail = ''): string {
  if (feature.ok) return `  ok       ${name}${detail ? `: ${detail}` : ''}`;
  return `  missing  ${name}: ${feature.why}${feature.fix ? `\n           fix: ${feature.fix}` : ''}`;
}

/** The guest_memfd flags line: what each VM kind may do, and whether that allows in-place conversion. */
function flagsDetail(report: ProbeReport): string {
  const flags = report.guestMemfdFlags;
  if (!flags.ok) return '';
  const list = (f: string[] | undefined) => (f === undefined ? 'not probed' : f.length > 0 ? f.join(' + ') : 'none');
  const parts = [];
  if (flags.privateVm !== undefined) parts.push(`${report.privateMemoryVm.best ?? 'private-memory'} VM: ${list(flags.privateVm)}`);
  parts.push(`default VM: ${list(flags.defaultVm)}`);
  const inPlace = flags.privateVm === undefined
    ? 'in-place conversion: unknown here (no private-memory VM type to ask)'
    : flags.inPlaceConversion
    ? 'in-place conversion possible (a private-memory VM\'s guest_memfd can start shared)'
    : 'no in-place conversion yet: a private-memory VM\'s guest_memfd cannot start shared (no INIT_SHARED), so guestmem converts between its two backings';
  return `${parts.join('; ')}\n           ${inPlace}`;
}

/** The type1 wall in words: how much of a guest of this size can be shared at once. */
export function formatReach(reach: Type1Reach): string {
  const percent = (reach.sharedFraction * 100).toFixed(reach.sharedFraction < 0.1 ? 2 : 1);
  const mib = Math.round(Number(reach.maxSharedBytes) / 2 ** 20);
  return `           at ${formatBytes(reach.granule)} granules type1 can map at most ${formatBytes(reach.maxSharedBytes)} (~${mib} MiB) of a guest at once ` +
    `(one entry per granule); for a guest of ${formatBytes(reach.guestSize)}: ${percent}% of its memory shared at most` +
    (reach.sharedFraction < 1 ? `, all of it needs dma_entry_limit >= ${reach.entriesForWholeGuest}` : '') +
    '\n           iommufd keeps no count of mappings (only the pinned memory is limited): it has no such wall';
}

export function formatProbe(report: ProbeReport, reach?: Type1Reach): string {
  return [
    'guestmem probe',
    line('native addon', report.nativeAddon),
    line('/dev/kvm', report.kvm, report.kvm.ok ? `API ${report.kvm.apiVersion}, VM types ${report.kvm.vmTypes?.join(', ')}` : ''),
    line('VM type with private memory', report.privateMemoryVm, report.privateMemoryVm.ok ? `${report.privateMemoryVm.types.join(', ')}; commands use ${report.privateMemoryVm.best} unless --vm-type says otherwise` : ''),
    line('KVM_X86_SW_PROTECTED_VM', report.swProtectedVm),
    line('AMD SEV-SNP (KVM_X86_SNP_VM)', report.snpVm, report.snpVm.ok ? 'VM-types bit, kvm_amd sev_snp=Y, /dev/sev' : ''),
    line('Intel TDX (KVM_X86_TDX_VM)', report.tdxVm, report.tdxVm.ok ? 'VM-types bit, kvm_intel tdx=Y' : ''),
    line('guest_memfd (KVM_CAP_GUEST_MEMFD)', report.guestMemfd),
    line('KVM_SET_USER_MEMORY_REGION2', report.userMemory2),
    line('memory attributes (PRIVATE)', report.memoryAttributes),
    line('guest_memfd flags (KVM_CAP_GUEST_MEMFD_FLAGS)', report.guestMemfdFlags, flagsDetail(report)),
    line('KVM_PRE_FAULT_MEMORY (KVM_CAP_PRE_FAULT_MEMORY)', report.preFaultMemory),
    line('IOMMU groups', report.iommuGroups, `${report.iommuGroups.count}`),
    line('devices bound to vfio-pci', report.vfioDevices, report.vfioDevices.devices.map((d) => `${d.bdf} (${d.vendor}:${d.device}, group ${d.iommuGroup})`).join(', ')),
    line('VFIO type1', report.type1, report.type1.dmaAvailableDefault !== undefined ? `dma_entry_limit ${report.type1.dmaAvailableDefault} mappings per container` : '') +
      (report.type1.ok && reach ? `\n${formatReach(reach)}` : ''),
    line('iommufd', report.iommufd, report.iommufd.ok ? 'preferred: no mapping limit' : ''),
  ].join('\n');
}

const PROBE_OPTIONS = {
  json: { type: 'boolean', help: 'print the report as one JSON object' },
  'guest-size': { type: 'string', value: 'S', help: 'the guest size for the type1 reach line (default 8G)' },
  require: {
    type: 'string', multiple: true, value: 'LIST',
    help: `exit 1 naming each of these the host lacks (0 when all are present): a gate for a hardware job;\ncomma-separated: vm-type=<name|number>, ${CAPABILITIES.join(', ')}`,
  },
} as const;

export const PROBE: CommandSpec<typeof PROBE_OPTIONS> = {
  name: 'probe',
  summary: 'what this host supports, and for each missing piece why and what to do',
  options: PROBE_OPTIONS,
  description: `Reports the native addon, /dev/kvm, VM types (and for SEV-SNP and TDX what the host shows:
the VM-types bit, kvm_amd sev_snp / kvm_intel tdx, /dev/sev), guest_memfd, memory attributes, IOMMU groups,
vfio-pci devices, VFIO type1 (with its dma_entry_limit) and iommufd; for each missing piece,
why and the fix. For type1 it says how much of a guest of size S can be shared at once at
4 KiB granules (one DMA entry each), and what dma_entry_limit all of it would need.`,
  examples: ['guestmem probe', 'guestmem probe --json | jq .memoryAttributes', 'guestmem probe --require vm-type=snp,vfio,iommufd'],
};

/** One --require item: a capability by name, or vm-type=T (a type name or number). */
export type Requirement = { name: string } & ({ capability: Capability } | { vmType: VmType | number });

/** --require values: comma-separated, each option may repeat; a name not known is a usage error. */
export function parseRequirements(values: string[]): Requirement[] {
  const requirements: Requirement[] = [];
  for (const name of values.flatMap((v) => v.split(',')).map((v) => v.trim())) {
    if (name === '') throw new UsageError('--require has an empty item (write them comma-separated: vm-type=snp,vfio,iommufd)');
    const type = /^vm-type=(.*)$/.exec(name);
    if (type) {
      const value = type[1]!;
      if (Object.hasOwn(VM_TYPES, value)) requirements.push({ name, vmType: value as VmType });
      else if (/^(?:0|[1-9]\d{0,9})$/.test(value) && Number(value) <= 0xffffffff) requirements.push({ name, vmType: Number(value) });
      else throw new UsageError(`--require vm-type= takes ${Object.keys(VM_TYPES).join(', ')} or a type number, got '${value}'`);
    } else if ((CAPABILITIES as readonly string[]).includes(name)) {
      requirements.push({ name, capability: name as Capability });
    } else {
      throw new UsageError(`--require: unknown requirement '${name}'; known: vm-type=<type>, ${CAPABILITIES.join(', ')}`);
    }
  }
  return requirements;
}

/** The requirements this host lacks, each with why and the fix. */
export function missingRequirements(report: ProbeReport, requirements: Requirement[]): Array<{ name: string; why?: string; fix?: string }> {
  return requirements
    .map((r) => ({ name: r.name, feature: 'capability' in r ? capabilityFeature(report, r.capability) : vmTypeFeature(report, r.vmType) }))
    .filter(({ feature }) => !feature.ok)
    .map(({ name, feature }) => ({ name, why: feature.why, fix: feature.fix }));
}

export function probeCommand(args: string[]): number {
  const { values } = parseCommand(PROBE, args);
  const guestSize = parseSize(values['guest-size'] ?? '8G', '--guest-size');
  const requirements = values.require ? parseRequirements(values.require) : null;
  const report = probe();
  const limit = report.type1.dmaAvailableDefault;
  const reach = limit !== undefined ? type1Reach(limit, guestSize) : undefined;
  const lacking = requirements ? missingRequirements(report, requirements) : [];
  const required = requirements ? { required: { ok: lacking.length === 0, requirements: requirements.map((r) => r.name), missing: lacking } } : {};
  const missing = `missing ${lacking.map((m) => m.name).join(', ')}: ${lacking.map((m) => `${m.name}: ${m.why}${m.fix ? ` (fix: ${m.fix})` : ''}`).join('; ')}`;
  const failures = lacking.length > 0 ? [{ code: 'ERR_GUESTMEM_REQUIREMENT_MISSING', message: missing }] : [];
  if (values.json) printJson({ ...report, ...(reach ? { type1Reach: reach } : {}), ...required, ...failureJson(failures) });
  else console.log(formatProbe(report, reach));
  if (!requirements) return 0;
  if (lacking.length === 0) {
    if (!values.json) console.log(`required: all present (${requirements.map((r) => r.name).join(', ')})`);
    return 0;
  }
  console.error(`guestmem probe: ${missing}`);
  return 1;
}
