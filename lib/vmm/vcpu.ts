// One vCPU: its fd (owned here, closed with its VM), its registers, and its runner: a
// thread of its own that makes KVM_RUN, so Node's event loop stays live while the guest
// runs. Created with KVM_CREATE_VCPU; exits come back as promises of plain objects,
// decoded from the exit view the runner fills (exit-decoder.ts).

import fs from 'node:fs';
import { invalidArgType, outOfRange } from '../common/errors';
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
   * Runs the guest until its next exit. The vCPU then stays stopped until the next run(),
   * so the exit's handler finishes first; complete* calls write the exit's answer.
   */
  run(): Promise<VcpuExit> {
    // eslint-disable-next-line @typescript-eslint/no-unused-expressions -- the getter is the check
    this.fd; // throws ERR_GUESTMEM_CLOSED after close()
    if (this.#pending) return Promise.reject(new Error('a KVM_RUN of this vCPU is already in flight'));
    const refusal = this.#launch?.runRefusal(this.id);
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
    if (this.#lastExit?.reason !== 'hypercall') throw new Error('the last exit was not a hypercall');
    if (typeof ret !== 'number' && typeof ret !== 'bigint') throw invalidArgType(`a hypercall's return value must be a number or a bigint, got ${typeof ret}`);
    if (typeof ret === 'number' && !Number.isSafeInteger(ret)) throw outOfRange(`a hypercall's return value must be a safe integer, got ${ret}`);
    if (typeof ret === 'bigint' && (ret < -(1n << 63n) || ret >= 1n << 64n)) throw outOfRange(`a hypercall's return value must fit in 64 bits, got ${ret}`);
    this.#hypercallReturn = ret;
  }

  /** The bytes the guest's IN instruction reads (size * count). */
  completeIo(data: Uint8Array): void {
    this.#runner.completeIo(data);
  }

  /** Answers an MMIO read exit with `data` before the vCPU re-enters. */
  completeMmio(data: Uint8Array): void {
    this.#runner.completeMmio(data);
  }

  get registers(): Registers {
    return native().kvmGetRegs(this.fd);
  }

  set registers(regs: Registers) {
    native().kvmSetRegs(this.fd, regs);
  }

  get specialRegisters(): SpecialRegisters {
    return native().kvmGetSregs(this.fd);
  }

  set specialRegisters(sregs: SpecialRegisters) {
    native().kvmSetSregs(this.fd, sregs);
  }

  /** KVM_SET_CPUID2 with raw kvm_cpuid_entry2 records (see supportedCpuid). */
  setCpuid(entries: Uint8Array): void {
    native().kvmSetCpuid2(this.fd, entries);
  }

  /**
   * The TDVMCALL status a KVM_EXIT_TDX is answered with (tdvmcall.ts); the TD finds it in R10
   * after the next run().
   */
  completeTdvmcall(status: bigint): void {
    if (typeof status !== 'bigint') throw invalidArgType(`a TDVMCALL status must be a bigint, got ${typeof status}`);
    if (status < 0n || status >= 1n << 64n) throw outOfRange(`a TDVMCALL status must fit in 64 bits unsigned, got ${status}`);
    this.#runner.completeTdvmcall(status);
  }

  /**
   * The thread stops and kvm_run is unmapped before the fd closes; the launch forgets the fd
   * (KVM keeps the vCPU, the number goes back to the kernel).
   */
  protected override beforeClose(): void {
    this.#launch?.vcpuClosed(this.id);
    this.#runner.close();
  }
}

/** KVM_GET_SUPPORTED_CPUID: what this host's KVM can show a guest, as raw records. */
export function supportedCpuid(kvm: Kvm): Buffer {
  return native().kvmGetSupportedCpuid(kvm.fd);
}
