// What this host can do for confidential-VM memory work, and for each missing piece why
// and what to do. Every answer comes from asking the kernel (open, KVM_CHECK_EXTENSION,
// VFIO_CHECK_EXTENSION, sysfs), never from guessing by file existence alone.

import fs from 'node:fs';
import {
  GUEST_MEMFD_FLAG_INIT_SHARED,
  GUEST_MEMFD_FLAG_MMAP,
  KVM_CAP_GUEST_MEMFD,
  KVM_CAP_GUEST_MEMFD_FLAGS,
  KVM_CAP_MEMORY_ATTRIBUTES,
  KVM_CAP_PRE_FAULT_MEMORY,
  KVM_CAP_USER_MEMORY2,
  KVM_MEMORY_ATTRIBUTE_PRIVATE,
  type VmType,
} from '../kvm/kvm-constants';
import { Kvm, type Vm } from '../kvm/kvm';
import { bestPrivateMemoryVmType, describeVmTypesMask, maskHasVmType, vmTypeFix, vmTypeName, vmTypesInMask, PRIVATE_MEMORY_VM_TYPES } from '../kvm/vm-types';
import { native, nativeAvailable } from '../common/native';
import { VfioContainer, VFIO_TYPE1v2_IOMMU } from '../vfio/vfio-type1';
import { iommuGroupCount, vfioPciDevices, type PciDeviceInfo } from '../vfio/vfio-sysfs';

/** One capability of the host: present, or why not and what to do. */
export interface Feature {
  ok: boolean;
  /** Why not, when ok is false. */
  why?: string;
  /** What to do about it. */
  fix?: string;
}

/** What {@link probe} found: each piece guestmem uses, present or why not. */
export interface ProbeReport {
  nativeAddon: Feature;
  kvm: Feature & { apiVersion?: number; vmTypes?: VmType[]; vmTypesMask?: number };
  /**
   * The VM types with private memory this host can create (KVM_CAP_VM_TYPES), and the one
   * commands use by default: the best of SNP, TDX, SW-protected that is there.
   */
  privateMemoryVm: Feature & { types: VmType[]; best?: VmType };
  swProtectedVm: Feature;
  /** AMD SEV-SNP: the VM-types bit, kvm_amd's sev_snp parameter, /dev/sev. */
  snpVm: Feature & { vmTypeBit: boolean; moduleParameter: string | null; sevDevice: 'present' | 'absent' | 'no-permission' | 'unusable' };
  /** Intel TDX: the VM-types bit, kvm_intel's tdx parameter. */
  tdxVm: Feature & { vmTypeBit: boolean; moduleParameter: string | null };
  guestMemfd: Feature;
  userMemory2: Feature;
  memoryAttributes: Feature & { private?: boolean };
  /**
   * KVM_CAP_GUEST_MEMFD_FLAGS: the guest_memfd flags KVM accepts for the probed
   * (private-memory) VM and for a default VM. In-place conversion needs a private-memory
   * VM's guest_memfd to be mappable and to start shared (MMAP and INIT_SHARED).
   */
  guestMemfdFlags: Feature & { privateVm?: GuestMemfdFlag[]; defaultVm?: GuestMemfdFlag[]; inPlaceConversion?: boolean };
  /** KVM_CAP_PRE_FAULT_MEMORY: what RamBlockOptions.prefault uses. */
  preFaultMemory: Feature;
  iommuGroups: Feature & { count: number };
  vfioDevices: Feature & { devices: PciDeviceInfo[] };
  type1: Feature & { dmaAvailableDefault?: number };
  iommufd: Feature;
}

export type GuestMemfdFlag = 'mmap' | 'init-shared';

function guestMemfdFlags(mask: number): GuestMemfdFlag[] {
  const flags: GuestMemfdFlag[] = [];
  if (mask & GUEST_MEMFD_FLAG_MMAP) flags.push('mmap');
  if (mask & GUEST_MEMFD_FLAG_INIT_SHARED) flags.push('init-shared');
  return flags;
}

function errorWhy(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  return e.code ? `${e.code}: ${e.message}` : String(e.message ?? e);
}

function missing(why: string, fix?: string): Feature {
  return fix ? { ok: false, why, fix } : { ok: false, why };
}

function openFailure(path: string, error: unknown): Feature {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return missing(`no ${path}`, path === '/dev/kvm' ? 'load kvm_intel or kvm_amd, or run inside `guestmem vm`' : `load the module that provides ${path}`);
  if (code === 'EACCES' || code === 'EPERM') return missing(`no permission to open ${path}`, `run as root or add yourself to the group owning ${path}`);
  return missing(`cannot open ${path}: ${errorWhy(error)}`);
}

