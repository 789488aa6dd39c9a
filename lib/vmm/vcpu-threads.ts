// The VMM loop with a thread per vCPU: each vCPU runs in a worker_threads Worker that
// enters the guest synchronously and handles its exits there (vcpu-worker.ts), as QEMU's
// vCPU threads do, so an exit costs no trip through Node's event loop. The main thread
// stays free: it is told of conversions (in batches) and of each vCPU's end, it can stop
// the VM at any time, and every error surfaces here. What runs where:
//
// - on the vCPU's thread: entering the guest, decoding the exit, answering hypercalls,
//   and port handlers given as modules (`portModules`);
// - on the vCPU's thread too: conversions of every block that can be shared with it
//   (RamBlock.share: its listeners can run on any thread, as the VFIO listener can), under
//   the block's lock, taking turns with the other threads' conversions of it;
// - on the main thread, as a call the vCPU's thread waits for: port handlers given as
//   plain functions (`ports`), the MMIO handler, and conversions of a block with a listener
//   that answers only there.
//
// A worker that throws or dies stops the VM with an error naming its vCPU.

import path from 'node:path';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { GuestmemError } from '../common/errors';
import type { PortContext, PortHandler } from './guest-ports';
import { answerCall, uncrossError, type MainThreadCall } from './main-thread-calls';
import type { IoExit, MmioExit } from './vcpu-exit';
import type { Vcpu } from './vcpu';
import type { BlockDescriptor } from '../memory/block-sharing';
import { checkPortModules, SIGNAL_WORDS, STOP_WORD, type PortModule, type VcpuWorkerData, type WorkerMessage } from './vcpu-worker-protocol';
import type { ConversionEvent, LoopMemory, MmioHandler, VcpuOutcome, VmmReport } from './vmm-loop';

/** How {@link VcpuThreads} runs: handlers by where they run, observers, and the memory's blocks. */
export interface VcpuThreadsOptions {
  /** Port handlers that run on the main thread: each exit to one is a call there and back. */
  ports?: Map<number, PortHandler>;
  /** Port handlers loaded on each vCPU's own thread (they win over `ports` for the same port). */
  portModules?: PortModule[];
  mmio?: MmioHandler;
  /** Told of each conversion the guest asked for, in batches from each vCPU's thread. */
  onConversion?(event: ConversionEvent): void;
  /** What a handler on a vCPU's thread posts (context.post). */
  onMessage?(message: unknown, vcpu: number): void;
  /** The RAM blocks' ranges: a guest request outside every one is refused on its thread. */
  blocks: ReadonlyArray<{ gpa: number; size: number }>;
  /** The VM's KVM_CREATE_VM type: what a refused MAP_GPA_RANGE is answered with depends on it. */
  vmType?: number;
  /**
   * The blocks a vCPU thread converts itself (RamBlock.share, attachBlock there): called once
   * per thread, a descriptor for each block that can be converted off the main thread (a
   * block with a listener that answers only on the main thread has none: its conversions
   * stay calls to the main thread); and, after a thread ended, the recovery of any block it
   * died converting (RamBlock.recoverFrom: the lock taken over, the range put in doubt).
   */
  sharing?: BlockSharing;
}

/** What VcpuThreads needs of the memory to let vCPU threads convert (GuestMemory through an adapter). */
export interface BlockSharing {
  share(): BlockDescriptor[];
  recoverFrom(threadId: number): void;
}

interface Thread {
  vcpu: Vcpu;
  worker: Worker;
  signal: SharedArrayBuffer;
  replies: MessagePort;
  report: VmmReport | null;
  exited: Promise<void>;
}

const WORKER = path.join(__dirname, 'vcpu-worker.js');

/** Runs each vCPU on a worker thread of its own that handles its exits. */
export class VcpuThreads {
  private readonly threads: Thread[] = [];
  private readonly portModules: PortModule[];
  private failure: Error | null = null;
  private stopping = false;
  private started = false;

  constructor(
    private readonly vcpus: readonly Vcpu[],
    private readonly memory: LoopMemory,
    private readonly options: VcpuThreadsOptions,
  ) {
    this.portModules = checkPortModules(options.portModules);
  }

  /** Runs every vCPU until each has exited, halted or been stopped; rejects on a failure. */
  async run(): Promise<VmmReport> {
    if (this.started) throw new GuestmemError('ERR_GUESTMEM_BUSY', 'these vCPU threads have run already');
    this.started = true;
    for (const vcpu of this.vcpus) vcpu.checkRunnable();
    // Each vCPU is the worker's until it ends: the main thread's runs and register ioctls
    // (which KVM_RUN's vCPU mutex would block) are refused meanwhile.
    const returns = this.vcpus.map((vcpu) => vcpu.lend());
    try {
      for (const vcpu of this.vcpus) this.threads.push(this.start(vcpu));
      await Promise.all(this.threads.map((thread) => thread.exited));
    } finally {
      for (const giveBack of returns) giveBack();
    }
    if (this.failure) throw this.failure;
    return this.report();
  }

  /** Stops every vCPU, on whichever thread it runs; run() then resolves. */
  stop(): void {
    this.stopping = true;
    for (const thread of this.threads) Atomics.store(new Int32Array(thread.signal), STOP_WORD, 1);
    for (const vcpu of this.vcpus) vcpu.stop();
  }

  private fail(error: Error): void {
    this.failure ??= error;
    this.stop();
  }

