// The launch of an SEV-SNP VM (Documentation/virt/kvm/x86/amd-memory-encryption.rst), after
// KVM_SEV_INIT2: SNP_LAUNCH_START when the VM is created; SNP_LAUNCH_UPDATE for each region
// the guest starts with (private in KVM's attributes, backed by guest_memfd: the firmware
// copies and measures it there); the vCPUs created and their registers set; then
// SNP_LAUNCH_FINISH, once, which encrypts and measures each vCPU's VMSA. Each command names an
// open /dev/sev, and KVM keeps the one LAUNCH_START was given for the firmware commands the
// running guest causes, so the launch keeps /dev/sev open until its VM closes.

import { GuestmemError, invalidArgType, outOfRange } from '../common/errors';
import { checkRegion, ConfidentialLaunch, launchFailure, launchOrderError, nativeLaunchCalls, SNP_PAGE_TYPES, type LaunchCalls, type LaunchRegion, type PrivateMemoryCheck } from './vm-launch';

/** Guest policy bit 17: reserved, must be one. */
export const SNP_POLICY_RESERVED_ONE = 1n << 17n;
/** Guest policy bit 16: the guest may run with SMT on (the firmware refuses a launch without it on an SMT host). */
export const SNP_POLICY_SMT = 1n << 16n;
/** The policy guestmem launches with: no debugging, no migration agent, SMT allowed, ABI 0.0 or later. */
export const SNP_DEFAULT_POLICY = SNP_POLICY_RESERVED_ONE | SNP_POLICY_SMT;

const FIRMWARE_FIX = 'check the SEV firmware (dmesg | grep -i sev) and the guest policy';

function sevDeviceFailure(error: unknown): Error {
  const e = error as NodeJS.ErrnoException;
  return Object.assign(
    new GuestmemError('ERR_GUESTMEM_LAUNCH_FAILED', `an SNP launch needs /dev/sev open for its firmware commands, but opening it failed: ${e.message ?? String(error)}; fix: load ccp, run as root or join the group that owns /dev/sev`, { cause: error }),
    { errno: e.errno, syscall: e.syscall ?? 'open' },
  );
}

/** The launch of one SEV-SNP VM; see the file's comment for the order it keeps. */
export class SnpLaunch extends ConfidentialLaunch {
  /** The VM type. */
  readonly kind = 'snp';
  protected readonly endStep = 'KVM_SEV_SNP_LAUNCH_FINISH';
  /** The guest policy LAUNCH_START was given. */
  readonly policy: bigint;
  #sevFd = -1;

  /** A launch of the SNP VM `vmFd` (after KVM_SEV_INIT2), not started yet. */
  constructor(vmFd: number, calls: LaunchCalls = nativeLaunchCalls(), policy: bigint = SNP_DEFAULT_POLICY) {
    super(vmFd, calls);
    if (typeof policy !== 'bigint') throw invalidArgType(`policy must be a bigint, got ${typeof policy}`);
    if (policy < 0n || policy >= 1n << 64n) throw outOfRange(`policy must fit in 64 bits unsigned, got ${policy}`);
    if ((policy & SNP_POLICY_RESERVED_ONE) === 0n) throw outOfRange('policy bit 17 must be set (the firmware requires it)');
    this.policy = policy;
  }

  /** KVM_SEV_SNP_LAUNCH_START: opens /dev/sev and creates the guest's context in the firmware. */
  start(): void {
    if (this.stage !== 'new') throw launchOrderError('KVM_SEV_SNP_LAUNCH_START twice: the launch has started already');
    let sevFd: number;
    try {
      sevFd = this.calls.openSevDevice();
    } catch (error) {
      throw sevDeviceFailure(error);
    }
    try {
      this.calls.snpLaunchStart(this.vmFd, sevFd, this.policy);
    } catch (error) {
      // The launch's failure is the news; a close that fails too must not replace it.
      try {
        this.calls.closeFd(sevFd);
      } catch {
        // The fd is gone or broken either way.
      }
      throw launchFailure('KVM_SEV_SNP_LAUNCH_START', error, `${FIRMWARE_FIX} (policy 0x${this.policy.toString(16)})`);
    }
    this.#sevFd = sevFd;
    this.stage = 'building';
  }

  /** KVM_SEV_SNP_LAUNCH_UPDATE: copies the region's bytes into its private pages and measures them. */
  measure(region: LaunchRegion, isPrivate: PrivateMemoryCheck): void {
    this.requireBuilding('KVM_SEV_SNP_LAUNCH_UPDATE');
    const checked = checkRegion(region, isPrivate);
    const source = checked.snpType === 'zero' ? 0n : checked.source;
    try {
      this.calls.snpLaunchUpdate(this.vmFd, this.#sevFd, checked.gpa, source, checked.size, SNP_PAGE_TYPES[checked.snpType]);
    } catch (error) {
      throw launchFailure('KVM_SEV_SNP_LAUNCH_UPDATE', error, `${FIRMWARE_FIX}; the pages must be private, in a guest_memfd memslot, and not measured before`);
    }
    this.measuredBytes += checked.size;
  }

  /** The vCPU's CPUID and registers are set: LAUNCH_FINISH may now encrypt and measure its VMSA. */
  vcpuReady(vcpuFd: number): void {
    this.requireBuilding('marking a vCPU ready');
    this.requireCreated('marking a vCPU ready', vcpuFd);
    this.vcpus.set(vcpuFd, 'ready');
  }

  /** KVM_SEV_SNP_LAUNCH_FINISH, once, after every vCPU is ready. */
  finish(): void {
    this.requireAllReady();
    try {
      this.calls.snpLaunchFinish(this.vmFd, this.#sevFd);
    } catch (error) {
      throw launchFailure('KVM_SEV_SNP_LAUNCH_FINISH', error, FIRMWARE_FIX);
    }
    this.stage = 'finished';
  }

  /** Closes /dev/sev (with the VM: KVM uses it for as long as the guest runs). */
  close(): void {
    if (this.#sevFd < 0) return;
    const fd = this.#sevFd;
    this.#sevFd = -1;
    this.calls.closeFd(fd);
  }
}
