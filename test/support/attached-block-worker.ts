// A Worker converting a RAM block shared with it (attachBlock), on the main thread's orders:
// one conversion at a time (answered with its result or its error's report), a storm of
// conversions as fast as it can (answered with their results), or conversions without end
// (until the thread is terminated). It knows the stand-in kernel's kinds (shared-standin).

import { parentPort, workerData } from 'node:worker_threads';
import { attachBlock } from '../../lib/memory/attached-block';
import type { BlockDescriptor } from '../../lib/memory/block-sharing';
import type { PageState } from '../../lib/tracker/state-change-channel';
import { listenerName } from '../../lib/tracker/ram-discard-listener';
import './shared-standin';

export type Order =
  | { op: 'convert'; gpa: number; size: number; to: PageState }
  | { op: 'storm'; conversions: Array<[gpa: number, size: number, to: PageState]>; gate: SharedArrayBuffer }
  | { op: 'forever'; gpa: number; pages: number; seed: number }
  | { op: 'listeners' };

/** An error as it crosses threads: its code, message and the report's fields. */
export interface ErrorReport {
  name: string;
  code?: string;
  message: string;
  applied?: unknown;
  disagreements?: unknown;
  unsettled?: unknown;
  holder?: unknown;
}

export function reportOf(error: unknown): ErrorReport {
  const e = error as Error & Record<string, unknown>;
  return { name: e.name, code: e.code as string | undefined, message: e.message, applied: e.applied, disagreements: e.disagreements, unsettled: e.unsettled, holder: e.holder };
}

if (parentPort) {
  const port = parentPort;
  const { descriptor, prefaultVcpuFd } = workerData as { descriptor: BlockDescriptor; prefaultVcpuFd?: number };
  const block = attachBlock(descriptor, { prefaultVcpuFd });
  port.on('message', (order: Order) => {
    switch (order.op) {
      case 'convert':
        try {
          port.postMessage({ result: block.convertSync(order.gpa, order.size, order.to) });
        } catch (error) {
          port.postMessage({ error: reportOf(error) });
        }
        return;
      case 'storm': {
        // Ready, then wait for the gate, so that every thread starts converting at once.
        const gate = new Int32Array(order.gate);
        port.postMessage({ ready: true });
        Atomics.wait(gate, 0, 0, 10_000);
        const results = order.conversions.map(([gpa, size, to]) => {
          try {
            return { result: block.convertSync(gpa, size, to) };
          } catch (error) {
            return { error: reportOf(error) };
          }
        });
        port.postMessage({ results, stats: block.stats.toJSON() });
        return;
      }
      case 'forever': {
        let seed = order.seed;
        port.postMessage({ started: true });
        for (;;) {
          seed = (seed * 1103515245 + 12345) >>> 0;
          const first = seed % order.pages;
          const count = 1 + ((seed >>> 8) % Math.min(8, order.pages - first));
          try {
            block.convertSync(order.gpa + first * 4096, count * 4096, (seed & 0x10000) !== 0 ? 'shared' : 'private');
          } catch {
            // Rejections (in doubt, repair pending) and failures: go on until terminated.
          }
        }
      }
      case 'listeners':
        // Each replica's own count of double maps and unmaps (a RecordingListener's errors).
        port.postMessage({ listeners: block.listeners.map(listenerName), errors: block.listeners.map((l) => (l as { errors?: number }).errors ?? 0) });
        return;
    }
  });
}
