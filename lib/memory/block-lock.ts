// The lock of one RAM block, in memory that every thread converting the block sees (a
// SharedArrayBuffer): QEMU's vCPU threads take the BQL to handle a conversion exit; here each
// block has a lock of its own, so conversions of different blocks never wait for each other.
//
// The lock word holds its owner (threadId + 1; 0 = free). Beside it, the intent: what the
// owner is doing (a conversion's range, target and step), written before each step, so that
// when the owner dies holding the lock (a Worker terminated, or exiting, between two steps)
// the main thread can take the lock over, learn which granules may be half-converted, and
// mark them in doubt (RamBlock.recoverFrom). Nothing waits forever: a wait has a bound, and
// passing it is ERR_GUESTMEM_LOCK_TIMEOUT naming the holder and what it is doing.

import { threadId } from 'node:worker_threads';
import { GuestmemError } from '../common/errors';
import { checkInteger } from '../common/validators';
import type { PageState } from '../tracker/state-change-channel';

/** Int32 slots of the lock's memory. */
const LOCK = 0;
const WAITERS = 1;
const KIND = 2;
const TO = 3;
const STEP = 4;
/** Float64 slots (granule indices pass 2^31): after the Int32 slots, 8-byte aligned. */
const FIRST = 3;
const COUNT = 4;

/** Bytes of the lock's memory: five Int32 slots, padding, two Float64 slots. */
export const LOCK_BYTES = 40;

/** What the lock's owner is doing, as the intent records it. */
export type IntentKind = 'convert' | 'repair' | 'register' | 'unregister' | 'close' | 'recover' | 'share' | 'plug' | 'unplug';
const KINDS: ReadonlyArray<IntentKind | null> = [null, 'convert', 'repair', 'register', 'unregister', 'close', 'recover', 'share', 'plug', 'unplug'];
/** Each kind's number in the intent, looked up once per kind rather than once per conversion. */
const KIND_CODE = new Map(KINDS.map((kind, code) => [kind, code]));
/** A conversion's kind, by number: the hot path's. */
const CONVERT = 1;

/** A step of a conversion as the intent records it; 'undo' once a step failed. */
export type IntentStep = 'start' | 'kvmAttributes' | 'listeners' | 'discard' | 'undo';
const STEPS: readonly IntentStep[] = ['start', 'kvmAttributes', 'listeners', 'discard', 'undo'];

export const STEP_START = 0;
export const STEP_UNDO = 4;

/** The owner's record of what it is doing: granules [first, first + count). */
export interface Intent {
  kind: IntentKind;
  first: number;
  count: number;
  to: PageState | null;
  step: IntentStep;
}

/** The default bound on a wait for the lock, in ms. */
export const DEFAULT_LOCK_TIMEOUT_MS = 10_000;

/** This thread's mark in the lock word. */
const ME = threadId + 1;

/**
 * A block's lock over its shared memory: acquire() waits (bounded) for it, the owner records
 * its intent and steps, release() frees it and wakes one waiter.
 */
export class BlockLock {
  private readonly words: Int32Array;
  private readonly numbers: Float64Array;

  constructor(
    memory: SharedArrayBuffer,
    byteOffset: number,
    private readonly name: string,
    readonly timeoutMs: number = DEFAULT_LOCK_TIMEOUT_MS,
  ) {
    checkInteger(timeoutMs, 'lockTimeoutMs', 1, 0x7fffffff);
    this.words = new Int32Array(memory, byteOffset, LOCK_BYTES / 4);
    this.numbers = new Float64Array(memory, byteOffset, LOCK_BYTES / 8);
  }

  /** The threadId of the owner, or null when the lock is free. */
  get holder(): number | null {
    const word = Atomics.load(this.words, LOCK);
    return word === 0 ? null : word - 1;
  }

  /** True when this thread holds the lock. */
  get heldHere(): boolean {
    return Atomics.load(this.words, LOCK) === ME;
  }

  /**
   * Takes the lock for `kind` over granules [first, first + count), waiting at most
   * timeoutMs. Throws ERR_GUESTMEM_REENTRANT_CALL if this thread holds it already (a call
   * from inside its own conversion would wait for itself), ERR_GUESTMEM_LOCK_TIMEOUT naming
   * the holder if the wait passes its bound.
   */
  acquire(kind: IntentKind, first: number, count: number, to: PageState | null): void {
    this.take();
    this.intend(kind, first, count, to);
  }

