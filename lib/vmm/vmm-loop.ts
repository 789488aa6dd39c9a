// The VMM loop: every vCPU runs until its next exit, and the exit is handled before that
// vCPU goes on, as QEMU's kvm_cpu_exec does. Guest conversions (KVM_HC_MAP_GPA_RANGE
// hypercalls; KVM_EXIT_MEMORY_FAULT on SNP/TDX) go through the caller's memory, i.e.
// GuestMemory.convert, in the order lib/memory/ram-block.ts keeps (CONVERSION ORDER there),
// rolled back on failure. Where QEMU stops the vCPU when a conversion fails,
// the guest here is answered with an error and goes on. Port I/O goes to pluggable
// handlers; anything else stops every vCPU with an error naming the exit, the vCPU and
// its registers.

import type { Bytes } from '../common/byte-range';
import { GuestmemError, invalidArgType, messageOf } from '../common/errors';
import { checkLoopArguments } from './guest-options';
import type { StateChangeResult } from '../tracker/ram-block-attributes';
import type { PageState } from '../tracker/state-change-channel';
import type { PortContext, PortHandler } from './guest-ports';
import { hypercallErrorAnswer } from './hypercall-answer';
import { KVM_EFAULT, KVM_EINVAL, KVM_HC_MAP_GPA_RANGE, decodeMapGpaRange } from './map-gpa-range';
import { tdvmcallAnswer } from './tdvmcall';
import { decodeSevTermination, type SevTermination } from './system-event';
import type { Registers } from './vcpu';
import { KVM_MEMORY_EXIT_FLAG_PRIVATE, describeExit, type HypercallExit, type IoExit, type MemoryFaultExit, type MmioExit, type VcpuExit } from './vcpu-exit';

/**
 * What the loop needs of a vCPU (lib/vmm/vcpu.ts's Vcpu; a stand-in in unit tests). The
 * loop names each by its index in the list it was given, the guest's own numbering.
 */
export interface LoopVcpu {
  /** Enters the guest; resolves with the next exit. */
  run(): Promise<VcpuExit>;
  /** Enters the guest on this thread and returns the next exit (VmmLoopOptions.onThisThread). */
  runSync?(): VcpuExit;
  /** Kicks the vCPU out of the guest (QEMU's kick). */
  stop(): void;
  /** Sets the hypercall's return value (rax) for the next entry. */
  completeHypercall(ret: number | bigint): void;
  /** Answers a port read with `data` for the next entry. */
  completeIo(data: Uint8Array): void;
  /** Answers an MMIO read with `data` for the next entry. */
  completeMmio(data: Uint8Array): void;
  /** Answers a KVM_EXIT_TDX with a TDVMCALL status for the next entry (TD vCPUs). */
  completeTdvmcall?(status: bigint): void;
  readonly registers: Registers;
}

/** Returns the bytes a read returns (`length` of them), nothing for a write. */
export type MmioHandler = (exit: MmioExit, context: PortContext) => void | Uint8Array | Promise<void | Uint8Array>;

/** What the loop needs of guest memory (GuestMemory through an adapter; a stand-in in tests). */
export interface LoopMemory {
  /** True if [gpa, gpa + size) lies inside one block that can convert it. */
  covers(gpa: Bytes, size: Bytes): boolean;
  /**
   * Converts a guest range, as GuestMemory.convert does: synchronously where it can be
   * (every listener answers at once), else as a promise.
   */
  convert(gpa: Bytes, size: Bytes, to: PageState): StateChangeResult | Promise<StateChangeResult>;
  /**
   * Why a memory fault may not convert [gpa, gpa + size) `to` (null: it may): a page the
   * launch measured, which the guest never asked to share (measured-pages.ts).
   */
  faultRefusal?(gpa: bigint, size: bigint, to: PageState): string | null;
}

/** One conversion the guest asked for, and how it ended. */
export interface ConversionEvent {
  vcpu: number;
  source: 'hypercall' | 'memory-fault';
  gpa: bigint;
  size: bigint;
  to: PageState;
  /** 0, or the value the guest was answered (hypercalls): negative, or for SNP and TDX a positive EINVAL or EAGAIN (hypercall-answer.ts). */
  result: number;
  outcome: 'converted' | 'rejected' | 'failed';
  /** Why it was rejected or failed. */
  reason?: string;
  ns: number;
}

