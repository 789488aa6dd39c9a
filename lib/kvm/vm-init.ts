// What an SEV-SNP or TDX VM needs between KVM_CREATE_VM and its first memslot or vCPU,
// done by Kvm.createVm for those types (other types need nothing):
//
// - SNP (Documentation/virt/kvm/x86/amd-memory-encryption.rst): KVM_MEMORY_ENCRYPT_OP with
//   KVM_SEV_INIT2 (struct kvm_sev_init), authorised by an open /dev/sev. GHCB protocol 2,
//   which SNP guests need (version 1 has no page-state change requests); no extra VMSA
//   features: KVM adds SNP's own.
// - TDX (Documentation/virt/kvm/x86/intel-tdx.rst, Linux 6.16+): KVM_TDX_CAPABILITIES, then
//   KVM_TDX_INIT_VM with a CPUID configuration that names only leaves the capabilities list,
//   each value being KVM's supported CPUID masked by the configurable bits (as QEMU's
//   tdx_filter_cpuid does); TD attributes SEPT_VE_DISABLE where supported (QEMU's default),
//   XFAM x87|SSE (the bits the TDX module fixes to 1).
//
// The launch that follows (SNP_LAUNCH_*, TDX_INIT_VCPU, TDX_INIT_MEM_REGION,
// TDX_FINALIZE_VM) is vm-launch.ts's; attestation is out of scope. The calls go through
// ConfidentialInitCalls so that their order is tested with a stand-in.

import fs from 'node:fs';
import { GuestmemError } from '../common/errors';
import { native } from '../common/native';
import { VM_TYPES } from './kvm-constants';

export const CPUID_ENTRY_BYTES = 40;
const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;
/** TDX_TD_ATTR_SEPT_VE_DISABLE: EPT violations on private pages exit to the host, not #VE. */
export const TDX_ATTR_SEPT_VE_DISABLE = 1n << 28n;
/** XFAM bits 0 (x87) and 1 (SSE): fixed to 1 by the TDX module. */
export const TDX_XFAM_FIXED = 0x3n;
export const SNP_GHCB_VERSION = 2;

export interface TdxCapabilities {
  supportedAttributes: bigint;
  supportedXfam: bigint;
  /** kvm_cpuid_entry2 records: the configurable bits of each leaf. */
  cpuid: Uint8Array;
}

/** The system calls the initialisation makes; the addon's by default, a stand-in in tests. */
export interface ConfidentialInitCalls {
  openSevDevice(): number;
  closeFd(fd: number): void;
  sevInit2(vmFd: number, sevFd: number, vmsaFeatures: bigint, ghcbVersion: number): void;
  tdxCapabilities(vmFd: number): TdxCapabilities;
  supportedCpuid(kvmFd: number): Uint8Array;
  tdxInitVm(vmFd: number, attributes: bigint, xfam: bigint, cpuid: Uint8Array): void;
}

export function nativeInitCalls(): ConfidentialInitCalls {
  return {
    openSevDevice: () => fs.openSync('/dev/sev', 'r+'),
    closeFd: (fd) => fs.closeSync(fd),
    sevInit2: (vmFd, sevFd, vmsaFeatures, ghcbVersion) => native().kvmSevInit2(vmFd, sevFd, vmsaFeatures, ghcbVersion),
    tdxCapabilities: (vmFd) => native().kvmTdxCapabilities(vmFd),
    supportedCpuid: (kvmFd) => native().kvmGetSupportedCpuid(kvmFd),
    tdxInitVm: (vmFd, attributes, xfam, cpuid) => native().kvmTdxInitVm(vmFd, attributes, xfam, cpuid),
  };
}

/** What was done to the VM after KVM_CREATE_VM. */
export type VmInitialisation =
  | { kind: 'none' }
  | { kind: 'snp'; ghcbVersion: number; vmsaFeatures: bigint }
  | { kind: 'tdx'; attributes: bigint; xfam: bigint; cpuidEntries: number };

/**
 * An initialisation step failed: one line that names the step, the kernel's error (and the
 * firmware's or TDX module's status) and what to check; errno/code/syscall kept.
 */
function initFailure(step: string, error: unknown, fix: string): Error {
  const e = error as NodeJS.ErrnoException & { firmwareError?: bigint; hwError?: bigint };
  const status = e.firmwareError !== undefined ? `, SEV firmware error ${e.firmwareError}` : e.hwError !== undefined ? `, TDX module status 0x${e.hwError.toString(16)}` : '';
  return Object.assign(
    new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `${step} failed: ${e.message ?? String(error)}${status}; ${fix}`, { cause: error }),
    { errno: e.errno, syscall: e.syscall, firmwareError: e.firmwareError, hwError: e.hwError },
  );
}