  /**
   * Takes the lock for a conversion whose range is not checked yet: the intent says
   * "convert, nothing yet" until intendConversion() names the range. The synchronous
   * conversion's path: no lookups, no allocation.
   */
  acquireForConversion(): void {
    this.take();
    this.numbers[COUNT] = 0;
    this.words[STEP] = STEP_START;
    this.words[KIND] = CONVERT;
  }

  /** The conversion's range and target, once checked (the owner alone writes them). */
  intendConversion(first: number, count: number, toShared: boolean): void {
    this.numbers[FIRST] = first;
    this.numbers[COUNT] = count;
    this.words[TO] = toShared ? 1 : 0;
  }

  private take(): void {
    if (Atomics.compareExchange(this.words, LOCK, 0, ME) !== 0) this.wait();
  }

  private wait(): void {
    const words = this.words;
    const deadline = performance.now() + this.timeoutMs;
    for (;;) {
      const word = Atomics.load(words, LOCK);
      if (word === 0) {
        if (Atomics.compareExchange(words, LOCK, 0, ME) === 0) return;
        continue;
      }
      if (word === ME) {
        throw new GuestmemError(
          'ERR_GUESTMEM_REENTRANT_CALL',
          `${this.name} is locked by this thread already (${this.describeIntent()}): a call from inside its own conversion, repair or registration would wait for itself`,
        );
      }
      const left = deadline - performance.now();
      if (left <= 0) throw this.timedOut(word - 1);
      // Counted before the wait so that release() knows to wake someone; a release between
      // the count and the wait changes the word, and the wait returns at once.
      Atomics.add(words, WAITERS, 1);
      Atomics.wait(words, LOCK, word, left);
      Atomics.sub(words, WAITERS, 1);
    }
  }

  private timedOut(holder: number): GuestmemError {
    return new GuestmemError(
      'ERR_GUESTMEM_LOCK_TIMEOUT',
      `${this.name} stayed locked by thread ${holder} (${holder === 0 ? 'the main thread' : 'a worker'}, ${this.describeIntent()}) for more than ${this.timeoutMs} ms; ` +
        'if that thread died, RamBlock.recoverFrom(threadId) releases the lock',
      { holder, intent: this.intent },
    );
  }

  /** Records what the owner is about to do (the owner alone writes it). */
  intend(kind: IntentKind, first: number, count: number, to: PageState | null): void {
    const numbers = this.numbers;
    const words = this.words;
    numbers[FIRST] = first;
    numbers[COUNT] = count;
    words[TO] = to === null ? -1 : to === 'shared' ? 1 : 0;
    words[STEP] = STEP_START;
    words[KIND] = KIND_CODE.get(kind) ?? 0;
  }

  /** Records the step the owner is about to take (STEP_* or 1 + a step's index). */
  step(code: number): void {
    this.words[STEP] = code;
  }

  /** What the owner recorded, or null when the lock is free. */
  get intent(): Intent | null {
    const kind = KINDS[this.words[KIND]!] ?? null;
    if (kind === null || Atomics.load(this.words, LOCK) === 0) return null;
    const to = this.words[TO];
    return { kind, first: this.numbers[FIRST]!, count: this.numbers[COUNT]!, to: to === -1 ? null : to === 1 ? 'shared' : 'private', step: STEPS[this.words[STEP]!] ?? 'start' };
  }

  private describeIntent(): string {
    const intent = this.intent;
    if (intent === null) return 'no intent recorded';
    return `${intent.kind} of granules ${intent.first}+${intent.count}${intent.to ? ` to ${intent.to}` : ''}, at step ${intent.step}`;
  }

  /** Frees the lock (the owner alone calls it) and wakes one waiter, if any. */
  release(): void {
    const words = this.words;
    words[KIND] = 0;
    Atomics.store(words, LOCK, 0);
    if (Atomics.load(words, WAITERS) > 0) Atomics.notify(words, LOCK, 1);
  }

  /**
   * Takes over the lock from a thread that died holding it, and returns what it was doing
   * (null, changing nothing, when that thread does not hold it). The caller must know the
   * thread is gone (a Worker's 'exit' event): a live owner would go on under the new one.
   * The caller then holds the lock and must release() it.
   */
  takeOverFrom(deadThreadId: number): Intent | null {
    checkInteger(deadThreadId, 'threadId', 0, 0x7ffffffe);
    const intent = this.intent;
    if (Atomics.compareExchange(this.words, LOCK, deadThreadId + 1, ME) !== deadThreadId + 1) return null;
    return intent ?? { kind: 'recover', first: 0, count: 0, to: null, step: 'start' };
  }
}
