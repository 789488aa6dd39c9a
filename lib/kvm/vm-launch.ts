// What the launch of an SEV-SNP or TDX VM shares, whichever the type: the system calls (the
// addon's, or a stand-in in tests), the region a step measures into private memory and its
// checks, the errors, and the order every launch keeps: vCPUs are made ready one by one,
// the launch ends once, after every vCPU KVM created is ready, and nothing is measured
// after it. A step out of order is ERR_GUESTMEM_LAUNCH_ORDER before any system call; a step
// the kernel refuses is ERR_GUESTMEM_LAUNCH_FAILED in one line, keeping errno, syscall and
// the firmware's (firmwareError) or TDX module's (hwError) status.
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
  /** KVM_SEV_SNP_LAUNCH_UPDATE of [gpa, gpa + size) from host address `source`, until all is done. */
  snpLaunchUpdate(vmFd: number, sevFd: number, gpa: bigint, source: bigint, size: bigint, type: number): void;
  /** KVM_SEV_SNP_LAUNCH_FINISH without an ID block. */
  snpLaunchFinish(vmFd: number, sevFd: number): void;
  /** KVM_SET_CPUID2 on a vCPU (raw kvm_cpuid_entry2 records). */
  setCpuid(vcpuFd: number, entries: Uint8Array): void;
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
    snpLaunchUpdate: (vmFd, sevFd, gpa, source, size, type) => native().kvmSevSnpLaunchUpdate(vmFd, sevFd, gpa, source, size, type),
    snpLaunchFinish: (vmFd, sevFd) => native().kvmSevSnpLaunchFinish(vmFd, sevFd, undefined),
    setCpuid: (vcpuFd, entries) => native().kvmSetCpuid2(vcpuFd, entries),
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
  return Object.assign(
    new GuestmemError('ERR_GUESTMEM_LAUNCH_FAILED', `${step} failed: ${e.message ?? String(error)}${status}; ${fix}`, { cause: error }),
    { errno: e.errno, syscall: e.syscall, firmwareError: e.firmwareError, hwError: e.hwError },
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
  /** Each vCPU KVM created for this VM, by fd: ready once the type's per-vCPU step is done. */
  protected readonly vcpus = new Map<number, 'created' | 'ready'>();

  protected constructor(protected readonly vmFd: number, protected readonly calls: LaunchCalls) {}

  /** The name of the step that ends the launch, for messages. */
  protected abstract readonly endStep: string;

  /** KVM_CREATE_VCPU made the vCPU `vcpuFd`: the launch cannot end before it is ready. */
  vcpuCreated(vcpuFd: number): void {
    if (this.stage === 'finished') throw launchOrderError(`a vCPU created after ${this.endStep} can never run: create every vCPU before the launch ends`);
    this.vcpus.set(vcpuFd, 'created');
  }

  /** Why `vcpuFd` may not run yet (null: it may). Checked before each KVM_RUN. */
  runRefusal(vcpuFd: number): GuestmemError | null {
    if (this.stage !== 'finished') return launchOrderError(`this ${this.kind} VM's launch has not ended (${this.endStep}): its vCPUs cannot run yet`);
    if (this.vcpus.get(vcpuFd) !== 'ready') return launchOrderError(`this vCPU was not part of the ${this.kind} launch: only vCPUs made ready before ${this.endStep} run`);
    return null;
  }

  /** Refuses unless the launch is being built (started, not ended). */
  protected requireBuilding(step: string): void {
    if (this.stage === 'new') throw launchOrderError(`${step} before the launch started`);
    if (this.stage === 'finished') throw launchOrderError(`${step} after ${this.endStep}: nothing can be added to a launched VM`);
  }

  /** Refuses unless `vcpuFd` is a vCPU of this VM not yet ready. */
  protected requireCreated(step: string, vcpuFd: number): void {
    const state = this.vcpus.get(vcpuFd);
    if (state === undefined) throw launchOrderError(`${step}: fd ${vcpuFd} is no vCPU this launch knows (create it with Vcpu.create first)`);
    if (state === 'ready') throw launchOrderError(`${step}: vCPU fd ${vcpuFd} is ready already`);
  }

  /** Refuses the end unless building and every vCPU is ready (and there is one). */
  protected requireAllReady(): void {
    this.requireBuilding(this.endStep);
    if (this.vcpus.size === 0) throw launchOrderError(`${this.endStep} with no vCPU: create the vCPUs and make them ready first`);
    const waiting = [...this.vcpus].filter(([, state]) => state !== 'ready').map(([fd]) => fd);
    if (waiting.length > 0) throw launchOrderError(`${this.endStep} while ${waiting.length} vCPU(s) are not ready (fds ${waiting.join(', ')})`);
  }

  /** Copies `region` into private memory (and measures it) through the type's step. */
  abstract measure(region: LaunchRegion, isPrivate: PrivateMemoryCheck): void;

  /** Ends the launch (once): after it the vCPUs may run, and nothing more is measured. */
  abstract finish(): void;
}
