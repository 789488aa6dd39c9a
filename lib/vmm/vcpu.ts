// One vCPU: its fd (owned here, closed with its VM), its registers, and its entries into
// the guest (vcpu-run.ts): on a thread of its own, so Node's event loop stays live while
// the guest runs, or on the calling thread (runSync). Created with KVM_CREATE_VCPU.

import fs from 'node:fs';
import { GuestmemError, invalidArgType, outOfRange } from '../common/errors';
import { FdOwner } from '../common/fd-owner';
import type { Kvm, Vm } from '../kvm/kvm';
import type { ConfidentialLaunch } from '../kvm/vm-launch';
import { native, type NativeRegs, type NativeSregs } from '../common/native';
import type { VcpuExit } from './vcpu-exit';
import { VcpuRun } from './vcpu-run';

/** The general-purpose registers, rip and rflags, as bigints. */
export type Registers = NativeRegs;
/** The segment, descriptor-table and control registers (KVM_GET_SREGS). */
export type SpecialRegisters = NativeSregs;

const mmapSizes = new WeakMap<Kvm, number>();

/**
 * A vCPU: KVM_CREATE_VCPU, its registers and CPUID, and KVM_RUN, on a thread of its own
 * whose exits come back as promises (run) or on the calling thread (runSync).
 */
export class Vcpu extends FdOwner {
  readonly id: number;
  /** KVM_GET_VCPU_MMAP_SIZE: what a worker needs to map this vCPU's kvm_run too. */
  readonly mmapSize: number;
  readonly #run: VcpuRun;
  /** True while a vCPU thread runs it (lend()). */
  #lent = false;
  /** An SNP or TDX VM's launch: KVM_RUN waits for its end (and for this vCPU to be in it). */
  #launch: ConfidentialLaunch | null = null;

  private constructor(fd: number, id: number, mmapSize: number) {
    super(fd, `vCPU ${id}`);
    this.id = id;
    this.mmapSize = mmapSize;
    this.#run = new VcpuRun(fd, mmapSize, `vCPU ${id}`);
  }