export interface VmmLoopOptions {
  ports?: Map<number, PortHandler>;
  /** Guest physical addresses outside RAM that a device model answers. */
  mmio?: MmioHandler;
  onConversion?(event: ConversionEvent): void;
  /**
   * Enter the guest on this thread (LoopVcpu.runSync): for a loop on a vCPU's own thread,
   * where an exit then costs no promise and no thread hop. Never on Node's main thread: it
   * would stop the event loop while the guest runs.
   */
  onThisThread?: boolean;
  /** The number of each vCPU in events and outcomes (default: its index in the list). */
  ids?: readonly number[];
  /**
   * Asked when a vCPU comes back interrupted: true when the VM is being stopped from
   * elsewhere (a vCPU thread's loop, stopped by the main thread through shared memory).
   */
  stopRequested?(): boolean;
  /** What port and MMIO handlers get as `context.post`: a message for the VMM's owner. */
  post?(message: unknown): void;
  /** The VM's KVM_CREATE_VM type: what a refused MAP_GPA_RANGE is answered with depends on it. */
  vmType?: number;
}

/** How a vCPU ended: its exit status, a halt, or a stop. */
export type VcpuOutcome =
  | { vcpu: number; status: number }
  | { vcpu: number; halted: true }
  | { vcpu: number; stopped: true }
  /**
   * A confidential guest ended itself (SEV termination request, TDX fatal error): why, and
   * for an SEV termination request its reason set and code.
   */
  | { vcpu: number; terminated: string; sev?: SevTermination };

/** What a run of the VMM loop did: each vCPU's outcome and the conversions by result. */
export interface VmmReport {
  vcpus: VcpuOutcome[];
  /** stop() was called before every vCPU finished. */
  stopped: boolean;
  exits: number;
  conversions: { converted: number; rejected: number; failed: number };
}

const KVM_EXIT_HYPERCALL_NAME = 'KVM_HC_MAP_GPA_RANGE';

/** True for a failed conversion's `applied` that names at least one run. */
/**
 * What a vCPU's run ended with, coded: an error that has a code already (a conversion's, a
 * kernel's) as it is; anything else (a port handler's plain Error, a thrown string) as
 * ERR_GUESTMEM_VCPU_FAILED naming the vCPU, with what was thrown as its cause.
 */
function coded(error: unknown, vcpu: number): unknown {
  if (typeof (error as { code?: unknown } | null)?.code === 'string') return error;
  return new GuestmemError('ERR_GUESTMEM_VCPU_FAILED', `vCPU ${vcpu} stopped the VM: ${messageOf(error)}`, { cause: error, vcpu });
}

function terminatedOutcome(vcpu: number, terminated: string, sev: SevTermination | null): VcpuOutcome {
  return sev ? { vcpu, terminated, sev } : { vcpu, terminated };
}

function hasRuns(applied: unknown): boolean {
  return Array.isArray(applied) && applied.length > 0;
}

/**
 * The VMM loop: runs vCPUs, converts what the guest asks (MAP_GPA_RANGE, memory faults)
 * through the memory, hands port I/O and MMIO to handlers, and stops every vCPU on an
 * unexpected exit.
 */
export class VmmLoop {
  private readonly ports: Map<number, PortHandler>;
  private readonly outcomes = new Map<number, VcpuOutcome>();
  private failure: Error | null = null;
  private stopping = false;
  private exits = 0;
  private readonly counts = { converted: 0, rejected: 0, failed: 0 };

  constructor(
    private readonly vcpus: readonly LoopVcpu[],
    private readonly memory: LoopMemory,
    private readonly options: VmmLoopOptions = {},
  ) {
    checkLoopArguments(vcpus, memory);
    this.ports = options.ports ?? new Map<number, PortHandler>();
  }

  /** Runs every vCPU until each has exited, halted or been stopped; rejects on a failure. */
  async run(): Promise<VmmReport> {
    const ids = this.options.ids ?? this.vcpus.map((_, index) => index);
    await Promise.all(this.vcpus.map((vcpu, index) => this.runVcpu(vcpu, ids[index]!).catch((error: unknown) => this.fail(coded(error, ids[index]!)))));
    if (this.failure) throw this.failure;
    return {
      vcpus: ids.map((id) => this.outcomes.get(id) ?? { vcpu: id, stopped: true as const }),
      stopped: this.stopping,
      exits: this.exits,
      conversions: { ...this.counts },
    };
  }

  /** Stops every vCPU, even one spinning in the guest; run() then resolves. */
  stop(): void {
    this.stopping = true;
    for (const vcpu of this.vcpus) vcpu.stop();
  }

  private fail(error: unknown): void {
    this.failure ??= error instanceof Error ? error : new Error(String(error));
    this.stopping = true;
    for (const vcpu of this.vcpus) vcpu.stop();
  }

