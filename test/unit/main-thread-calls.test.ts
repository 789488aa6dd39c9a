// The synchronous call a vCPU's worker thread makes to the main thread: the worker sleeps on
// shared memory until the main thread (whose handler may answer with a promise) has posted
// the answer; values come back as they were, errors with their code, class and facts (the
// `applied` of a failed conversion among them), in order, one call at a time.

import assert from 'node:assert/strict';
import path from 'node:path';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { GuestmemError } from '../../lib/common/errors';
import { answerCall, crossError, uncrossError, type MainThreadCall } from '../../lib/vmm/main-thread-calls';

type Answerer = (call: MainThreadCall, signal: SharedArrayBuffer, replies: MessagePort) => void;

function runCalls(calls: Array<[string, unknown]>, handle: (kind: string, argument: unknown) => unknown, answer?: Answerer): Promise<unknown[]> {
  const signal = new SharedArrayBuffer(8);
  const { port1: replies, port2 } = new MessageChannel();
  const worker = new Worker(path.join(__dirname, '..', 'support', 'main-thread-caller-worker.js'), { workerData: { signal, replies: port2, calls }, transferList: [port2] });
  return new Promise((resolve, reject) => {
    worker.on('message', (message: MainThreadCall | { type: 'results'; results: unknown[] }) => {
      if (message.type === 'call') {
        if (answer) answer(message, signal, replies);
        else void answerCall(message, handle, signal, replies);
      } else {
        replies.close();
        resolve(message.results);
      }
    });
    worker.on('error', reject);
  });
}

describe('calls from a vCPU thread to the main thread', () => {
  it('returns values, waits for promises, and keeps the order of the calls', async () => {
    const seen: string[] = [];
    const results = await runCalls([['echo', 1], ['later', 2n], ['echo', { bytes: new Uint8Array([1, 2]) }]], (kind, argument) => {
      seen.push(kind);
      return kind === 'later' ? new Promise((resolve) => setTimeout(() => resolve(argument), 20)) : argument;
    });
    assert.deepEqual(seen, ['echo', 'later', 'echo']);
    assert.deepEqual(results, [{ value: 1 }, { value: 2n }, { value: { bytes: new Uint8Array([1, 2]) } }]);
  });

  it('never takes the wake-up of one call for the answer to the next', async () => {
    // The main thread's notify for a call can land after the worker, having seen the
    // answer already, has posted its next call and gone to sleep (seen under emulation):
    // that wake-up is not an answer. Here every call gets such a stray wake-up 5 ms in,
    // and its answer 20 ms in.
    const calls = Array.from({ length: 8 }, (_, i) => ['echo', i] as [string, unknown]);
    const late: Answerer = (call, signal, replies) => {
      const word = new Int32Array(signal, 0, 1);
      setTimeout(() => Atomics.notify(word, 0), 5);
      setTimeout(() => {
        replies.postMessage({ id: call.id, value: call.argument });
        Atomics.store(word, 0, call.id);
        Atomics.notify(word, 0);
      }, 20);
    };
    const results = await runCalls(calls, () => assert.fail('unused'), late);
    assert.deepEqual(results, calls.map(([, i]) => ({ value: i })));
  });

  it('throws on the worker the error the main thread threw, with its code, class and facts', async () => {
    // A fact that is a function (a listener) cannot cross; the others do.
    const failed = Object.assign(
      new GuestmemError('ERR_GUESTMEM_CONVERSION_FAILED', 'map failed; these runs stayed shared: 3+1', { applied: [[3, 1]], step: 'listeners', errors: [], errno: -5, syscall: 'ioctl' }),
      { listener: () => {} },
    );
    const results = (await runCalls([['fail', null], ['range', null]], (kind) => {
      if (kind === 'fail') throw failed;
      return Promise.reject(Object.assign(new RangeError('out of range'), { code: 'ERR_OUT_OF_RANGE' }));
    })) as Array<{ thrown: ReturnType<typeof crossError>; isGuestmemError: boolean; isRangeError: boolean }>;
    assert.deepEqual(results[0]!.thrown, { name: 'GuestmemError', message: failed.message, code: 'ERR_GUESTMEM_CONVERSION_FAILED', facts: { applied: [[3, 1]], step: 'listeners', errors: [], errno: -5, syscall: 'ioctl' } });
    assert.equal(results[0]!.isGuestmemError, true);
    assert.equal(results[1]!.isRangeError, true);
    assert.equal(results[1]!.thrown.code, 'ERR_OUT_OF_RANGE');
  });

  it('an error crossed and back is the error it was, facts and all', () => {
    const disagreements = [{ first: 1, count: 2, kvm: 'private' as const, tracker: 'shared' as const, listeners: { vfio: 'mapped' as const } }];
    const again = uncrossError(crossError(new GuestmemError('ERR_GUESTMEM_ROLLBACK_FAILED', 'undo failed', { errors: [], disagreements })));
    assert.ok(again instanceof GuestmemError);
    assert.ok(again.code === 'ERR_GUESTMEM_ROLLBACK_FAILED');
    // The code narrows the error to its details: no cast to reach them.
    assert.deepEqual(again.disagreements, disagreements);
    assert.deepEqual(crossError('a string'), { name: 'Error', message: 'a string', facts: {} });
  });
});