  /** KVM_CREATE_VCPU; the vCPU closes with `vm` if not before. */
  static create(kvm: Kvm, vm: Vm, id: number): Vcpu {
    if (typeof id !== 'number') throw invalidArgType(`vCPU id must be a number, got ${typeof id}`);
    if (!Number.isInteger(id) || id < 0 || id > 0xffff) throw outOfRange(`vCPU id must be an integer in [0, 65535], got ${id}`);
    let mmapSize = mmapSizes.get(kvm);
    if (mmapSize === undefined) {
      mmapSize = native().kvmGetVcpuMmapSize(kvm.fd);
      mmapSizes.set(kvm, mmapSize);
    }
    const fd = native().kvmCreateVcpu(vm.fd, id);
    let vcpu: Vcpu;
    try {
      vcpu = new Vcpu(fd, id, mmapSize);
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
    vm.own(vcpu);
    if (vm.launch) {
      try {
        vm.launch.vcpuCreated(id, fd);
      } catch (error) {
        vcpu.close();
        throw error;
      }
      vcpu.#launch = vm.launch;
    }
    return vcpu;
  }

  /**
   * Runs the guest until its next exit, on the vCPU's own thread (Node's event loop stays
   * live). The vCPU then stays stopped until the next run, so the exit's handler finishes
   * first; complete* calls write the exit's answer.
   */
  run(): Promise<VcpuExit> {
    // eslint-disable-next-line @typescript-eslint/no-unused-expressions -- the getter is the check
    this.fd; // throws ERR_GUESTMEM_CLOSED after close()
    if (this.running) return Promise.reject(this.#busy('run() again'));
    const refusal = this.#launch?.runRefusal(this.id);
    if (refusal) return Promise.reject(refusal);
    return this.#run.run();
  }

  /**
   * Runs the guest on the calling thread until its next exit and returns it: no thread
   * hop, and the calling thread is blocked meanwhile (a vCPU's worker thread, not Node's
   * main thread, unless the guest is known to exit soon). stop() from any thread ends it.
   */
  runSync(): VcpuExit {
    // eslint-disable-next-line @typescript-eslint/no-unused-expressions -- the getter is the check
    this.fd; // throws ERR_GUESTMEM_CLOSED after close()
    if (this.running) throw this.#busy('runSync()');
    const refusal = this.#launch?.runRefusal(this.id);
    if (refusal) throw refusal;
    return this.#run.runSync();
  }

  /** True while a run() is in flight, or while a vCPU thread runs it (VcpuThreads). */
  get running(): boolean {
    return this.#run.running || this.#lent;
  }

  /**
   * Marks the vCPU as run elsewhere (a VcpuThreads worker enters the guest through its own
   * mapping) until the returned function is called: meanwhile, run(), runSync() and the
   * register and CPUID ioctls are refused, as they are during run().
   */
  lend(): () => void {
    this.checkRunnable();
    this.#lent = true;
    return () => {
      this.#lent = false;
    };
  }

  /**
   * Throws what a run would throw before entering the guest: the vCPU closed
   * (ERR_GUESTMEM_CLOSED), a run in flight (ERR_GUESTMEM_BUSY), or its SNP or TDX launch not
   * ended (ERR_GUESTMEM_LAUNCH_ORDER). For a caller that will run it on another thread.
   */
  checkRunnable(): void {
    const refusal = this.#launch?.runRefusal(this.id);
    if (refusal) throw refusal;
    if (this.running) throw this.#busy('running it');
  }

  /** Kicks the vCPU out of KVM_RUN (an 'intr' exit), on whichever thread runs it; every later run returns at once. */
  stop(): void {
    if (!this.closed) this.#run.stop();
  }

  /**
   * The value the guest finds in rax after its hypercall (negative: an error). Since KVM's
   * 2024 rework the VMM must always give one; it is written by the next run.
   */
  completeHypercall(ret: number | bigint): void {
    // eslint-disable-next-line @typescript-eslint/no-unused-expressions -- the getter is the check
    this.fd; // throws ERR_GUESTMEM_CLOSED after close()
    this.#run.completeHypercall(ret);
  }

  /** The bytes the guest's IN instruction reads (size * count). */
  completeIo(data: Uint8Array): void {
    this.#run.completeIo(data);
  }

  /** Answers an MMIO read exit with `data` before the vCPU re-enters. */
  completeMmio(data: Uint8Array): void {
    this.#run.completeMmio(data);
  }

  // Register and CPUID ioctls take KVM's vCPU mutex, which KVM_RUN holds until the guest
  // exits: made while run() is in flight, they would block Node's thread inside the ioctl
  // (no timer, no stop(), no SIGTERM) for as long as the guest runs. Refused instead.

  get registers(): Registers {
    return native().kvmGetRegs(this.#idleFd('reading registers'));
  }

  set registers(regs: Registers) {
    native().kvmSetRegs(this.#idleFd('setting registers'), regs);
  }

  get specialRegisters(): SpecialRegisters {
    return native().kvmGetSregs(this.#idleFd('reading special registers'));
  }

  set specialRegisters(sregs: SpecialRegisters) {
    native().kvmSetSregs(this.#idleFd('setting special registers'), sregs);
  }

  /** KVM_SET_CPUID2 with raw kvm_cpuid_entry2 records (see supportedCpuid). */
  setCpuid(entries: Uint8Array): void {
    native().kvmSetCpuid2(this.#idleFd('setting CPUID'), entries);
  }

  #busy(what: string): GuestmemError {
    return new GuestmemError('ERR_GUESTMEM_BUSY', `${what} on vCPU ${this.id}: its run() is in flight; wait for the exit (or stop() it) first`);
  }

  /** The fd, for an ioctl KVM_RUN would make wait: ERR_GUESTMEM_CLOSED, or ERR_GUESTMEM_BUSY while running. */
  #idleFd(what: string): number {
    const fd = this.fd;
    if (this.running) throw this.#busy(what);
    return fd;
  }

  /**
   * The TDVMCALL status a KVM_EXIT_TDX is answered with (tdvmcall.ts); the TD finds it in R10
   * after the next run.
   */
  completeTdvmcall(status: bigint): void {
    this.#run.completeTdvmcall(status);
  }

  /**
   * The thread stops and kvm_run is unmapped before the fd closes, a run in flight rejects
   * with ERR_GUESTMEM_CLOSED; the launch forgets the vCPU (KVM keeps it, the fd number goes
   * back to the kernel).
   */
  protected override beforeClose(): void {
    this.#launch?.vcpuClosed(this.id);
    this.#run.close();
  }
}

/** KVM_GET_SUPPORTED_CPUID: what this host's KVM can show a guest, as raw records. */
export function supportedCpuid(kvm: Kvm): Buffer {
  return native().kvmGetSupportedCpuid(kvm.fd);
}
