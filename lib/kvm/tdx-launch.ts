// The launch of a TDX VM (Documentation/virt/kvm/x86/intel-tdx.rst), after KVM_TDX_INIT_VM:
// each vCPU gets its CPUID (KVM_SET_CPUID2, which the TDX module needs first) and then
// KVM_TDX_INIT_VCPU (its initial RCX); the initial memory is copied into private pages (and
// measured) with KVM_TDX_INIT_MEM_REGION, a vCPU ioctl, so after a vCPU is initialised; then
// KVM_TDX_FINALIZE_VM, once, after every vCPU is initialised. A TD's registers are the TDX
// module's: the vCPUs start at the reset vector, not where KVM_SET_REGS would put them.

import { CPUID_ENTRY_BYTES } from './vm-init';
import { invalidArgType, outOfRange } from '../common/errors';
import { checkRegion, ConfidentialLaunch, launchFailure, launchOrderError, nativeLaunchCalls, type LaunchCalls, type LaunchRegion, type PrivateMemoryCheck } from './vm-launch';

const PAGE = 4096n;
const TDX_FIX = 'check the TDX module (dmesg | grep -i tdx)';

/** The launch of one TDX VM; see the file's comment for the order it keeps. */
export class TdxLaunch extends ConfidentialLaunch {
  /** The VM type. */
  readonly kind = 'tdx';
  protected readonly endStep = 'KVM_TDX_FINALIZE_VM';

  /** The launch of the TD `vmFd`, which KVM_TDX_INIT_VM initialised: building from the start. */
  constructor(vmFd: number, calls: LaunchCalls = nativeLaunchCalls()) {
    super(vmFd, calls);
    this.stage = 'building';
  }

  /** KVM_SET_CPUID2 with `cpuid`, then KVM_TDX_INIT_VCPU with `rcx` (the guest finds it in RCX). */
  initVcpu(vcpuFd: number, cpuid: Uint8Array, rcx = 0n): void {
    this.requireBuilding('KVM_TDX_INIT_VCPU');
    this.requireCreated('KVM_TDX_INIT_VCPU', vcpuFd);
    if (!(cpuid instanceof Uint8Array)) throw invalidArgType(`cpuid must be a Uint8Array of kvm_cpuid_entry2 records, got ${typeof cpuid}`);
    if (cpuid.length % CPUID_ENTRY_BYTES !== 0) throw outOfRange(`cpuid must hold whole ${CPUID_ENTRY_BYTES}-byte records, got ${cpuid.length} bytes`);
    if (typeof rcx !== 'bigint') throw invalidArgType(`rcx must be a bigint, got ${typeof rcx}`);
    if (rcx < 0n || rcx >= 1n << 64n) throw outOfRange(`rcx must fit in 64 bits unsigned, got ${rcx}`);
    try {
      this.calls.setCpuid(vcpuFd, cpuid);
    } catch (error) {
      throw launchFailure('KVM_SET_CPUID2 on a TD vCPU', error, 'a TD takes only CPUID values its configuration allows (KVM_TDX_GET_CPUID shows them)');
    }
    try {
      this.calls.tdxInitVcpu(vcpuFd, rcx);
    } catch (error) {
      throw launchFailure('KVM_TDX_INIT_VCPU', error, TDX_FIX);
    }
    this.vcpus.set(vcpuFd, 'ready');
  }

  /** KVM_TDX_INIT_MEM_REGION through an initialised vCPU: copies the region into private pages, measured unless `measure` is false. */
  measure(region: LaunchRegion, isPrivate: PrivateMemoryCheck): void {
    this.requireBuilding('KVM_TDX_INIT_MEM_REGION');
    const vcpu = [...this.vcpus].find(([, state]) => state === 'ready')?.[0];
    if (vcpu === undefined) throw launchOrderError('KVM_TDX_INIT_MEM_REGION before any vCPU is initialised (it is a vCPU ioctl): initialise a vCPU first');
    const checked = checkRegion(region, isPrivate);
    try {
      this.calls.tdxInitMemRegion(vcpu, checked.source, checked.gpa, checked.size / PAGE, checked.measure);
    } catch (error) {
      throw launchFailure('KVM_TDX_INIT_MEM_REGION', error, `${TDX_FIX}; the pages must be private, in a guest_memfd memslot, and not added before`);
    }
    this.measuredBytes += checked.size;
  }

  /** KVM_TDX_FINALIZE_VM, once, after every vCPU is initialised. */
  finish(): void {
    this.requireAllReady();
    try {
      this.calls.tdxFinalizeVm(this.vmFd);
    } catch (error) {
      throw launchFailure('KVM_TDX_FINALIZE_VM', error, TDX_FIX);
    }
    this.stage = 'finished';
  }
}
