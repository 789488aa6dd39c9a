// What an SEV-SNP or TDX VM needs between KVM_CREATE_VM and its first memslot or vCPU,
// done by Kvm.createVm for those types (other types need nothing):
//
// - SNP (Documentation/virt/kvm/x86/amd-memory-encryption.rst): KVM_MEMORY_ENCRYPT_OP with
//   KVM_SEV_INIT2 (struct kvm_sev_init). GHCB protocol 2, which SNP guests need (version 1
//   has no page-state change requests); no extra VMSA features: KVM adds SNP's own. INIT2
//   issues no firmware command through /dev/sev (sev_guest_init2 never reads
//   kvm_sev_cmd.sev_fd); the fd matters from SNP_LAUNCH_START on, which stores it for the
//   VM's life (snp-launch.ts).
// - TDX (Documentation/virt/kvm/x86/intel-tdx.rst, Linux 6.16+): KVM_TDX_CAPABILITIES; a
//   split irqchip (KVM refuses a TD vCPU without one: the TDX module mandates APICv, which
//   needs an in-kernel LAPIC, and KVM cannot emulate an in-kernel I/O APIC for a TD) with
//   QEMU's 24 reserved I/O APIC pins, and the LAPIC bus cycle of 40 ns (25 MHz, the core
//   crystal clock the TD's CPUID 0x15 reports), as QEMU does; then KVM_TDX_INIT_VM with the
//   CPUID configuration and XFAM of tdx-cpuid.ts, TD attributes SEPT_VE_DISABLE where
//   supported (QEMU's default). INIT_VM fails with EAGAIN while the TDX module finds no
//   entropy (TDX_RND_NO_ENTROPY): retried up to 10,000 times, as QEMU does.
//
// The launch that follows (SNP_LAUNCH_*, TDX_INIT_VCPU, TDX_INIT_MEM_REGION,
// TDX_FINALIZE_VM) is vm-launch.ts's; attestation is out of scope. The calls go through
// ConfidentialInitCalls so that their order is tested with a stand-in.

import { GuestmemError } from '../common/errors';
import { native } from '../common/native';
import { KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X86_APIC_BUS_CYCLES_NS, VM_TYPES } from './kvm-constants';
import { CPUID_ENTRY_BYTES, tdxCpuidConfiguration, tdxXfam, TDX_XFAM_FIXED } from './tdx-cpuid';

export { CPUID_ENTRY_BYTES, tdxCpuidConfiguration, tdxXfam, TDX_XFAM_FIXED };

/** TDX_TD_ATTR_SEPT_VE_DISABLE: EPT violations on private pages exit to the host, not #VE. */
export const TDX_ATTR_SEPT_VE_DISABLE = 1n << 28n;
export const SNP_GHCB_VERSION = 2;
/** The I/O APIC pins a split irqchip reserves for userspace: QEMU's (KVM_IRQCHIP_NUM_PINS). */
export const TDX_IOAPIC_PINS = 24;
/** The TD's LAPIC bus cycle in ns: 25 MHz, the crystal clock TDX reports in CPUID 0x15 (QEMU's TDX_APIC_BUS_CYCLES_NS). */
export const TDX_APIC_BUS_CYCLES_NS = 40;
/** KVM_TDX_INIT_VM attempts while it answers EAGAIN (TDX_RND_NO_ENTROPY): QEMU's bound. */
export const TDX_INIT_VM_ATTEMPTS = 10_000;

export interface TdxCapabilities {
  supportedAttributes: bigint;
  supportedXfam: bigint;
  /** kvm_cpuid_entry2 records: the configurable bits of each leaf. */
  cpuid: Uint8Array;
}

/** The system calls the initialization makes; the addon's by default, a stand-in in tests. */
export interface ConfidentialInitCalls {
  sevInit2(vmFd: number, vmsaFeatures: bigint, ghcbVersion: number): void;
  tdxCapabilities(vmFd: number): TdxCapabilities;
  supportedCpuid(kvmFd: number): Uint8Array;
  /** KVM_CHECK_EXTENSION on the VM. */
  checkExtension(vmFd: number, capability: number): number;
  /** KVM_ENABLE_CAP on the VM with args[0] = arg0. */
  enableCap(vmFd: number, capability: number, arg0: bigint): void;
  tdxInitVm(vmFd: number, attributes: bigint, xfam: bigint, cpuid: Uint8Array): void;
}

export function nativeInitCalls(): ConfidentialInitCalls {
  return {
    sevInit2: (vmFd, vmsaFeatures, ghcbVersion) => native().kvmSevInit2(vmFd, vmsaFeatures, ghcbVersion),
    tdxCapabilities: (vmFd) => native().kvmTdxCapabilities(vmFd),
    supportedCpuid: (kvmFd) => native().kvmGetSupportedCpuid(kvmFd),
    checkExtension: (vmFd, capability) => native().kvmCheckExtension(vmFd, capability),
    enableCap: (vmFd, capability, arg0) => native().kvmEnableCap(vmFd, capability, arg0),
    tdxInitVm: (vmFd, attributes, xfam, cpuid) => native().kvmTdxInitVm(vmFd, attributes, xfam, cpuid),
  };
}

/** What was done to the VM after KVM_CREATE_VM. */
export type VmInitialization =
  | { kind: 'none' }
  | { kind: 'snp'; ghcbVersion: number; vmsaFeatures: bigint }
  | { kind: 'tdx'; attributes: bigint; xfam: bigint; cpuidEntries: number; ioapicPins: number; apicBusCycleNs: number; initVmAttempts: number };

