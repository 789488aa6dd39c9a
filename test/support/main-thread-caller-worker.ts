// A worker for test/unit/main-thread-calls.test.ts: makes the calls it is told to, each
// synchronously through MainThreadCaller, and posts back what each returned or threw.

import { parentPort, workerData } from 'node:worker_threads';
import { MainThreadCaller, crossError } from '../../lib/vmm/main-thread-calls';

const { signal, replies, calls } = workerData as { signal: SharedArrayBuffer; replies: import('node:worker_threads').MessagePort; calls: Array<[string, unknown]> };
const caller = new MainThreadCaller(signal, replies, (call) => parentPort!.postMessage(call));
const results: unknown[] = [];
for (const [kind, argument] of calls) {
  try {
    results.push({ value: caller.call(kind, argument) });
  } catch (error) {
    const e = error as Error & { code?: string };
    results.push({ thrown: crossError(error), isGuestmemError: e.constructor.name === 'GuestmemError', isRangeError: e instanceof RangeError });
  }
}
parentPort!.postMessage({ type: 'results', results });
