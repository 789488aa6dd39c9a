// What the launch of an SEV-SNP or TDX VM shares, whichever the type: the system calls (the
// addon's, or a stand-in in tests), the region a step measures into private memory and its
// checks, the errors, and the order every launch keeps: vCPUs are made ready one by one,
// the launch ends once, after every vCPU KVM created is ready, and nothing is measured
// after it. A step out of order is ERR_GUESTMEM_LAUNCH_ORDER before any system call; a step
// the kernel refuses is ERR_GUESTMEM_LAUNCH_FAILED in one line, keeping errno, syscall and
// the firmware's (firmwareError) or TDX module's (hwError) status.
//
// vCPUs are known by their KVM vCPU id, not by fd: KVM keeps a vCPU until its VM goes,
// whether or not its fd is still open, and an fd number, once closed, is the kernel's to
// give to anything else. A vCPU whose fd closes before it was made ready is abandoned: it
// can never run, and it does not hold the launch's end back (SNP's LAUNCH_FINISH still
// measures its VMSA, as KVM's LAUNCH_UPDATE_VMSA walks every vCPU of the VM).
//
// The order of each type is its own (snp-launch.ts, tdx-launch.ts), from the kernel's
// Documentation/virt/kvm/x86/amd-memory-encryption.rst and intel-tdx.rst.

import fs from 'node:fs';
import { checkSpan, type Bytes } from '../common/byte-range';
import { GuestmemError, invalidArgType, invalidArgValue, outOfRange } from '../common/errors';
import { native } from '../common/native';

const PAGE = 4096n;

/** SNP_LAUNCH_UPDATE's page types (the firmware's numbers). */
export const SNP_PAGE_TYPES = { normal: 1, zero: 3, unmeasured: 4, secrets: 5, cpuid: 6 } as const;
/** A page type of SNP_LAUNCH_UPDATE: measured contents, zeroes, unmeasured, secrets or CPUID page. */
export type SnpPageType = keyof typeof SNP_PAGE_TYPES;

/** The system calls of a launch; the addon's by default ({@link nativeLaunchCalls}), a stand-in in tests. */
export interface LaunchCalls {
  /** Opens /dev/sev, which authorises each SNP firmware command. */
  openSevDevice(): number;
  /** Closes an fd the launch opened. */
  closeFd(fd: number): void;
  /** KVM_SEV_SNP_LAUNCH_START with the guest policy. */
  snpLaunchStart(vmFd: number, sevFd: number, policy: bigint): void;
  /**
   * One KVM_SEV_SNP_LAUNCH_UPDATE of [gpa, gpa + size) from host address `source`: what the
   * kernel left to do (size 0: all of it done). It may stop early (a pending signal, a
   * reschedule); snp-launch.ts calls again with what is left.
   */
  snpLaunchUpdate(vmFd: number, sevFd: number, gpa: bigint, source: bigint, size: bigint, type: number): { gpa: bigint; source: bigint; size: bigint };
  /** KVM_SEV_SNP_LAUNCH_FINISH without an ID block. */
  snpLaunchFinish(vmFd: number, sevFd: number): void;
  /** KVM_SET_CPUID2 on a vCPU (raw kvm_cpuid_entry2 records). */
  setCpuid(vcpuFd: number, entries: Uint8Array): void;
  /** KVM_TDX_GET_CPUID: the CPUID the TDX module shows the TD (raw kvm_cpuid_entry2 records). */
  tdxGetCpuid(vcpuFd: number): Uint8Array;
  /** KVM_TDX_INIT_VCPU with the vCPU's initial RCX. */
  tdxInitVcpu(vcpuFd: number, rcx: bigint): void;
  /** KVM_TDX_INIT_MEM_REGION of `pages` pages at `gpa` from host address `source`, until all is done. */
  tdxInitMemRegion(vcpuFd: number, source: bigint, gpa: bigint, pages: bigint, measure: boolean): void;
  /** KVM_TDX_FINALIZE_VM. */
  tdxFinalizeVm(vmFd: number): void;
}

