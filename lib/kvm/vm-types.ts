// Which VM types this host can create, which of them can have private memory, and for a
// type the host lacks, one sentence that says why and what to do. KVM_CAP_VM_TYPES is a
// bitmap: bit N set means KVM_CREATE_VM accepts type N.

import { checkInteger } from '../common/validators';
import { VM_TYPES, type VmType } from './kvm-constants';

/** A VM type by name, or the raw KVM_CREATE_VM number. */
export type VmTypeChoice = VmType | number;

/**
 * Types whose VMs have guest_memfd and KVM_MEMORY_ATTRIBUTE_PRIVATE, best first: the
 * hardware-backed ones before the software stand-in (SEV and SEV-ES VMs have no private
 * memory in KVM's sense, a default VM none either).
 */
export const PRIVATE_MEMORY_VM_TYPES: readonly VmType[] = ['snp', 'tdx', 'sw-protected'];

export function vmTypeNumber(type: VmTypeChoice): number {
  return typeof type === 'number' ? type : VM_TYPES[type];
}

/** The name of a type number, or the number as text when it has none. */
export function vmTypeName(type: VmTypeChoice): string {
  if (typeof type === 'string') return type;
  const name = (Object.keys(VM_TYPES) as VmType[]).find((n) => VM_TYPES[n] === type);
  return name ?? String(type);
}

/** The types a KVM_CAP_VM_TYPES bitmap allows (0, before the capability existed: just 'default'). */
export function vmTypesInMask(mask: number): VmType[] {
  // KVM_CHECK_EXTENSION answers an int: a NaN or a fraction is no answer, not "no types".
  checkInteger(mask, 'mask', 0, 0xffffffff);
  if (mask === 0) return ['default'];
  return (Object.keys(VM_TYPES) as VmType[]).filter((name) => (mask & (1 << VM_TYPES[name])) !== 0);
}

export function maskHasVmType(mask: number, type: VmTypeChoice): boolean {
  const number = vmTypeNumber(type);
  if (mask === 0) return number === 0;
  return number < 32 && (mask & (1 << number)) !== 0;
}

/** The best type for private memory that the bitmap allows, or null when there is none. */
export function bestPrivateMemoryVmType(mask: number): VmType | null {
  return PRIVATE_MEMORY_VM_TYPES.find((type) => maskHasVmType(mask, type)) ?? null;
}

export function describeVmTypesMask(mask: number): string {
  return `KVM_CAP_VM_TYPES is 0x${mask.toString(16)} (${vmTypesInMask(mask).join(', ')})`;
}

/** What to do to get a type: where it comes from, in one clause. */
export function vmTypeFix(type: VmTypeChoice): string {
  switch (vmTypeName(type)) {
    case 'sw-protected':
      return 'a kernel built with CONFIG_KVM_SW_PROTECTED_VM (distribution kernels lack it); on this host run the command inside the harness VM: guestmem vm -- <command>';
    case 'snp':
      return 'an AMD EPYC host with SEV-SNP enabled in the firmware, Linux 6.11+ with kvm_amd loaded with sev_snp=1 (check /sys/module/kvm_amd/parameters/sev_snp) and /dev/sev present';
    case 'tdx':
      return 'an Intel Xeon host with TDX enabled in the firmware, Linux 6.16+ booted with kvm_intel.tdx=1 (check /sys/module/kvm_intel/parameters/tdx)';
    case 'sev':
    case 'sev-es':
      return 'an AMD host with SEV enabled and kvm_amd loaded with sev=1 / sev_es=1; note that these types have no private memory for guestmem to convert';
    default:
      return 'a kernel whose KVM_CAP_VM_TYPES has that bit';
  }
}

/** One line: this host cannot make a VM of `type`, why, and the fix. */
export function missingVmTypeLine(type: VmTypeChoice, mask: number): string {
  return `this host cannot create a ${vmTypeName(type)} VM (KVM_X86 type ${vmTypeNumber(type)}): ${describeVmTypesMask(mask)}; fix: ${vmTypeFix(type)}`;
}
