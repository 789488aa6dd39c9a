// The --vm-type option, shared by every command that makes a VM: sw-protected, snp, tdx or
// a KVM_CREATE_VM number; without it, the best type this host has for private memory
// (SNP, then TDX, then SW-protected). A host that lacks the type gets one line with the fix
// and exit 1; the harness VM is offered only where it helps (it has SW-protected VMs, never
// SNP or TDX).

import { GuestmemError } from '../common/errors';
import type { Kvm } from '../kvm/kvm';
import { bestPrivateMemoryVmType, describeVmTypesMask, maskHasVmType, missingVmTypeLine, vmTypeFix, vmTypeName, PRIVATE_MEMORY_VM_TYPES, type VmTypeChoice } from '../kvm/vm-types';
import { capabilityFeature, probe, vmTypeFeature, type Capability } from '../host/probe';
import { UsageError } from './usage-error';

/** The option, spread into each command's option table (it parses and documents it). */
export const VM_TYPE_OPTION = {
  'vm-type': {
    type: 'string',
    value: 'TYPE',
    help: 'sw-protected, snp, tdx or a KVM_CREATE_VM number (default: the best this host has\nfor private memory: snp, tdx, then sw-protected); one without it: one line with the fix, exit 1',
  },
} as const;

/** --vm-type as given: a private-memory type's name or a KVM_CREATE_VM number; undefined for the default. */
export function parseVmTypeOption(value: string | undefined): VmTypeChoice | undefined {
  if (value === undefined) return undefined;
  if ((PRIVATE_MEMORY_VM_TYPES as readonly string[]).includes(value)) return value as VmTypeChoice;
  if (/^(?:0|[1-9]\d{0,9}|0x[0-9a-f]{1,8})$/i.test(value)) {
    const number = Number(value);
    if (number <= 0xffffffff) return number;
  }
  throw new UsageError(`--vm-type takes ${PRIVATE_MEMORY_VM_TYPES.join(', ')} or a KVM_CREATE_VM type number (0..2^32-1), got '${value}'`);
}

/** The command line to repeat inside the harness VM, for the fix. */
function harnessHint(message: string, commandLine: string[] | undefined): string {
  return commandLine ? message.replace('guestmem vm -- <command>', `guestmem vm -- ${commandLine.join(' ')}`) : message;
}

function unsupported(message: string): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', message);
}

/**
 * The type to create on this KVM: the one asked for if the host has it, else the best for
 * private memory; otherwise ERR_GUESTMEM_UNSUPPORTED in one line with the fix. Asked of
 * KVM_CAP_VM_TYPES before KVM_CREATE_VM, so the user never sees a bare EINVAL.
 */
export function resolveVmType(kvm: Kvm, choice: VmTypeChoice | undefined, commandLine?: string[]): VmTypeChoice {
  const mask = kvm.vmTypesMask;
  if (choice !== undefined) {
    if (!maskHasVmType(mask, choice)) throw unsupported(harnessHint(missingVmTypeLine(choice, mask), commandLine));
    return choice;
  }
  const best = bestPrivateMemoryVmType(mask);
  if (best === null) {
    throw unsupported(harnessHint(`this host has no VM type with private memory: ${describeVmTypesMask(mask)}; fix: ${vmTypeFix('sw-protected')}`, commandLine));
  }
  return best;
}

/**
 * --no-vm on a host that lacks what the command needs (demo, bench, guest): the same code and
 * the same kind of fix as convert and run give on such a host (ERR_GUESTMEM_UNSUPPORTED,
 * "fix: …"), not a bare failure.
 */
export function noVmRefusal(missing: string, commandLine: string[]): GuestmemError {
  const again = commandLine.filter((arg) => arg !== '--no-vm').join(' ');
  return unsupported(`not possible on this host: ${missing}; fix: run the command inside the harness VM: guestmem vm -- ${again} (without --no-vm it goes there itself)`);
}

/**
 * For commands that run themselves in the harness VM when this host cannot (demo, bench,
 * guest): null to run here, else the reason to go to the VM. A type the harness VM lacks
 * too (SNP, TDX, another number) is no reason to go there: that is the one-line error.
 */
export function harnessReason(choice: VmTypeChoice | undefined, capabilities: Capability[]): string | null {
  if (process.env.GUESTMEM_IN_VM === '1') return null;
  const report = probe();
  const wanted = choice ?? report.privateMemoryVm.best ?? 'sw-protected';
  const typeFeature = vmTypeFeature(report, wanted);
  if (!typeFeature.ok && vmTypeName(wanted) !== 'sw-protected') {
    throw unsupported(report.kvm.ok
      ? missingVmTypeLine(wanted, report.kvm.vmTypesMask ?? 0)
      : `this host cannot create a ${vmTypeName(wanted)} VM: ${report.kvm.why}; fix: ${vmTypeFix(wanted)}`);
  }
  // Without /dev/kvm every KVM feature lacks it for KVM's one reason: say it once, as KVM's own.
  const kvmFeatures = new Set<Capability>(['kvm', 'private-memory-vm', 'sw-protected-vm', 'snp-vm', 'tdx-vm', 'guest-memfd', 'memory-attributes', 'pre-fault']);
  const features = report.kvm.ok
    ? [typeFeature, ...capabilities.map((c) => capabilityFeature(report, c))]
    : [report.kvm, ...capabilities.filter((c) => !kvmFeatures.has(c)).map((c) => capabilityFeature(report, c))];
  const lacking = features.filter((f) => !f.ok);
  return lacking.length === 0 ? null : [...new Set(lacking.map((f) => f.why))].join('; ');
}
