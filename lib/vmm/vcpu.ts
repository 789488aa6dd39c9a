// One vCPU: its fd (owned here, closed with its VM), its registers, and its runner: a
// thread of its own that makes KVM_RUN, so Node's event loop stays live while the guest
// runs. Created with KVM_CREATE_VCPU; exits come back as promises of plain objects.

import fs from 'node:fs';
import { invalidArgType, outOfRange } from '../common/errors';
import { FdOwner } from '../common/fd-owner';
import type { Kvm, Vm } from '../kvm/kvm';
import { native, type NativeRegs, type NativeSregs, type NativeVcpuRunner } from '../common/native';
import type { VcpuExit } from './vcpu-exit';

/** The general-purpose registers, rip and rflags, as bigints. */
export type Registers = NativeRegs;
/** The segment, descriptor-table and control registers (KVM_GET_SREGS). */
export type SpecialRegisters = NativeSregs;

const mmapSizes = new WeakMap<Kvm, number>();

/**
 * A vCPU: KVM_CREATE_VCPU, its registers and CPUID, and KVM_RUN on a thread of its own whose
 * exits come back as promises.
 */
export class Vcpu extends FdOwner {
  readonly id: number;
  readonly #runner: NativeVcpuRunner;

  private constructor(fd: number, id: number, runner: NativeVcpuRunner) {
    super(fd, `vCPU ${id}`);
    this.id = id;
    this.#runner = runner;
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
    let runner: NativeVcpuRunner;
    try {
      runner = new (native().VcpuRunner)(fd, mmapSize);
    } catch (error) {
      fs.closeSync(fd);
      throw error;
    }
    return vm.own(new Vcpu(fd, id, runner));
  }

  /**
   * Runs the guest until its next exit. The vCPU then stays stopped until the next run(),
   * so the exit's handler finishes first; complete* calls write the exit's answer.
   */
  run(): Promise<VcpuExit> {
    this.fd; // throws ERR_GUESTMEM_CLOSED after close()
    return this.#runner.run() as Promise<VcpuExit>;
  }

  /** Kicks the vCPU out of KVM_RUN (an 'intr' exit); every later run() returns at once. */
  stop(): void {
    if (!this.closed) this.#runner.stop();
  }

  /** The value the guest finds in rax after its hypercall (negative: an error). */
  completeHypercall(ret: number | bigint): void {
    this.#runner.completeHypercall(ret);
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

  /** The thread stops and kvm_run is unmapped before the fd closes. */
  protected override beforeClose(): void {
    this.#runner.close();
  }
}

/** KVM_GET_SUPPORTED_CPUID: what this host's KVM can show a guest, as raw records. */
export function supportedCpuid(kvm: Kvm): Buffer {
  return native().kvmGetSupportedCpuid(kvm.fd);
}