function sevDeviceFailure(error: unknown): Error {
  const code = (error as NodeJS.ErrnoException).code;
  const why = code === 'ENOENT' ? 'there is no /dev/sev (the ccp driver has not found a PSP with SEV firmware)'
    : code === 'EACCES' || code === 'EPERM' ? 'no permission to open /dev/sev'
    : `cannot open /dev/sev: ${(error as Error).message}`;
  return Object.assign(
    new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `an SNP VM needs /dev/sev to authorise KVM_SEV_INIT2, but ${why}; fix: load ccp (and kvm_amd with sev_snp=1), run as root or join the group that owns /dev/sev`, { cause: error }),
    { errno: (error as NodeJS.ErrnoException).errno, syscall: 'open' },
  );
}

function initSnp(vmFd: number, calls: ConfidentialInitCalls): VmInitialisation {
  let sevFd: number;
  try {
    sevFd = calls.openSevDevice();
  } catch (error) {
    throw sevDeviceFailure(error);
  }
  try {
    calls.sevInit2(vmFd, sevFd, 0n, SNP_GHCB_VERSION);
  } catch (error) {
    throw initFailure('KVM_SEV_INIT2', error, 'check that SEV-SNP is enabled (kvm_amd sev_snp=Y) and the SEV firmware is initialised (dmesg | grep -i sev)');
  } finally {
    calls.closeFd(sevFd);
  }
  return { kind: 'snp', ghcbVersion: SNP_GHCB_VERSION, vmsaFeatures: 0n };
}

/**
 * The TD's CPUID: for each leaf the TDX module lets userspace configure, KVM's supported
 * value masked by the configurable bits; a leaf KVM does not report is left out (the TDX
 * module then uses its own value). Entries keep the capability's function, index and flags.
 */
export function tdxCpuidConfiguration(configurable: Uint8Array, supported: Uint8Array): Uint8Array {
  const caps = Buffer.from(configurable.buffer, configurable.byteOffset, configurable.byteLength);
  const kvm = Buffer.from(supported.buffer, supported.byteOffset, supported.byteLength);
  const find = (fn: number, index: number, indexed: boolean): number => {
    for (let at = 0; at + CPUID_ENTRY_BYTES <= kvm.length; at += CPUID_ENTRY_BYTES) {
      if (kvm.readUInt32LE(at) === fn && (!indexed || kvm.readUInt32LE(at + 4) === index)) return at;
    }
    return -1;
  };
  const out: Buffer[] = [];
  for (let at = 0; at + CPUID_ENTRY_BYTES <= caps.length; at += CPUID_ENTRY_BYTES) {
    const fn = caps.readUInt32LE(at);
    const index = caps.readUInt32LE(at + 4);
    const flags = caps.readUInt32LE(at + 8);
    const source = find(fn, index, (flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) !== 0);
    if (source < 0) continue;
    const entry = Buffer.alloc(CPUID_ENTRY_BYTES);
    entry.writeUInt32LE(fn, 0);
    entry.writeUInt32LE(index, 4);
    entry.writeUInt32LE(flags, 8);
    for (let reg = 12; reg < 28; reg += 4) entry.writeUInt32LE((kvm.readUInt32LE(source + reg) & caps.readUInt32LE(at + reg)) >>> 0, reg);
    out.push(entry);
  }
  return Buffer.concat(out);
}

function initTdx(kvmFd: number, vmFd: number, calls: ConfidentialInitCalls): VmInitialisation {
  let caps: TdxCapabilities;
  try {
    caps = calls.tdxCapabilities(vmFd);
  } catch (error) {
    throw initFailure('KVM_TDX_CAPABILITIES', error, 'a Linux 6.16+ kernel with kvm_intel tdx=Y and an initialised TDX module (dmesg | grep -i tdx)');
  }
  const attributes = caps.supportedAttributes & TDX_ATTR_SEPT_VE_DISABLE;
  const xfam = caps.supportedXfam & TDX_XFAM_FIXED;
  const cpuid = tdxCpuidConfiguration(caps.cpuid, calls.supportedCpuid(kvmFd));
  try {
    calls.tdxInitVm(vmFd, attributes, xfam, cpuid);
  } catch (error) {
    throw initFailure('KVM_TDX_INIT_VM', error, 'the TDX module refused the TD configuration; compare KVM_TDX_CAPABILITIES with the configuration (GUESTMEM_DEBUG=1 prints the stack)');
  }
  return { kind: 'tdx', attributes, xfam, cpuidEntries: cpuid.length / CPUID_ENTRY_BYTES };
}

/** Initialises a just-created VM of type `type`, as that type requires before anything else. */
export function initializeVm(type: number, fds: { kvm: number; vm: number }, calls: ConfidentialInitCalls = nativeInitCalls()): VmInitialisation {
  if (type === VM_TYPES.snp) return initSnp(fds.vm, calls);
  if (type === VM_TYPES.tdx) return initTdx(fds.kvm, fds.vm, calls);
  return { kind: 'none' };
}
