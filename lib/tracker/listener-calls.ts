// How a tracker calls out to a listener (or a replay callback), whichever way it is driven:
// with the re-entry guard up (a call back into the tracker from there would wait for
// itself), with its promise bounded by the tracker's listenerTimeoutMs, and with its
// failure reported once, in one shape (ERR_GUESTMEM_LISTENER_FAILED naming the listener and
// the ranges; ERR_GUESTMEM_ROLLBACK_FAILED when undoing it failed too).

import type { GranuleRange } from '../common/byte-range';
import { GuestmemError, messageOf as message } from '../common/errors';
import type { Registration } from './tracker-registry';

export type Notify = 'populate' | 'discard';

export function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value != null && typeof (value as PromiseLike<unknown>).then === 'function';
}

/** A promise nobody will await any more must not end the process as an unhandled rejection. */
export function abandon(value: unknown): void {
  if (isThenable(value)) Promise.resolve(value).catch(() => {});
}

export function inverse(kind: Notify): Notify {
  return kind === 'populate' ? 'discard' : 'populate';
}

function describeRanges(ranges: GranuleRange[]): string {
  return ranges.length === 1 ? String(ranges[0]) : `${ranges.length} runs from ${ranges[0]} to ${ranges[ranges.length - 1]}`;
}

/** The calls out of one tracker: its re-entry guard and its listeners' deadline. */
export class ListenerCalls {
  /**
   * True while a listener (or a replay callback) runs. An operation that would wait in the
   * queue, called from there, waits for the very notification that called it: a deadlock.
   * It is refused at once instead, and the notification fails.
   */
  notifying = false;
  /** The re-entry error a listener's call back into the tracker was refused with, until its notification fails. */
  reentry: GuestmemError | null = null;

  constructor(
    private readonly trackerName: string,
    private readonly timeoutMs: number | undefined,
  ) {}

  /** Throws ERR_GUESTMEM_REENTRANT_CALL when called from inside a listener; the notification fails too. */
  refuseReentry(operation: string): void {
    if (!this.notifying) return;
    this.reentry = new GuestmemError(
      'ERR_GUESTMEM_REENTRANT_CALL',
      `${operation} on ${this.trackerName} was called from inside one of its own listeners, which would wait for itself: ` +
        'a listener must not change the block it listens to (defer the call until the change has settled)',
    );
    throw this.reentry;
  }

  /**
   * Calls a listener's method (or a replay callback) with the re-entry guard up. A call
   * back into this tracker throws at once; if the listener swallowed that error, its
   * notification fails anyway, so the change it is part of rolls back.
   */
  call<A>(listener: unknown, method: (arg: A) => unknown, arg: A): unknown {
    this.notifying = true;
    let result: unknown;
    try {
      result = method.call(listener, arg);
    } catch (error) {
      // It failed anyway (with the re-entry error or another): the notification fails.
      this.reentry = null;
      throw error;
    } finally {
      this.notifying = false;
    }
    const reentry = this.takeReentry(result);
    if (reentry !== null) throw reentry;
    return result;
  }

  /** The re-entry error a listener swallowed, taken (and its answer abandoned); null when there is none. */
  takeReentry(result: unknown): GuestmemError | null {
    const reentry = this.reentry;
    if (reentry === null) return null;
    this.reentry = null;
    abandon(result);
    return reentry;
  }

  /**
   * A listener's promise, bounded by listenerTimeoutMs where one is set. After a timeout
   * the listener may still finish: the error says it is out of step and should go.
   */
  settle(result: PromiseLike<unknown>): PromiseLike<unknown> {
    const ms = this.timeoutMs;
    if (ms === undefined) return result;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new GuestmemError(
            'ERR_GUESTMEM_LISTENER_TIMEOUT',
            `it did not settle within ${ms} ms (listenerTimeoutMs); if it still finishes, it is out of step with the tracker: unregister it`,
          ),
        );
      }, ms);
      Promise.resolve(result).then(
        (value) => {
          clearTimeout(timer);
          resolve(value);
        },
        (error: unknown) => {
          clearTimeout(timer);
          reject(error);
        },
      );
    });
  }

  listenerFailed(registration: Registration, kind: Notify | 'attach', ranges: GranuleRange[], cause: unknown): GuestmemError {
    const { name } = registration;
    const what = kind === 'attach' ? `accept its section ${ranges[0]}` : `${kind} ${describeRanges(ranges)}`;
    const error = new GuestmemError(
      'ERR_GUESTMEM_LISTENER_FAILED',
      `listener "${name}" failed to ${what} of ${this.trackerName}: ${message(cause)}`,
      { cause, listener: name, operation: kind, ranges: ranges.map((r) => r.toJSON()) },
    );
    // The block finds the listener by this, never by its name, which two listeners may share.
    Object.defineProperty(error, 'registered', { value: registration.listener, enumerable: false });
    return error;
  }

  /** A rollback that itself failed leaves listeners out of step: say so, loudly. */
  withRollbackErrors(failure: unknown, rollbackErrors: unknown[]): unknown {
    if (rollbackErrors.length === 0) return failure;
    return new GuestmemError(
      'ERR_GUESTMEM_ROLLBACK_FAILED',
      `${message(failure)}; rolling back also failed, listeners may disagree with the tracker: ${rollbackErrors.map(message).join('; ')}`,
      { cause: failure, errors: rollbackErrors },
    );
  }
}