  private async runVcpu(vcpu: LoopVcpu, id: number): Promise<void> {
    const context: PortContext = {
      vcpu: id,
      exitVcpu: (status) => this.outcomes.set(id, { vcpu: id, status }),
      post: (message) => this.options.post?.(message),
    };
    const onThisThread = this.options.onThisThread === true;
    if (onThisThread && typeof vcpu.runSync !== 'function') throw invalidArgType(`vCPU ${id} has no runSync: it cannot run on this thread`);
    while (!this.stopping && !this.outcomes.has(id)) {
      const exit = onThisThread ? vcpu.runSync!() : await vcpu.run();
      this.exits++;
      // A handler that finished synchronously (a conversion whose listeners all answer at
      // once) returns nothing: the vCPU re-enters without another trip through a promise.
      const pending = this.handle(vcpu, id, exit, context);
      if (pending) await pending;
    }
  }

  private handle(vcpu: LoopVcpu, id: number, exit: VcpuExit, context: PortContext): void | Promise<void> {
    switch (exit.reason) {
      case 'hypercall':
        return this.hypercall(vcpu, id, exit);
      case 'memory-fault':
        return this.memoryFault(vcpu, id, exit);
      case 'io':
        return this.io(vcpu, id, exit, context);
      case 'mmio':
        return this.mmio(vcpu, id, exit, context);
      case 'tdx': {
        if (!vcpu.completeTdvmcall) throw this.unexpected(vcpu, id, exit, 'a TDVMCALL, and this vCPU cannot answer one');
        vcpu.completeTdvmcall(tdvmcallAnswer(exit).status);
        return;
      }
      case 'hlt':
        this.outcomes.set(id, { vcpu: id, halted: true });
        return;
      case 'intr':
        // A kick: stop() (the loop ends) or a stray signal (run again).
        if (this.stopping || this.options.stopRequested?.()) this.outcomes.set(id, { vcpu: id, stopped: true });
        return;
      case 'system-event':
        // An SNP guest's termination request or a TD's fatal error ends the whole guest:
        // no vCPU of it may run again.
        if (exit.termination === undefined) throw this.unexpected(vcpu, id, exit, 'a system event the VMM does not handle');
        this.outcomes.set(id, terminatedOutcome(id, exit.termination, decodeSevTermination(exit.type, exit.data)));
        this.stop();
        return;
      default:
        throw this.unexpected(vcpu, id, exit, 'an exit the VMM does not handle');
    }
  }

  private hypercall(vcpu: LoopVcpu, id: number, exit: HypercallExit): void | Promise<void> {
    if (exit.nr !== KVM_HC_MAP_GPA_RANGE) throw this.unexpected(vcpu, id, exit, `hypercall ${exit.nr}: only ${KVM_EXIT_HYPERCALL_NAME} is routed to userspace`);
    const request = decodeMapGpaRange(exit.args);
    const refused = hypercallErrorAnswer(this.options.vmType, 'rejected');
    if ('rejected' in request) {
      const [gpa = 0n, pages = 0n] = exit.args;
      this.record(id, 'hypercall', gpa, pages * 4096n, 'shared', refused, 'rejected', request.rejected, 0);
      vcpu.completeHypercall(refused);
      return;
    }
    const { gpa, size, to } = request;
    if (!this.memory.covers(gpa, size)) {
      this.record(id, 'hypercall', gpa, size, to, refused, 'rejected', 'the range is not inside one RAM block', 0);
      vcpu.completeHypercall(refused);
      return;
    }
    const started = this.clock();
    const converted = (): void => {
      this.record(id, 'hypercall', gpa, size, to, 0, 'converted', undefined, started);
      vcpu.completeHypercall(0);
    };
    const failed = (error: unknown): void => {
      const code = (error as { code?: string }).code;
      // Refused before any step ran (pages held back until repair(), say): a rejection.
      if (code === 'ERR_GUESTMEM_CONVERSION_REJECTED') {
        this.record(id, 'hypercall', gpa, size, to, refused, 'rejected', (error as Error).message, started);
        vcpu.completeHypercall(refused);
        return;
      }
      const rolledBack = hypercallErrorAnswer(this.options.vmType, 'failed');
      this.record(id, 'hypercall', gpa, size, to, rolledBack, 'failed', (error as Error).message, started);
      // Rolled back wholly: the guest hears the error and goes on. Not rolled back: the
      // host no longer knows what the device can reach, so nothing may run. Rolled back
      // but for runs whose undo failed: an error answer tells the guest "nothing changed",
      // and a guest that keeps using a page it still thinks private, which stayed shared,
      // would put secrets where the host and the device read them. The hypercall has no
      // answer for "part of it", so the VM stops, as QEMU stops on any failed conversion.
      if (code === 'ERR_GUESTMEM_ROLLBACK_FAILED') throw error;
      if (code === 'ERR_GUESTMEM_CONVERSION_FAILED' && hasRuns((error as { applied?: unknown }).applied)) throw error;
      vcpu.completeHypercall(rolledBack);
    };
    let result: unknown;
    try {
      result = this.memory.convert(gpa, size, to);
    } catch (error) {
      failed(error);
      return;
    }
    if (result instanceof Promise) return result.then(converted, failed);
    converted();
  }

