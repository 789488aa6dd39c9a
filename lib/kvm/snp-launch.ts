// The launch of an SEV-SNP VM (Documentation/virt/kvm/x86/amd-memory-encryption.rst), after
// KVM_SEV_INIT2: SNP_LAUNCH_START when the VM is created; SNP_LAUNCH_UPDATE for each region
// the guest starts with (private in KVM's attributes, backed by guest_memfd: the firmware
// copies and measures it there); the vCPUs created and their registers set; then
// SNP_LAUNCH_FINISH, once, which encrypts and measures each vCPU's VMSA. Each command names an
// open /dev/sev, and KVM keeps the one LAUNCH_START was given for the firmware commands the
// running guest causes, so the launch keeps /dev/sev open until its VM closes.
//
// SNP_LAUNCH_UPDATE may stop early and says how far it got; the launch calls it again with
// what is left. A failure before its first page comes back as EIO, whatever the cause: the
// kernel turns every error of kvm_gmem_populate into -EIO (sev.c, snp_launch_update), a
// pending signal's -EINTR included, so EIO with no firmware status is tried again, a few
// times: the same call after a signal succeeds, and after a lasting refusal (a page not
// private, measured already) fails the same way at no cost, since nothing was done.

import { GuestmemError, invalidArgType, outOfRange } from '../common/errors';
import { checkRegion, ConfidentialLaunch, launchFailure, launchOrderError, nativeLaunchCalls, SNP_PAGE_TYPES, type LaunchCalls, type LaunchRegion, type PrivateMemoryCheck } from './vm-launch';

/** Guest policy bit 17: reserved, must be one. */
export const SNP_POLICY_RESERVED_ONE = 1n << 17n;
/** Guest policy bit 16: the guest may run with SMT on (the firmware refuses a launch without it on an SMT host). */
export const SNP_POLICY_SMT = 1n << 16n;
/** The policy guestmem launches with: no debugging, no migration agent, SMT allowed, ABI 0.0 or later. */
export const SNP_DEFAULT_POLICY = SNP_POLICY_RESERVED_ONE | SNP_POLICY_SMT;
/** SNP_LAUNCH_UPDATE calls in a row that may end in EIO without a firmware status before giving up. */
export const SNP_UPDATE_ATTEMPTS = 8;

const FIRMWARE_FIX = 'check the SEV firmware (dmesg | grep -i sev) and the guest policy';

function sevDeviceFailure(error: unknown): Error {
  const e = error as NodeJS.ErrnoException;
  return new GuestmemError(
    'ERR_GUESTMEM_LAUNCH_FAILED',
    `an SNP launch needs /dev/sev open for its firmware commands, but opening it failed: ${e.message ?? String(error)}; fix: load ccp, run as root or join the group that owns /dev/sev`,
    { cause: error, errno: e.errno, syscall: e.syscall ?? 'open' },
  );
}

/** EIO and no firmware status: the kernel's answer for any failure before the firmware ran. */
function isEioWithoutFirmwareStatus(error: unknown): boolean {
  const e = error as { code?: unknown; firmwareError?: unknown } | null;
  return e?.code === 'EIO' && (e.firmwareError === undefined || e.firmwareError === 0n);
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
    const type = SNP_PAGE_TYPES[checked.snpType];
    let left = { gpa: checked.gpa, source: checked.snpType === 'zero' ? 0n : checked.source, size: checked.size };
    let failures = 0;
    while (left.size > 0n) {
      let next: typeof left;
      try {
        next = this.calls.snpLaunchUpdate(this.vmFd, this.#sevFd, left.gpa, left.source, left.size, type);
      } catch (error) {
        if (isEioWithoutFirmwareStatus(error) && ++failures < SNP_UPDATE_ATTEMPTS) continue;
        const done = checked.size - left.size;
        const progress = done > 0n ? `; [0x${checked.gpa.toString(16)}, +0x${done.toString(16)}) was measured before it` : '';
        const eio = isEioWithoutFirmwareStatus(error) ? `; EIO with no firmware status ${failures} times in a row (the kernel reports every failure before the firmware as EIO: a pending signal, a page not private or measured already, no memory)` : '';
        throw launchFailure('KVM_SEV_SNP_LAUNCH_UPDATE', error, `${FIRMWARE_FIX}; the pages must be private, in a guest_memfd memslot, and not measured before${eio}${progress}`);
      }
      if (next.size >= left.size) throw launchFailure('KVM_SEV_SNP_LAUNCH_UPDATE', new Error(`the kernel reported success but ${next.size} of ${left.size} bytes left`), 'a kernel bug: the call made no progress');
      this.measuredBytes += left.size - next.size;
      left = next;
      failures = 0;
    }
  }

  /** vCPU `id`'s CPUID and registers are set: LAUNCH_FINISH may now encrypt and measure its VMSA. */
  vcpuReady(id: number): void {
    this.requireBuilding('marking a vCPU ready');
    this.requireCreated('marking a vCPU ready', id);
    this.vcpus.get(id)!.state = 'ready';
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