/** Probes KVM with a SW-protected VM when the host has that type, else a default VM. */
function probeKvm(report: ProbeReport): void {
  let kvm: Kvm;
  try {
    kvm = Kvm.open();
  } catch (error) {
    const feature = openFailure('/dev/kvm', error);
    report.kvm = feature;
    report.privateMemoryVm = { ...missing('no usable /dev/kvm', feature.fix), types: [] };
    report.snpVm = { ...missing('no usable /dev/kvm', feature.fix), vmTypeBit: false, moduleParameter: moduleParameter('kvm_amd', 'sev_snp'), sevDevice: sevDevice() };
    report.tdxVm = { ...missing('no usable /dev/kvm', feature.fix), vmTypeBit: false, moduleParameter: moduleParameter('kvm_intel', 'tdx') };
    for (const key of ['swProtectedVm', 'guestMemfd', 'userMemory2', 'memoryAttributes', 'guestMemfdFlags', 'preFaultMemory'] as const) {
      report[key] = missing('no usable /dev/kvm', feature.fix);
    }
    return;
  }
  try {
    const mask = kvm.vmTypesMask;
    const vmTypes = vmTypesInMask(mask);
    report.kvm = { ok: true, apiVersion: kvm.apiVersion, vmTypes, vmTypesMask: mask };
    const best = bestPrivateMemoryVmType(mask);
    const privateTypes = PRIVATE_MEMORY_VM_TYPES.filter((t) => maskHasVmType(mask, t));
    report.privateMemoryVm = best
      ? { ok: true, types: privateTypes, best }
      : { ...missing(`${describeVmTypesMask(mask)}: no VM type with private memory (snp, tdx, sw-protected)`, vmTypeFix('sw-protected')), types: [] };
    report.snpVm = probeSnp(mask);
    report.tdxVm = probeTdx(mask);
    const swProtected = vmTypes.includes('sw-protected');
    report.swProtectedVm = swProtected
      ? { ok: true }
      : missing('KVM_CAP_VM_TYPES lacks KVM_X86_SW_PROTECTED_VM', 'use a kernel built with CONFIG_KVM_SW_PROTECTED_VM (guestmem vm does)');
    let vm: Vm | null = null;
    try {
      // The bare VM (no SNP/TDX initialization) answers KVM_CHECK_EXTENSION for its type.
      vm = kvm.createVm(best ?? 'default', { initialize: false });
    } catch (error) {
      const failure = missing(`KVM_CREATE_VM failed: ${errorWhy(error)}`);
      report.guestMemfd = report.userMemory2 = report.memoryAttributes = report.guestMemfdFlags = report.preFaultMemory = failure;
      return;
    }
    const vmName = best ? `a ${best} VM` : 'a default VM';
    report.guestMemfd = vm.checkExtension(KVM_CAP_GUEST_MEMFD) > 0 ? { ok: true } : missing(`KVM_CAP_GUEST_MEMFD is 0 for ${vmName}`, 'a 6.8+ kernel with CONFIG_KVM_PRIVATE_MEM');
    report.userMemory2 = vm.checkExtension(KVM_CAP_USER_MEMORY2) > 0 ? { ok: true } : missing(`KVM_CAP_USER_MEMORY2 is 0 for ${vmName}`, 'a 6.8+ kernel');
    const attributes = BigInt(vm.checkExtension(KVM_CAP_MEMORY_ATTRIBUTES));
    const hasPrivate = (attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE) !== 0n;
    report.memoryAttributes = hasPrivate
      ? { ok: true, private: true }
      : { ...missing(`KVM_CAP_MEMORY_ATTRIBUTES is 0x${attributes.toString(16)} for ${vmName}: no KVM_MEMORY_ATTRIBUTE_PRIVATE`, 'a SW-protected, SNP or TDX VM type (guestmem vm has SW-protected)'), private: false };
    report.guestMemfdFlags = probeGuestMemfdFlags(kvm, vm, best !== null);
    report.preFaultMemory = vm.checkExtension(KVM_CAP_PRE_FAULT_MEMORY) > 0
      ? { ok: true }
      : missing(`KVM_CAP_PRE_FAULT_MEMORY is 0 for ${vmName}`, 'a 6.10+ kernel on a CPU with two-dimensional paging (EPT or NPT)');
  } finally {
    kvm.close();
  }
}

/** A module parameter's value (Y, N, 1, …), or null when the module or parameter is absent. */
function moduleParameter(module: string, parameter: string): string | null {
  try {
    return fs.readFileSync(`/sys/module/${module}/parameters/${parameter}`, 'utf8').trim();
  } catch {
    return null;
  }
}

