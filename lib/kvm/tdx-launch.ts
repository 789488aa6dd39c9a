// The launch of a TDX VM (Documentation/virt/kvm/x86/intel-tdx.rst), after KVM_TDX_INIT_VM:
// each vCPU gets its CPUID (KVM_SET_CPUID2, before KVM_TDX_INIT_VCPU as QEMU does it) and
// then KVM_TDX_INIT_VCPU (its initial RCX); the initial memory is copied into private pages
// (and measured) with KVM_TDX_INIT_MEM_REGION, a vCPU ioctl, so after a vCPU is initialized;
// then KVM_TDX_FINALIZE_VM, once, after every vCPU is initialized. A TD's registers are the
// TDX module's: the vCPUs start at the reset vector, not where KVM_SET_REGS would put them.
//
// A vCPU's CPUID is the TD's own (KVM_TDX_GET_CPUID) plus KVM's for the leaves KVM emulates
// (tdx-cpuid.ts): the uAPI asks that KVM_SET_CPUID2 match the TD, else KVM "may wrongly
// emulate CPUIDs or MSRs". The vCPU sub-commands never return the TDX module's status (KVM
// does not copy the command back), so their failures name the kernel log instead. FINALIZE_VM
// answers EBUSY when another SEAMCALL holds the TD (TDX_OPERAND_BUSY): tried again, bounded.

import { CPUID_ENTRY_BYTES, tdVcpuCpuid } from './tdx-cpuid';
import { invalidArgType, outOfRange } from '../common/errors';
import { checkRegion, ConfidentialLaunch, launchFailure, launchOrderError, nativeLaunchCalls, type LaunchCalls, type LaunchRegion, type PrivateMemoryCheck } from './vm-launch';

const PAGE = 4096n;
const TDX_FIX = 'check the TDX module (dmesg | grep -i tdx)';
/** Where a vCPU sub-command's TDX module status is, since the ioctl does not return it. */
const VCPU_STATUS = 'KVM returns no TDX module status for vCPU sub-commands: the kernel log has it (dmesg | grep -i tdx)';
/** KVM_TDX_FINALIZE_VM attempts while it answers EBUSY. */
export const TDX_FINALIZE_ATTEMPTS = 1000;

/** The launch of one TDX VM; see the file's comment for the order it keeps. */
export class TdxLaunch extends ConfidentialLaunch {
  /** The VM type. */
  readonly kind = 'tdx';
  protected readonly endStep = 'KVM_TDX_FINALIZE_VM';

  /** The launch of the TD `vmFd`, which KVM_TDX_INIT_VM initialized: building from the start. */
  constructor(vmFd: number, calls: LaunchCalls = nativeLaunchCalls()) {
    super(vmFd, calls);
    this.stage = 'building';
  }

  /**
   * KVM_TDX_GET_CPUID, then KVM_SET_CPUID2 with the TD's CPUID plus `kvmCpuid`'s entries for
   * the functions the TD's lacks, then KVM_TDX_INIT_VCPU with `rcx` (the guest finds it in
   * RCX), for vCPU `id`.
   */
  initVcpu(id: number, kvmCpuid: Uint8Array, rcx = 0n): void {
    this.requireBuilding('KVM_TDX_INIT_VCPU');
    const fd = this.requireCreated('KVM_TDX_INIT_VCPU', id);
    if (!(kvmCpuid instanceof Uint8Array)) throw invalidArgType(`cpuid must be a Uint8Array of kvm_cpuid_entry2 records, got ${typeof kvmCpuid}`);
    if (kvmCpuid.length % CPUID_ENTRY_BYTES !== 0) throw outOfRange(`cpuid must hold whole ${CPUID_ENTRY_BYTES}-byte records, got ${kvmCpuid.length} bytes`);
    if (typeof rcx !== 'bigint') throw invalidArgType(`rcx must be a bigint, got ${typeof rcx}`);
    if (rcx < 0n || rcx >= 1n << 64n) throw outOfRange(`rcx must fit in 64 bits unsigned, got ${rcx}`);
    let tdCpuid: Uint8Array;
    try {
      tdCpuid = this.calls.tdxGetCpuid(fd);
    } catch (error) {
      throw launchFailure('KVM_TDX_GET_CPUID', error, `${VCPU_STATUS}; the TD's CPUID is readable once KVM_TDX_INIT_VM is done`);
    }
    try {
      this.calls.setCpuid(fd, tdVcpuCpuid(tdCpuid, kvmCpuid));
    } catch (error) {
      throw launchFailure('KVM_SET_CPUID2 on a TD vCPU', error, 'a TD takes only CPUID values its configuration allows (KVM_TDX_GET_CPUID shows them)');
    }
    try {
      this.calls.tdxInitVcpu(fd, rcx);
    } catch (error) {
      throw launchFailure('KVM_TDX_INIT_VCPU', error, VCPU_STATUS);
    }
    this.vcpus.get(id)!.state = 'ready';
  }

  /** KVM_TDX_INIT_MEM_REGION through an initialized vCPU: copies the region into private pages, measured unless `measure` is false. */
  measure(region: LaunchRegion, isPrivate: PrivateMemoryCheck): void {
    this.requireBuilding('KVM_TDX_INIT_MEM_REGION');
    const fd = [...this.vcpus.values()].find((v) => v.state === 'ready' && v.fd !== null)?.fd;
    if (fd === undefined || fd === null) throw launchOrderError('KVM_TDX_INIT_MEM_REGION before any vCPU is initialized (it is a vCPU ioctl): initialize a vCPU first');
    const checked = checkRegion(region, isPrivate);
    try {
      this.calls.tdxInitMemRegion(fd, checked.source, checked.gpa, checked.size / PAGE, checked.measure);
    } catch (error) {
      throw launchFailure('KVM_TDX_INIT_MEM_REGION', error, `${VCPU_STATUS}; the pages must be private, in a guest_memfd memslot, and not added before`);
    }
    this.measuredBytes += checked.size;
  }

  /** KVM_TDX_FINALIZE_VM, once, after every vCPU is initialized; EBUSY tried again up to TDX_FINALIZE_ATTEMPTS times. */
  finish(): void {
    this.requireAllReady();
    for (let attempt = 1; ; attempt++) {
      try {
        this.calls.tdxFinalizeVm(this.vmFd);
        break;
      } catch (error) {
        const busy = (error as { code?: unknown } | null)?.code === 'EBUSY';
        if (busy && attempt < TDX_FINALIZE_ATTEMPTS) continue;
        throw launchFailure('KVM_TDX_FINALIZE_VM', error, busy ? `${TDX_FIX}; the TD stayed busy (TDX_OPERAND_BUSY) through ${TDX_FINALIZE_ATTEMPTS} attempts` : TDX_FIX);
      }
    }
    this.stage = 'finished';
  }
}
