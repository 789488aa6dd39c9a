// A vCPU's own thread (a worker_threads Worker): it enters the guest synchronously and
// handles the exit where it came back, as QEMU's vCPU threads do, through the same VmmLoop
// the main thread runs. Port handlers given as modules run here; handlers given as plain
// functions, and conversions of a block that only the main thread may convert, are calls
// to the main thread (main-thread-calls.ts). Conversion events go to the main thread in
// batches, packed into one transferred buffer each (conversion-event-batch.ts). Blocks
// shared with this thread (RamBlock.share) are converted here, under each block's lock.
// The vCPU's fd is the main thread's: this thread maps its kvm_run and never closes the fd. Started by vcpu-threads.ts, which documents the messages.

import { parentPort, workerData } from 'node:worker_threads';
import { native } from '../common/native';
import type { LoopMemory, LoopVcpu, VmmReport } from './vmm-loop';
import { EventPacker } from './conversion-event-batch';
import { VmmLoop } from './vmm-loop';
import type { PortHandler } from './guest-ports';
import type { MmioExit } from './vcpu-exit';
import { VcpuRun } from './vcpu-run';
import { attachBlock, type AttachedBlock } from '../memory/attached-block';
import { MainThreadCaller, crossError } from './main-thread-calls';
import { loadPortModules, type VcpuWorkerData, type WorkerMessage, STOP_WORD, EVENT_BATCH } from './vcpu-worker-protocol';

const data = workerData as VcpuWorkerData;
const toMain = (message: WorkerMessage, transfer: ArrayBuffer[] = []): void => parentPort!.postMessage(message, transfer);
const caller = new MainThreadCaller(data.signal, data.replies, (call) => {
  flushEvents();
  toMain(call);
});
const words = new Int32Array(data.signal);

const events = new EventPacker(EVENT_BATCH);
function flushEvents(): void {
  if (events.length === 0) return;
  const packed = events.take();
  toMain({ type: 'events', packed }, [packed.buffer]);
}

/** Bytes as the main thread's handlers expect them (a Buffer), after the structured clone. */
function asBuffer(bytes: Uint8Array | undefined): Buffer | undefined {
  return bytes === undefined ? undefined : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function vcpuOf(run: VcpuRun): LoopVcpu {
  return {
    run: () => run.run(),
    runSync: () => run.runSync(),
    stop: () => run.stop(),
    completeHypercall: (ret) => run.completeHypercall(ret),
    completeIo: (bytes) => run.completeIo(bytes),
    completeMmio: (bytes) => run.completeMmio(bytes),
    completeTdvmcall: (status) => run.completeTdvmcall(status),
    get registers() {
      return native().kvmGetRegs(data.fd);
    },
  };
}

/** A port whose handler is a plain function on the main thread: the exit goes there and back. */
const onMainThread: PortHandler = (exit, context) => {
  const answer = caller.call('io', exit) as { bytes?: Uint8Array; exitStatus?: number };
  if (answer.exitStatus !== undefined) context.exitVcpu(answer.exitStatus);
  return answer.bytes;
};

/**
 * The memory as this thread sees it: a request inside a block shared with it is converted
 * here (the block's own conversion, under its lock); any other is a call to the main thread.
 */
function memoryOf(attached: AttachedBlock[]): LoopMemory {
  // Every request is checked here: a guest's (numbers below 2^53) with no bigint made per
  // exit, any other with exact bigint arithmetic.
  const inside = (gpa: number | bigint, size: number | bigint): boolean => {
    if (typeof gpa === 'number' && typeof size === 'number') {
      for (const block of data.blocks) if (gpa >= block.gpa && gpa + size <= block.gpa + block.size) return true;
      return false;
    }
    return data.blocks.some((block) => BigInt(gpa) >= BigInt(block.gpa) && BigInt(gpa) + BigInt(size) <= BigInt(block.gpa) + BigInt(block.size));
  };
  return {
    covers: inside,
    convert: (gpa, size, to) => {
      // Numbers, as a guest's request gives them (below 2^53): no bigint on the way.
      if (typeof gpa === 'number' && typeof size === 'number') {
        for (let i = 0; i < attached.length; i++) if (attached[i]!.covers(gpa, size)) return attached[i]!.convertSync(gpa, size, to);
      }
      return caller.call('convert', { gpa, size, to }) as ReturnType<LoopMemory['convert']>;
    },
    faultRefusal: data.faultRefusal ? (gpa, size, to) => caller.call('faultRefusal', { gpa, size, to }) as string | null : undefined,
  };
}

async function main(): Promise<VmmReport> {
  const run = new VcpuRun(data.fd, data.mmapSize, `vCPU ${data.vcpu}`);
  const attached: AttachedBlock[] = [];
  try {
    for (const descriptor of data.sharedBlocks) attached.push(attachBlock(descriptor, { prefaultVcpuFd: data.fd }));
    const ports = new Map<number, PortHandler>();
    for (const port of data.mainPorts) ports.set(port, onMainThread);
    // Modules given for this thread take their ports from the main thread's functions.
    for (const [port, handler] of await loadPortModules(data.portModules, data.vcpu)) ports.set(port, handler);
    const loop = new VmmLoop([vcpuOf(run)], memoryOf(attached), {
      ports,
      ids: [data.vcpu],
      onThisThread: true,
      vmType: data.vmType,
      mmio: data.mmio
        ? (exit: MmioExit) => asBuffer(caller.call('mmio', exit) as Uint8Array | undefined)
        : undefined,
      onConversion: data.observe
        ? (event) => {
            events.push(event);
            if (events.length >= events.capacity) flushEvents();
          }
        : undefined,
      stopRequested: () => Atomics.load(words, STOP_WORD) === 1,
      post: (message) => toMain({ type: 'post', message }),
    });
    return await loop.run();
  } finally {
    flushEvents();
    for (const block of attached) block.detach();
    run.close();
  }
}

main().then(
  (report) => toMain({ type: 'done', report }),
  (error: unknown) => toMain({ type: 'failed', error: crossError(error) }),
);