function sevDevice(): ProbeReport['snpVm']['sevDevice'] {
  try {
    fs.closeSync(fs.openSync('/dev/sev', 'r+'));
    return 'present';
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? 'absent' : code === 'EACCES' || code === 'EPERM' ? 'no-permission' : 'unusable';
  }
}

const enabled = (value: string | null) => value === 'Y' || value === '1';

/** SEV-SNP as the host shows it: all three must hold for guestmem to make an SNP VM. */
function probeSnp(mask: number): ProbeReport['snpVm'] {
  const vmTypeBit = maskHasVmType(mask, 'snp');
  const parameter = moduleParameter('kvm_amd', 'sev_snp');
  const device = sevDevice();
  const why: string[] = [];
  if (!vmTypeBit) why.push(`${describeVmTypesMask(mask)}: no KVM_X86_SNP_VM`);
  if (!enabled(parameter)) why.push(parameter === null ? 'no /sys/module/kvm_amd/parameters/sev_snp (kvm_amd not loaded, or built without SEV)' : `kvm_amd sev_snp=${parameter}`);
  if (device !== 'present') why.push(device === 'absent' ? 'no /dev/sev' : device === 'no-permission' ? 'no permission to open /dev/sev' : '/dev/sev cannot be opened');
  const facts = { vmTypeBit, moduleParameter: parameter, sevDevice: device };
  return why.length === 0 ? { ok: true, ...facts } : { ...missing(why.join('; '), vmTypeFix('snp')), ...facts };
}

/** TDX as the host shows it: the VM-types bit and kvm_intel's tdx parameter. */
function probeTdx(mask: number): ProbeReport['tdxVm'] {
  const vmTypeBit = maskHasVmType(mask, 'tdx');
  const parameter = moduleParameter('kvm_intel', 'tdx');
  const why: string[] = [];
  if (!vmTypeBit) why.push(`${describeVmTypesMask(mask)}: no KVM_X86_TDX_VM`);
  if (!enabled(parameter)) why.push(parameter === null ? 'no /sys/module/kvm_intel/parameters/tdx (kvm_intel not loaded, or older than 6.16)' : `kvm_intel tdx=${parameter}`);
  const facts = { vmTypeBit, moduleParameter: parameter };
  return why.length === 0 ? { ok: true, ...facts } : { ...missing(why.join('; '), vmTypeFix('tdx')), ...facts };
}

/**
 * What KVM_CAP_GUEST_MEMFD_FLAGS says for the private-memory VM and for a default VM. The
 * answer is the kernel's, whatever its version: a kernel may let every VM mmap a
 * guest_memfd yet refuse INIT_SHARED where the VM has private memory, which rules out
 * in-place conversion there.
 */
function probeGuestMemfdFlags(kvm: Kvm, vm: Vm, swProtected: boolean): ProbeReport['guestMemfdFlags'] {
  const privateVm = swProtected ? guestMemfdFlags(vm.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS)) : undefined;
  let defaultVm: GuestMemfdFlag[] | undefined;
  if (!swProtected) defaultVm = guestMemfdFlags(vm.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS));
  else {
    try {
      using plain = kvm.createVm('default');
      defaultVm = guestMemfdFlags(plain.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS));
    } catch {
      defaultVm = undefined;
    }
  }
  if ((privateVm ?? []).length === 0 && (defaultVm ?? []).length === 0) {
    return missing('KVM_CAP_GUEST_MEMFD_FLAGS is 0: no guest_memfd can be mmapped by the host', 'a 6.18+ kernel (guest_memfd mmap: GUEST_MEMFD_FLAG_MMAP)');
  }
  const inPlaceConversion = privateVm !== undefined && privateVm.includes('mmap') && privateVm.includes('init-shared');
  return { ok: true, privateVm, defaultVm, inPlaceConversion };
}