/** The addon's launch calls (native/confidential_launch.cc). */
export function nativeLaunchCalls(): LaunchCalls {
  return {
    openSevDevice: () => fs.openSync('/dev/sev', 'r+'),
    closeFd: (fd) => fs.closeSync(fd),
    snpLaunchStart: (vmFd, sevFd, policy) => native().kvmSevSnpLaunchStart(vmFd, sevFd, policy, undefined, 0),
    snpLaunchUpdate: (vmFd, sevFd, gpa, source, size, type) => {
      const left = native().kvmSevSnpLaunchUpdate(vmFd, sevFd, gpa, source, size, type);
      return { gpa: left.gpa, source: left.uaddr, size: left.length };
    },
    snpLaunchFinish: (vmFd, sevFd) => native().kvmSevSnpLaunchFinish(vmFd, sevFd, undefined),
    setCpuid: (vcpuFd, entries) => native().kvmSetCpuid2(vcpuFd, entries),
    tdxGetCpuid: (vcpuFd) => native().kvmTdxGetCpuid(vcpuFd),
    tdxInitVcpu: (vcpuFd, rcx) => native().kvmTdxInitVcpu(vcpuFd, rcx),
    tdxInitMemRegion: (vcpuFd, source, gpa, pages, measure) => native().kvmTdxInitMemRegion(vcpuFd, source, gpa, pages, measure),
    tdxFinalizeVm: (vmFd) => native().kvmTdxFinalizeVm(vmFd),
  };
}

/** Pages to put into the VM's private memory before it runs, copied from host memory. */
export interface LaunchRegion {
  /** Guest physical address, page-aligned. */
  gpa: Bytes;
  /** Bytes, a positive multiple of 4096. */
  size: Bytes;
  /** Host virtual address of the bytes to copy in, page-aligned (SNP 'zero' pages: ignored). */
  source: Bytes;
  /** SNP: the page type (default 'normal': copied and measured). */
  snpType?: SnpPageType;
  /** TDX: extend the TD's measurement with these pages too (default true). */
  measure?: boolean;
}

/** A region checked: page-aligned bigints. */
export interface CheckedRegion {
  gpa: bigint;
  size: bigint;
  source: bigint;
  snpType: SnpPageType;
  measure: boolean;
}

/**
 * Says whether [gpa, gpa + size) is private in KVM's memory attributes and backed by a
 * guest_memfd: null when it is, else why not (what the library knows of that memory).
 */
export type PrivateMemoryCheck = (gpa: bigint, size: bigint) => string | null;

/** A launch step out of order: nothing was called. */
export function launchOrderError(message: string): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_LAUNCH_ORDER', message);
}

/** A launch step the kernel refused: one line, the kernel's facts kept. */
export function launchFailure(step: string, error: unknown, fix: string): Error {
  const e = error as NodeJS.ErrnoException & { firmwareError?: bigint; hwError?: bigint };
  const status = e.firmwareError !== undefined ? `, SEV firmware error ${e.firmwareError}` : e.hwError !== undefined ? `, TDX module status 0x${e.hwError.toString(16)}` : '';
  return new GuestmemError(
    'ERR_GUESTMEM_LAUNCH_FAILED',
    `${step} failed: ${e.message ?? String(error)}${status}; ${fix}`,
    { cause: error, errno: e.errno, syscall: e.syscall, firmwareError: e.firmwareError, hwError: e.hwError },
  );
}

/** Checks a region's types, alignment and 64-bit bounds, then that it is private memory. */
export function checkRegion(region: LaunchRegion, isPrivate: PrivateMemoryCheck): CheckedRegion {
  if (typeof region !== 'object' || region === null) throw invalidArgType(`a launch region must be an object, got ${region === null ? 'null' : typeof region}`);
  if (typeof isPrivate !== 'function') throw invalidArgType(`the private-memory check must be a function (gpa, size) => reason | null, got ${isPrivate === null ? 'null' : typeof isPrivate}`);
  const [gpa, size] = checkSpan(region.gpa, region.size, 'launch region');
  const [source] = checkSpan(region.source, region.size, 'launch source');
  const snpType = region.snpType ?? 'normal';
  if (!Object.hasOwn(SNP_PAGE_TYPES, snpType)) throw invalidArgValue(`snpType must be one of ${Object.keys(SNP_PAGE_TYPES).join(', ')}, got ${String(snpType)}`);
  const measure = region.measure ?? true;
  if (typeof measure !== 'boolean') throw invalidArgType(`measure must be a boolean, got ${typeof measure}`);
  if (size === 0n) throw outOfRange('a launch region must hold at least one page');
  for (const [name, value] of [['gpa', gpa], ['size', size], ['source', source]] as const) {
    if (value % PAGE !== 0n) throw invalidArgValue(`the launch region's ${name} must be a multiple of 4096, got 0x${value.toString(16)}`);
  }
  const why = isPrivate(gpa, size);
  if (why !== null) throw launchOrderError(`[0x${gpa.toString(16)}, +0x${size.toString(16)}) cannot be measured into private memory: ${why}; convert it to private first`);
  return { gpa, size, source, snpType, measure };
}