  /**
   * SNP and TDX report an access whose private bit disagrees with KVM's attributes; QEMU
   * converts the range to what the access wanted and re-enters. There is no answer to
   * give the guest, so a conversion that fails stops the VM, as in QEMU.
   */
  private memoryFault(vcpu: LoopVcpu, id: number, exit: MemoryFaultExit): void | Promise<void> {
    const to: PageState = (exit.flags & KVM_MEMORY_EXIT_FLAG_PRIVATE) !== 0n ? 'private' : 'shared';
    if (!this.memory.covers(exit.gpa, exit.size)) {
      this.record(id, 'memory-fault', exit.gpa, exit.size, to, -KVM_EINVAL, 'rejected', 'the range is not inside one RAM block', 0);
      throw this.unexpected(vcpu, id, exit, 'a memory fault outside every RAM block');
    }
    const refusal = this.memory.faultRefusal?.(exit.gpa, exit.size, to);
    if (refusal) {
      this.record(id, 'memory-fault', exit.gpa, exit.size, to, -KVM_EINVAL, 'rejected', refusal, 0);
      throw this.unexpected(vcpu, id, exit, `a memory fault refused: ${refusal}`);
    }
    const started = this.clock();
    const converted = (): void => this.record(id, 'memory-fault', exit.gpa, exit.size, to, 0, 'converted', undefined, started);
    const failed = (error: unknown): never => {
      this.record(id, 'memory-fault', exit.gpa, exit.size, to, -KVM_EFAULT, 'failed', (error as Error).message, started);
      throw this.unexpected(vcpu, id, exit, `converting the faulting range failed: ${(error as Error).message}`);
    };
    let result: unknown;
    try {
      result = this.memory.convert(exit.gpa, exit.size, to);
    } catch (error) {
      failed(error);
    }
    if (result instanceof Promise) return result.then(converted, failed);
    converted();
  }

  private io(vcpu: LoopVcpu, id: number, exit: IoExit, context: PortContext): void | Promise<void> {
    const handler = this.ports.get(exit.port);
    if (!handler) throw this.unexpected(vcpu, id, exit, `no handler for port 0x${exit.port.toString(16)}`);
    const complete = (answer: void | Uint8Array): void => {
      if (exit.direction === 'in') vcpu.completeIo(answer ?? new Uint8Array(exit.size * exit.count).fill(0xff));
    };
    const answer = handler(exit, context);
    if (answer instanceof Promise) return answer.then(complete);
    complete(answer);
  }

  private mmio(vcpu: LoopVcpu, id: number, exit: MmioExit, context: PortContext): void | Promise<void> {
    const handler = this.options.mmio;
    if (!handler) throw this.unexpected(vcpu, id, exit, `no MMIO handler for 0x${exit.address.toString(16)}`);
    const complete = (answer: void | Uint8Array): void => {
      if (!exit.isWrite) vcpu.completeMmio(answer ?? new Uint8Array(exit.length).fill(0xff));
    };
    const answer = handler(exit, context);
    if (answer instanceof Promise) return answer.then(complete);
    complete(answer);
  }

  /**
   * The start of a conversion, for its event's `ns`: read only for an observer. Under
   * emulation a clock read is a system call of 10-20 µs, a tenth of a conversion.
   */
  private clock(): number {
    return this.options.onConversion ? performance.now() : 0;
  }

  /** Counts the outcome; builds the event only for an observer (the hot path has none). */
  private record(
    vcpu: number, source: ConversionEvent['source'], gpa: Bytes, size: Bytes, to: PageState,
    result: number, outcome: ConversionEvent['outcome'], reason: string | undefined, started: number,
  ): void {
    this.counts[outcome]++;
    const observer = this.options.onConversion;
    if (!observer) return;
    const ms = started === 0 ? 0 : performance.now() - started;
    const event: ConversionEvent = { vcpu, source, gpa: BigInt(gpa), size: BigInt(size), to, result, outcome, ns: Math.round(ms * 1e6) };
    if (reason !== undefined) event.reason = reason;
    observer(event);
  }

  private unexpected(vcpu: LoopVcpu, id: number, exit: VcpuExit, why: string): GuestmemError {
    let registers: string;
    try {
      const regs = vcpu.registers;
      registers = `; registers: ${(['rip', 'rsp', 'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rflags'] as const).map((name) => `${name}=0x${regs[name].toString(16)}`).join(' ')}`;
    } catch (error) {
      registers = `; registers unreadable: ${(error as Error).message}`;
    }
    return new GuestmemError(
      'ERR_GUESTMEM_VCPU_FAILED',
      `vCPU ${id} stopped the VM: ${why}: exit ${describeExit(exit)}${registers}`,
      { vcpu: id, exit },
    );
  }
}

