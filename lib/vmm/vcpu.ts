// One vCPU: its fd (owned here, closed with its VM), its registers, and its runner: a
// thread of its own that makes KVM_RUN, so Node's event loop stays live while the guest
// runs. Created with KVM_CREATE_VCPU; exits come back as promises of plain objects,
// decoded from the exit view the runner fills (exit-decoder.ts).

import fs from 'node:fs';
import { GuestmemError, invalidArgType, outOfRange } from '../common/errors';
import { FdOwner } from '../common/fd-owner';
import type { Kvm, Vm } from '../kvm/kvm';
import type { ConfidentialLaunch } from '../kvm/vm-launch';
import { native, type NativeRegs, type NativeSregs, type NativeVcpuRunner } from '../common/native';
import { ExitDecoder } from './exit-decoder';
import type { VcpuExit } from './vcpu-exit';

/** The general-purpose registers, rip and rflags, as bigints. */
export type Registers = NativeRegs;
/** The segment, descriptor-table and control registers (KVM_GET_SREGS). */
export type SpecialRegisters = NativeSregs;

const mmapSizes = new WeakMap<Kvm, number>();

interface PendingRun {
  resolve(exit: VcpuExit): void;
  reject(error: Error): void;
}

/**
 * A vCPU: KVM_CREATE_VCPU, its registers and CPUID, and KVM_RUN on a thread of its own whose
 * exits come back as promises.
 */
export class Vcpu extends FdOwner {
  readonly id: number;
  readonly #runner: NativeVcpuRunner;
  readonly #decoder: ExitDecoder;
  #pending: PendingRun | null = null;
  #lastExit: VcpuExit | null = null;
  /** completeHypercall's value, written by the next run() in the same crossing. */
  #hypercallReturn: number | bigint | undefined = undefined;
  /** An SNP or TDX VM's launch: KVM_RUN waits for its end (and for this vCPU to be in it). */
  #launch: ConfidentialLaunch | null = null;

  private constructor(fd: number, id: number, mmapSize: number) {
    super(fd, `vCPU ${id}`);
    this.id = id;
    const view = new Uint8Array(native().vcpuExitViewBytes);
    this.#decoder = new ExitDecoder(view, native().kvmRunLayout);
    this.#runner = new (native().VcpuRunner)(fd, mmapSize, view, (error) => this.#finish(error));
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
        vm.launch.vcpuCreated(fd);
      } catch (error) {
        vcpu.close();
        throw error;
      }
      vcpu.#launch = vm.launch;
    }
    return vcpu;
  }

  /**
   * Runs the guest until its next exit. The vCPU then stays stopped until the next run(),
   * so the exit's handler finishes first; complete* calls write the exit's answer.
   */
  run(): Promise<VcpuExit> {
    // eslint-disable-next-line @typescript-eslint/no-unused-expressions -- the getter is the check
    this.fd; // throws ERR_GUESTMEM_CLOSED after close()
    if (this.#pending) return Promise.reject(this.#busy('run() again'));
    const refusal = this.#launch?.runRefusal(this.fd);
    if (refusal) return Promise.reject(refusal);
    const promise = new Promise<VcpuExit>((resolve, reject) => {
      this.#pending = { resolve, reject };
    });
    const hypercallReturn = this.#hypercallReturn;
    this.#hypercallReturn = undefined;
    this.#lastExit = null;
    try {
      this.#runner.run(hypercallReturn);
    } catch (error) {
      this.#pending = null;
      return Promise.reject(error);
    }
    return promise;
  }

  #finish(error: Error | undefined): void {
    const pending = this.#pending!;
    this.#pending = null;
    if (error) {
      pending.reject(error);
      return;
    }
    const exit = this.#decoder.decode();
    this.#lastExit = exit;
    pending.resolve(exit);
  }

  /** Kicks the vCPU out of KVM_RUN (an 'intr' exit); every later run() returns at once. */
  stop(): void {
    if (!this.closed) this.#runner.stop();
  }

  /**
   * The value the guest finds in rax after its hypercall (negative: an error). Since KVM's
   * 2024 rework the VMM must always give one; it is written by the next run().
   */
  completeHypercall(ret: number | bigint): void {
    // eslint-disable-next-line @typescript-eslint/no-unused-expressions -- the getter is the check
    this.fd; // throws ERR_GUESTMEM_CLOSED after close()
    this.#expectExit('completeHypercall', (exit) => exit.reason === 'hypercall', 'a hypercall');
    if (typeof ret !== 'number' && typeof ret !== 'bigint') throw invalidArgType(`a hypercall's return value must be a number or a bigint, got ${typeof ret}`);
    if (typeof ret === 'number' && !Number.isSafeInteger(ret)) throw outOfRange(`a hypercall's return value must be a safe integer, got ${ret}`);
    if (typeof ret === 'bigint' && (ret < -(1n << 63n) || ret >= 1n << 64n)) throw outOfRange(`a hypercall's return value must fit in 64 bits, got ${ret}`);
    this.#hypercallReturn = ret;
  }

  /** The bytes the guest's IN instruction reads (size * count). */
  completeIo(data: Uint8Array): void {
    this.#expectExit('completeIo', (exit) => exit.reason === 'io' && exit.direction === 'in', 'a port read (IN)');
    this.#runner.completeIo(data);
  }

  /** Answers an MMIO read exit with `data` before the vCPU re-enters. */
  completeMmio(data: Uint8Array): void {
    this.#expectExit('completeMmio', (exit) => exit.reason === 'mmio' && !exit.isWrite, 'an MMIO read');
    this.#runner.completeMmio(data);
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
    if (this.#pending) throw this.#busy(what);
    return fd;
  }

  /** complete*() answers the exit the vCPU stopped at: refused while it runs, or after another exit. */
  #expectExit(what: string, matches: (exit: VcpuExit) => boolean, wanted: string): void {
    this.#idleFd(what);
    const exit = this.#lastExit;
    if (exit === null || !matches(exit)) {
      throw new GuestmemError('ERR_GUESTMEM_EXIT_MISMATCH', `${what}: the vCPU's last exit was ${exit === null ? 'none (it has not run)' : `'${exit.reason}'`}, not ${wanted}: there is nothing to complete`);
    }
  }

  /** The thread stops and kvm_run is unmapped before the fd closes. */
  protected override beforeClose(): void {
    this.#runner.close();
  }
}

/** KVM_GET_SUPPORTED_CPUID: what this host's KVM can show a guest, as raw records. */
export function supportedCpuid(kvm: Kvm): Buffer {
  return native().kvmGetSupportedCpuid(kvm.fd);
}