/**
 * The launch of one confidential VM: its vCPUs and its end, in order. A subclass per type
 * makes the system calls.
 */
export abstract class ConfidentialLaunch {
  /** The VM type's name. */
  abstract readonly kind: 'snp' | 'tdx';
  /** Bytes measured (or copied) into private memory so far. */
  measuredBytes = 0n;
  /** True once the launch ended (SNP_LAUNCH_FINISH, TDX_FINALIZE_VM): the vCPUs may run. */
  get finished(): boolean {
    return this.stage === 'finished';
  }

  protected stage: 'new' | 'building' | 'finished' = 'new';
  /** Each vCPU KVM created for this VM, by KVM vCPU id: its fd while open, and its state. */
  protected readonly vcpus = new Map<number, { fd: number | null; state: 'created' | 'ready' }>();

  protected constructor(protected readonly vmFd: number, protected readonly calls: LaunchCalls) {}

  /** The name of the step that ends the launch, for messages. */
  protected abstract readonly endStep: string;

  /** vCPU ids whose fd closed before they were made ready: in KVM still, never to run. */
  get abandonedVcpus(): number[] {
    return [...this.vcpus].filter(([, v]) => v.state === 'created' && v.fd === null).map(([id]) => id);
  }

  /** KVM_CREATE_VCPU made vCPU `id` (fd `vcpuFd`): the launch cannot end before it is ready. */
  vcpuCreated(id: number, vcpuFd: number): void {
    if (this.stage === 'finished') throw launchOrderError(`a vCPU created after ${this.endStep} can never run: create every vCPU before the launch ends`);
    if (this.vcpus.has(id)) throw launchOrderError(`vCPU ${id} is known to this launch already: KVM gives each id once per VM`);
    this.vcpus.set(id, { fd: vcpuFd, state: 'created' });
  }

  /**
   * vCPU `id`'s fd is closing. KVM keeps the vCPU, but nothing can reach it again: one not
   * yet ready is abandoned (it no longer holds the launch's end back), and its fd number is
   * forgotten so that a later vCPU given the same number is never taken for it.
   */
  vcpuClosed(id: number): void {
    const vcpu = this.vcpus.get(id);
    if (vcpu) vcpu.fd = null;
  }

  /** Why vCPU `id` may not run yet (null: it may). Checked before each KVM_RUN. */
  runRefusal(id: number): GuestmemError | null {
    if (this.stage !== 'finished') return launchOrderError(`this ${this.kind} VM's launch has not ended (${this.endStep}): its vCPUs cannot run yet`);
    if (this.vcpus.get(id)?.state !== 'ready') return launchOrderError(`vCPU ${id} was not part of the ${this.kind} launch: only vCPUs made ready before ${this.endStep} run`);
    return null;
  }

  /** Refuses unless the launch is being built (started, not ended). */
  protected requireBuilding(step: string): void {
    if (this.stage === 'new') throw launchOrderError(`${step} before the launch started`);
    if (this.stage === 'finished') throw launchOrderError(`${step} after ${this.endStep}: nothing can be added to a launched VM`);
  }

  /** Refuses unless vCPU `id` is a vCPU of this VM, open and not yet ready; returns its fd. */
  protected requireCreated(step: string, id: number): number {
    const vcpu = this.vcpus.get(id);
    if (vcpu === undefined) throw launchOrderError(`${step}: vCPU ${id} is no vCPU this launch knows (create it with Vcpu.create first)`);
    if (vcpu.state === 'ready') throw launchOrderError(`${step}: vCPU ${id} is ready already`);
    if (vcpu.fd === null) throw launchOrderError(`${step}: vCPU ${id}'s fd is closed: it can never be reached again`);
    return vcpu.fd;
  }

  /** Refuses the end unless building and every open vCPU is ready (and there is one). */
  protected requireAllReady(): void {
    this.requireBuilding(this.endStep);
    const states = [...this.vcpus.values()];
    if (!states.some((v) => v.state === 'ready')) throw launchOrderError(`${this.endStep} with no vCPU ready: create the vCPUs and make them ready first`);
    const waiting = [...this.vcpus].filter(([, v]) => v.state !== 'ready' && v.fd !== null).map(([id]) => id);
    if (waiting.length > 0) throw launchOrderError(`${this.endStep} while ${waiting.length} vCPU(s) are not ready (ids ${waiting.join(', ')})`);
  }

  /** Copies `region` into private memory (and measures it) through the type's step. */
  abstract measure(region: LaunchRegion, isPrivate: PrivateMemoryCheck): void;

  /** Ends the launch (once): after it the vCPUs may run, and nothing more is measured. */
  abstract finish(): void;
}
