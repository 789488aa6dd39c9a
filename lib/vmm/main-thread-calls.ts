// What a vCPU's worker thread asks of the main thread, synchronously: a port or MMIO
// handler the caller gave as a plain function, or a conversion of a block that cannot be
// converted off the main thread (a listener of it answers there). The worker is inside
// its own synchronous loop and never turns its event loop, so it cannot wait for a
// message: it posts the call, sleeps on a word of shared memory (Atomics.wait), and takes
// the answer off its reply port with receiveMessageOnPort once the main thread has posted
// it and written the call's number into the word. Each such call is a round trip through the main thread's event
// loop: the cost the threading model names for handlers left on the main thread.

import { receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { GuestmemError, type GuestmemErrorCode } from '../common/errors';

/** What crosses for a thrown error: enough to throw the same code and facts on the other side. */
export interface CrossedError {
  name: string;
  message: string;
  code?: string;
  /** The error's own enumerable facts (applied, step, errno, syscall…), cloneable ones only. */
  facts: Record<string, unknown>;
}

/** A call from a worker: the kind, its argument, and the number its answer carries. */
export interface MainThreadCall {
  type: 'call';
  id: number;
  kind: string;
  argument: unknown;
}

type Answer = { id: number; value: unknown } | { id: number; error: CrossedError };


function cloneable(value: unknown): boolean {
  try {
    structuredClone(value);
    return true;
  } catch {
    return false;
  }
}

/** An error's own properties that are not facts: they cross apart, or not at all. */
const NOT_FACTS = new Set(['code', 'name', 'message', 'stack']);

/** An error as it can cross threads (structured clone keeps an Error's message but not its code or facts). */
export function crossError(error: unknown): CrossedError {
  if (!(error instanceof Error)) return { name: 'Error', message: String(error), facts: {} };
  const facts: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(error)) {
    if (!NOT_FACTS.has(key) && cloneable(value)) facts[key] = value;
  }
  const code = (error as { code?: unknown }).code;
  return { name: error.name, message: error.message, code: typeof code === 'string' ? code : undefined, facts };
}

/** The error a CrossedError stands for: a GuestmemError for guestmem's codes, else an Error with the same code and facts. */
export function uncrossError(crossed: CrossedError): Error {
  const error = crossed.code?.startsWith('ERR_GUESTMEM_')
    ? new GuestmemError(crossed.code as GuestmemErrorCode, crossed.message)
    : crossed.name === 'RangeError' ? new RangeError(crossed.message) : crossed.name === 'TypeError' ? new TypeError(crossed.message) : new Error(crossed.message);
  if (crossed.code !== undefined && !(error instanceof GuestmemError)) Object.assign(error, { code: crossed.code });
  return Object.assign(error, crossed.facts);
}

/** The worker's side: posts a call and sleeps until its answer is there. */
export class MainThreadCaller {
  private readonly signal: Int32Array;
  private next = 0;

  constructor(
    signal: SharedArrayBuffer,
    private readonly replies: MessagePort,
    private readonly post: (call: MainThreadCall) => void,
  ) {
    this.signal = new Int32Array(signal, 0, 1);
  }

  /** Runs `kind` on the main thread with `argument`; returns its value or throws its error. */
  call(kind: string, argument: unknown): unknown {
    // The word holds the number of the last call answered. A wait can end early (the
    // notify of the call before may land after its answer was read): only the number says
    // this call's answer is there.
    const id = (this.next = (this.next % 0x7fffffff) + 1);
    this.post({ type: 'call', id, kind, argument });
    for (let seen = Atomics.load(this.signal, 0); seen !== id; seen = Atomics.load(this.signal, 0)) Atomics.wait(this.signal, 0, seen);
    const received = receiveMessageOnPort(this.replies);
    if (received === undefined) throw new Error(`the main thread flagged an answer to call ${id} (${kind}) but posted none`);
    const answer = received.message as Answer;
    if (answer.id !== id) throw new Error(`the main thread answered call ${answer.id}, not ${id} (${kind})`);
    if ('error' in answer) throw uncrossError(answer.error);
    return answer.value;
  }
}

/** The main thread's side: answers one call (the handler may return a promise), then wakes the worker. */
export async function answerCall(
  call: MainThreadCall,
  handle: (kind: string, argument: unknown) => unknown,
  signal: SharedArrayBuffer,
  replies: MessagePort,
): Promise<void> {
  let answer: Answer;
  try {
    answer = { id: call.id, value: await handle(call.kind, call.argument) };
  } catch (error) {
    answer = { id: call.id, error: crossError(error) };
  }
  // The answer is on the port before the word names it: the worker reads it as soon as it wakes.
  replies.postMessage(answer);
  const word = new Int32Array(signal, 0, 1);
  Atomics.store(word, 0, call.id);
  Atomics.notify(word, 0);
}
