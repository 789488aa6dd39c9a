// The listener side of QEMU's RamDiscardManager, as guestmem uses it for confidential
// memory: populate = the range became shared, discard = the range became private.

import type { GranuleRange } from '../common/byte-range';
import type { Run } from './page-bitmap';
import { invalidArgType } from '../common/errors';
import { describeValue } from '../common/validators';

/**
 * QEMU's RamDiscardListener: told when granules of its section become shared (`populate`) or
 * private (`discard`).
 */
export interface RamDiscardListener {
  /** Shown in errors and reports; defaults to the constructor's name. */
  readonly name?: string;
  /**
   * A listener that can discard a range of which parts are already discarded (VFIO: one
   * unmap over a range of many mappings) gets a single whole-section discard when it is
   * unregistered, instead of one per shared run.
   */
  readonly doubleDiscardSupported?: boolean;
  /**
   * A promise that populate, discard, populateRuns and discardRuns never return a promise
   * (they finish, or throw, before returning). While every listener of a block makes it, a
   * conversion runs synchronously from start to end (RamBlock.convertSync,
   * RamBlockAttributes.stateChangeSync) and the asynchronous calls settle at once. A
   * listener that makes it and returns a promise anyway fails its notification
   * (ERR_GUESTMEM_ASYNC_LISTENER as the cause) and the change rolls back.
   */
  readonly synchronous?: boolean;
  /** The range (clipped to the listener's section) became shared. May throw or reject. */
  populate(range: GranuleRange): void | PromiseLike<void>;
  /** The range (clipped to the listener's section) became private. */
  discard(range: GranuleRange): void | PromiseLike<void>;
  /**
   * Optional batch forms: every run of one change (a mixture, a replay) in one call, so a
   * listener that crosses into the kernel can do it once. All or nothing: when one throws,
   * the listener must hold exactly what it held before the call.
   */
  populateRuns?(ranges: GranuleRange[]): void | PromiseLike<void>;
  /** Optional: every run of one change that became private, in one call (all or nothing). */
  discardRuns?(ranges: GranuleRange[]): void | PromiseLike<void>;
  /**
   * Optional: the granules it holds now (maps, for VFIO) inside [first, first + count), as
   * maximal runs of block granule indices. A listener that can say so lets its RAM block
   * check after a failure that it agrees with the tracker and KVM, and repair it if not.
   */
  heldRuns?(first: number, count: number): Run[];
  /**
   * Optional, with heldRuns: what it holds in [first, first + count) is unknown (a thread
   * died while it changed them, between a kernel call and its record): count those
   * granules as held, so that the discard a repair sends next removes whatever is there
   * (it must take a discard of what it does not hold: double discard).
   */
  assumeHeld?(first: number, count: number): void;
  /**
   * Optional: told its section at register, before the replay (QEMU keeps the section in
   * the listener too). Throwing refuses the registration: a listener that can only cover
   * part of the block says so here instead of failing a later conversion. A promise is
   * awaited (bounded by listenerTimeoutMs); its rejection refuses the registration too.
   */
  attach?(section: GranuleRange): void | PromiseLike<void>;
}

/** A listener's methods as register found them, checked. */
export interface CheckedListener {
  readonly name: string;
  readonly populate: (range: GranuleRange) => unknown;
  readonly discard: (range: GranuleRange) => unknown;
  readonly populateRuns: ((ranges: GranuleRange[]) => unknown) | undefined;
  readonly discardRuns: ((ranges: GranuleRange[]) => unknown) | undefined;
  readonly attach: ((section: GranuleRange) => unknown) | undefined;
  readonly doubleDiscardSupported: boolean;
  readonly synchronous: boolean;
}

/** The name a report shows, whatever the listener is (never throws). */
export function listenerName(listener: RamDiscardListener): string {
  try {
    return checkListenerName(listener);
  } catch {
    return 'listener';
  }
}

/** The name errors show: `name` where it is a string, else the constructor's name. */
export function checkListenerName(listener: RamDiscardListener): string {
  const { name } = listener;
  if (name !== undefined && typeof name !== 'string') throw invalidArgType(`listener.name must be a string, got ${describeValue(name)}`);
  const constructorName = (Object.getPrototypeOf(listener) as object | null)?.constructor?.name;
  return name ?? (typeof constructorName === 'string' && constructorName !== '' ? constructorName : 'listener');
}

function method<T>(listener: RamDiscardListener, key: keyof RamDiscardListener, required: boolean): T | undefined {
  const value: unknown = listener[key];
  if (typeof value === 'function') return value as T;
  if (value === undefined && !required) return undefined;
  throw invalidArgType(`listener.${key} must be a function${required ? '' : ' where present'}, got ${describeValue(value)}`);
}

/**
 * Checks a listener at register: an object whose populate and discard are functions, whose
 * batch forms and attach are functions where present, whose name is a string and whose
 * doubleDiscardSupported and synchronous are booleans where present. Throws ERR_INVALID_ARG_TYPE.
 */
export function checkListener(listener: unknown): CheckedListener {
  if (listener === null || (typeof listener !== 'object' && typeof listener !== 'function')) {
    throw invalidArgType(`listener must be an object with populate and discard methods, got ${describeValue(listener)}`);
  }
  const candidate = listener as RamDiscardListener;
  const doubleDiscard: unknown = candidate.doubleDiscardSupported;
  if (doubleDiscard !== undefined && typeof doubleDiscard !== 'boolean') {
    throw invalidArgType(`listener.doubleDiscardSupported must be a boolean, got ${describeValue(doubleDiscard)}`);
  }
  const synchronous: unknown = candidate.synchronous;
  if (synchronous !== undefined && typeof synchronous !== 'boolean') {
    throw invalidArgType(`listener.synchronous must be a boolean, got ${describeValue(synchronous)}`);
  }
  return {
    name: checkListenerName(candidate),
    populate: method(candidate, 'populate', true)!,
    discard: method(candidate, 'discard', true)!,
    populateRuns: method(candidate, 'populateRuns', false),
    discardRuns: method(candidate, 'discardRuns', false),
    attach: method(candidate, 'attach', false),
    doubleDiscardSupported: doubleDiscard === true,
    synchronous: synchronous === true,
  };
}