function probeVfio(report: ProbeReport): void {
  const count = iommuGroupCount();
  report.iommuGroups = count > 0 ? { ok: true, count } : { ...missing('no IOMMU groups in /sys/kernel/iommu_groups', 'enable the IOMMU: intel_iommu=on or amd_iommu=on on the kernel command line'), count };
  const devices = vfioPciDevices();
  report.vfioDevices = devices.length > 0
    ? { ok: true, devices }
    : { ...missing('no PCI device is bound to vfio-pci', 'echo vfio-pci > /sys/bus/pci/devices/<bdf>/driver_override; echo <bdf> > /sys/bus/pci/drivers_probe'), devices };
  try {
    const container = VfioContainer.open();
    try {
      report.type1 = container.checkExtension(VFIO_TYPE1v2_IOMMU)
        ? { ok: true, dmaAvailableDefault: readDmaEntryLimit() }
        : missing('the VFIO container lacks the type1v2 IOMMU', 'load vfio_iommu_type1');
    } finally {
      container.close();
    }
  } catch (error) {
    report.type1 = openFailure('/dev/vfio/vfio', error);
  }
  try {
    fs.closeSync(fs.openSync('/dev/iommu', 'r+'));
    report.iommufd = devices.some((d) => d.cdev) || devices.length === 0
      ? { ok: true }
      : missing('no vfio-pci device has a VFIO cdev', 'a kernel with CONFIG_VFIO_DEVICE_CDEV');
  } catch (error) {
    report.iommufd = openFailure('/dev/iommu', error);
  }
}

/** type1's per-container mapping limit (vfio_iommu_type1 dma_entry_limit), if readable. */
export function readDmaEntryLimit(): number | undefined {
  try {
    return Number(fs.readFileSync('/sys/module/vfio_iommu_type1/parameters/dma_entry_limit', 'utf8').trim());
  } catch {
    return undefined;
  }
}

/**
 * What this host supports for confidential-VM memory work, each missing piece with why and the
 * fix. Never throws: without the addon it says so.
 */
export function probe(): ProbeReport {
  const report = {} as ProbeReport;
  if (!nativeAvailable()) {
    let why = 'unknown';
    try {
      native();
    } catch (error) {
      why = errorWhy(error);
    }
    const feature = missing(why, 'install a C++ compiler, python3 and make, then `npm rebuild guestmem` (in a checkout: `npm run build:native`)');
    return {
      nativeAddon: feature, kvm: feature, privateMemoryVm: { ...feature, types: [] }, swProtectedVm: feature,
      snpVm: { ...feature, vmTypeBit: false, moduleParameter: null, sevDevice: 'unusable' }, tdxVm: { ...feature, vmTypeBit: false, moduleParameter: null }, guestMemfd: feature, userMemory2: feature,
      memoryAttributes: feature, guestMemfdFlags: feature, preFaultMemory: feature, iommuGroups: { ...feature, count: 0 }, vfioDevices: { ...feature, devices: [] },
      type1: feature, iommufd: feature,
    };
  }
  report.nativeAddon = { ok: true };
  probeKvm(report);
  probeVfio(report);
  return report;
}

/** The capabilities a test or command can require by name. */
export type Capability =
  | 'kvm' | 'private-memory-vm' | 'sw-protected-vm' | 'snp-vm' | 'tdx-vm' | 'guest-memfd' | 'memory-attributes' | 'pre-fault'
  | 'iommu' | 'vfio' | 'vfio-type1' | 'iommufd' | 'vfio-device';

export const CAPABILITIES: readonly Capability[] = [
  'kvm', 'private-memory-vm', 'sw-protected-vm', 'snp-vm', 'tdx-vm', 'guest-memfd', 'memory-attributes', 'pre-fault',
  'iommu', 'vfio', 'vfio-type1', 'iommufd', 'vfio-device',
];

/** Whether the host can create a VM of this type (KVM_CAP_VM_TYPES), with why-not and the fix. */
export function vmTypeFeature(report: ProbeReport, type: VmType | number): Feature {
  if (!report.kvm.ok) return report.kvm;
  const mask = report.kvm.vmTypesMask ?? 0;
  if (maskHasVmType(mask, type)) return { ok: true };
  return missing(`${describeVmTypesMask(mask)}: no ${vmTypeName(type)} VMs`, vmTypeFix(type));
}

export function capabilityFeature(report: ProbeReport, capability: Capability): Feature {
  switch (capability) {
    case 'kvm': return report.kvm;
    case 'private-memory-vm': return report.privateMemoryVm;
    case 'sw-protected-vm': return report.swProtectedVm;
    case 'snp-vm': return report.snpVm;
    case 'tdx-vm': return report.tdxVm;
    case 'pre-fault': return report.preFaultMemory;
    case 'iommu': return report.iommuGroups;
    case 'vfio': return !report.vfioDevices.ok ? report.vfioDevices : report.iommufd.ok || report.type1.ok ? { ok: true } : report.type1;
    case 'guest-memfd': return report.guestMemfd;
    case 'memory-attributes': return report.memoryAttributes;
    case 'vfio-type1': return report.type1.ok ? report.vfioDevices : report.type1;
    case 'iommufd': return report.iommufd.ok ? report.vfioDevices : report.iommufd;
    case 'vfio-device': return report.vfioDevices;
  }
}