/**
 * An initialization step failed: one line that names the step, the kernel's error (and the
 * firmware's or TDX module's status) and what to check; errno/code/syscall kept.
 */
function initFailure(step: string, error: unknown, fix: string): Error {
  const e = error as NodeJS.ErrnoException & { firmwareError?: bigint; hwError?: bigint };
  const status = e.firmwareError !== undefined ? `, SEV firmware error ${e.firmwareError}` : e.hwError !== undefined ? `, TDX module status 0x${e.hwError.toString(16)}` : '';
  return new GuestmemError(
    'ERR_GUESTMEM_UNSUPPORTED',
    `${step} failed: ${e.message ?? String(error)}${status}; ${fix}`,
    { cause: error, errno: e.errno, syscall: e.syscall, firmwareError: e.firmwareError, hwError: e.hwError },
  );
}

function initSnp(vmFd: number, calls: ConfidentialInitCalls): VmInitialization {
  try {
    calls.sevInit2(vmFd, 0n, SNP_GHCB_VERSION);
  } catch (error) {
    throw initFailure('KVM_SEV_INIT2', error, 'check that SEV-SNP is enabled (kvm_amd sev_snp=Y) and the SEV firmware is initialized (dmesg | grep -i sev)');
  }
  return { kind: 'snp', ghcbVersion: SNP_GHCB_VERSION, vmsaFeatures: 0n };
}

/** The in-kernel LAPIC a TD needs, before any vCPU: a split irqchip, then the LAPIC bus cycle. */
function tdxIrqchip(vmFd: number, calls: ConfidentialInitCalls): void {
  try {
    calls.enableCap(vmFd, KVM_CAP_SPLIT_IRQCHIP, BigInt(TDX_IOAPIC_PINS));
  } catch (error) {
    throw initFailure('KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)', error, 'a TD needs a split irqchip (KVM refuses its vCPUs without one); enable it before any vCPU is created');
  }
  // The capability needs an in-kernel LAPIC (ENXIO otherwise): hence after the irqchip.
  if (calls.checkExtension(vmFd, KVM_CAP_X86_APIC_BUS_CYCLES_NS) === 0) {
    throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', 'KVM_CAP_X86_APIC_BUS_CYCLES_NS is missing: a TD\'s LAPIC timer must run at the 25 MHz its CPUID 0x15 reports (Linux 6.11+)');
  }
  try {
    calls.enableCap(vmFd, KVM_CAP_X86_APIC_BUS_CYCLES_NS, BigInt(TDX_APIC_BUS_CYCLES_NS));
  } catch (error) {
    throw initFailure('KVM_ENABLE_CAP(KVM_CAP_X86_APIC_BUS_CYCLES_NS)', error, 'set the LAPIC bus cycle before any vCPU is created');
  }
}

function isCode(error: unknown, code: string): boolean {
  return (error as { code?: unknown } | null)?.code === code;
}

function initTdx(kvmFd: number, vmFd: number, calls: ConfidentialInitCalls): VmInitialization {
  let caps: TdxCapabilities;
  try {
    caps = calls.tdxCapabilities(vmFd);
  } catch (error) {
    throw initFailure('KVM_TDX_CAPABILITIES', error, 'a Linux 6.16+ kernel with kvm_intel tdx=Y and an initialized TDX module (dmesg | grep -i tdx)');
  }
  tdxIrqchip(vmFd, calls);
  const attributes = caps.supportedAttributes & TDX_ATTR_SEPT_VE_DISABLE;
  const supported = calls.supportedCpuid(kvmFd);
  const xfam = tdxXfam(caps.supportedXfam, supported);
  const cpuid = tdxCpuidConfiguration(caps.cpuid, supported, xfam);
  for (let attempt = 1; ; attempt++) {
    try {
      calls.tdxInitVm(vmFd, attributes, xfam, cpuid);
      return { kind: 'tdx', attributes, xfam, cpuidEntries: cpuid.length / CPUID_ENTRY_BYTES, ioapicPins: TDX_IOAPIC_PINS, apicBusCycleNs: TDX_APIC_BUS_CYCLES_NS, initVmAttempts: attempt };
    } catch (error) {
      // EAGAIN: the TDX module found no entropy (TDX_RND_NO_ENTROPY) and undid its step.
      if (isCode(error, 'EAGAIN') && attempt < TDX_INIT_VM_ATTEMPTS) continue;
      const fix = isCode(error, 'EAGAIN')
        ? `the TDX module had no entropy in ${TDX_INIT_VM_ATTEMPTS} attempts: the CPU's random number generator (RDRAND/RDSEED) is kept busy by someone else`
        : 'the TDX module refused the TD configuration; compare KVM_TDX_CAPABILITIES with the configuration (GUESTMEM_DEBUG=1 prints the stack)';
      throw initFailure('KVM_TDX_INIT_VM', error, fix);
    }
  }
}

/** Initializes a just-created VM of type `type`, as that type requires before anything else. */
export function initializeVm(type: number, fds: { kvm: number; vm: number }, calls: ConfidentialInitCalls = nativeInitCalls()): VmInitialization {
  if (type === VM_TYPES.snp) return initSnp(fds.vm, calls);
  if (type === VM_TYPES.tdx) return initTdx(fds.kvm, fds.vm, calls);
  return { kind: 'none' };
}