  private start(vcpu: Vcpu): Thread {
    const signal = new SharedArrayBuffer(SIGNAL_WORDS * Int32Array.BYTES_PER_ELEMENT);
    const { port1: replies, port2 } = new MessageChannel();
    const sharedBlocks = this.options.sharing?.share() ?? [];
    const workerData: VcpuWorkerData = {
      fd: vcpu.fd, mmapSize: vcpu.mmapSize, vcpu: vcpu.id, signal, replies: port2,
      portModules: this.portModules,
      mainPorts: [...(this.options.ports?.keys() ?? [])],
      mmio: this.options.mmio !== undefined,
      observe: this.options.onConversion !== undefined,
      faultRefusal: this.memory.faultRefusal !== undefined,
      vmType: this.options.vmType,
      blocks: this.options.blocks.map(({ gpa, size }) => ({ gpa, size })),
      sharedBlocks,
    };
    const worker = new Worker(WORKER, { workerData, transferList: [port2, ...sharedBlocks.map((block) => block.port)] });
    // A Worker's threadId reads -1 once it has exited: kept for the recovery.
    const threadId = worker.threadId;
    const thread: Thread = { vcpu, worker, signal, replies, report: null, exited: Promise.resolve() };
    worker.on('message', (message: WorkerMessage) => this.receive(thread, message));
    worker.on('error', (error) => this.fail(this.threadError(vcpu, `its thread threw: ${error.message}`, error)));
    thread.exited = new Promise<void>((resolve) => {
      worker.once('exit', (code) => {
        replies.close();
        // A thread that died in a conversion left its block locked, half converted: the lock
        // is taken over and the range put in doubt (refused until repair()).
        if (thread.report === null) this.options.sharing?.recoverFrom(threadId);
        if (thread.report === null && this.failure === null) this.fail(this.threadError(vcpu, `its thread ended (exit code ${code}) before the vCPU did`));
        resolve();
      });
    });
    return thread;
  }

  private receive(thread: Thread, message: WorkerMessage): void {
    switch (message.type) {
      case 'call':
        void answerCall(message, (kind, argument) => this.onMainThread(thread, message, kind, argument), thread.signal, thread.replies);
        return;
      case 'events':
        for (const event of message.events) this.options.onConversion?.(event);
        return;
      case 'post':
        this.options.onMessage?.(message.message, thread.vcpu.id);
        return;
      case 'done':
        thread.report = message.report;
        // A confidential guest that ended itself ends the whole VM.
        if (message.report.vcpus.some((outcome) => 'terminated' in outcome)) this.stop();
        return;
      case 'failed':
        thread.report = null;
        this.fail(uncrossError(message.error));
        return;
    }
  }

  /** A call a vCPU's thread waits for: a conversion, or a handler that lives here. */
  private onMainThread(thread: Thread, _call: MainThreadCall, kind: string, argument: unknown): unknown {
    const vcpu = thread.vcpu.id;
    let exitStatus: number | undefined;
    const context: PortContext = {
      vcpu,
      exitVcpu: (status) => {
        exitStatus = status;
      },
      post: (message) => this.options.onMessage?.(message, vcpu),
    };
    switch (kind) {
      case 'convert': {
        const { gpa, size, to } = argument as { gpa: bigint | number; size: bigint | number; to: 'shared' | 'private' };
        return this.memory.convert(gpa, size, to);
      }
      case 'faultRefusal': {
        const { gpa, size, to } = argument as { gpa: bigint; size: bigint; to: 'shared' | 'private' };
        return this.memory.faultRefusal!(gpa, size, to);
      }
      case 'io': {
        const exit = withBuffer(argument as IoExit);
        const handler = this.options.ports!.get(exit.port)!;
        return Promise.resolve(handler(exit, context)).then((bytes) => ({ bytes: bytes ?? undefined, exitStatus }));
      }
      case 'mmio':
        return this.options.mmio!(withBuffer(argument as MmioExit), context);
      default:
        throw new Error(`vCPU ${vcpu}'s thread asked for '${kind}', which the main thread does not answer`);
    }
  }

  private threadError(vcpu: Vcpu, why: string, cause?: unknown): GuestmemError {
    return new GuestmemError('ERR_GUESTMEM_VCPU_FAILED', `vCPU ${vcpu.id} stopped the VM: ${why}`, { cause, vcpu: vcpu.id });
  }

  private report(): VmmReport {
    const reports = this.threads.map((thread) => thread.report!);
    const outcome = (thread: Thread, report: VmmReport): VcpuOutcome => report.vcpus[0] ?? { vcpu: thread.vcpu.id, stopped: true };
    return {
      vcpus: this.threads.map((thread, i) => outcome(thread, reports[i]!)),
      stopped: this.stopping || reports.some((r) => r.stopped),
      exits: reports.reduce((sum, r) => sum + r.exits, 0),
      conversions: {
        converted: reports.reduce((sum, r) => sum + r.conversions.converted, 0),
        rejected: reports.reduce((sum, r) => sum + r.conversions.rejected, 0),
        failed: reports.reduce((sum, r) => sum + r.conversions.failed, 0),
      },
    };
  }
}

/** An exit's data as handlers expect it (a Buffer), after the structured clone made it a Uint8Array. */
function withBuffer<T extends { data?: Uint8Array }>(exit: T): T {
  const data = exit.data;
  return data === undefined ? exit : { ...exit, data: Buffer.from(data.buffer, data.byteOffset, data.byteLength) };
}
