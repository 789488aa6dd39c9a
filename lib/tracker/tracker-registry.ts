// The listeners a tracker tells of its changes, as pure state: each registration (the
// listener, its section, its methods as register checked them) known by its id and by the
// object registered, never by a name two listeners may share, in QEMU's order (newest
// first: QLIST_INSERT_HEAD). It calls nobody; the fan-out (fan-out.ts) walks it.

import type { GranuleRange } from '../common/byte-range';
import { GuestmemError } from '../common/errors';
import { checkListener, type CheckedListener, type RamDiscardListener } from './ram-discard-listener';

type Notifier = (range: GranuleRange) => unknown;
type BatchNotifier = (ranges: GranuleRange[]) => unknown;

/**
 * A registered listener: its section, and its methods as they were at register (checked
 * then, so a listener changed afterwards cannot turn a notification into a TypeError), in a
 * list newest first (QEMU's QLIST_INSERT_HEAD) that adds and removes in O(1).
 */
export interface Registration {
  /** Unique in the tracker that registered it (main thread), and kept by every replica of it. */
  readonly id: number;
  readonly listener: RamDiscardListener;
  readonly name: string;
  readonly section: GranuleRange;
  readonly populate: Notifier;
  readonly discard: Notifier;
  readonly populateRuns: BatchNotifier | undefined;
  readonly discardRuns: BatchNotifier | undefined;
  readonly doubleDiscardSupported: boolean;
  readonly synchronous: boolean;
  newer: Registration | null;
  older: Registration | null;
}

/** A registration as a descriptor of the block carries it to another thread. */
export interface RegistrationRecord {
  readonly id: number;
  readonly listener: RamDiscardListener;
  readonly section: GranuleRange;
}

/** The cause of a notification that broke a listener's promise to be synchronous. */
export function notSynchronous(name: string): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_ASYNC_LISTENER', `listener "${name}" declared itself synchronous but returned a promise; it may still finish later, out of step with the tracker: unregister it`);
}

export class TrackerRegistry {
  /** Newest first, as QEMU's QLIST_INSERT_HEAD: the newest listener is notified first. */
  newest: Registration | null = null;
  private readonly byListener = new Map<RamDiscardListener, Registration>();
  private nextId = 1;
  /** Registered listeners that did not declare themselves synchronous. */
  asyncListeners = 0;

  /** A registration of `listener` on `section`, not yet in the list (add() puts it there). */
  create(listener: RamDiscardListener, checked: CheckedListener, section: GranuleRange): Registration {
    return { id: this.nextId++, listener, section, ...checked, newer: null, older: null };
  }

  get(listener: RamDiscardListener): Registration | undefined {
    return this.byListener.get(listener);
  }

  has(listener: RamDiscardListener): boolean {
    return this.byListener.has(listener);
  }

  /** True while `registration` is in the list (a late answer asks before it acts). */
  includes(registration: Registration): boolean {
    for (let r = this.newest; r; r = r.older) if (r === registration) return true;
    return false;
  }

  /** Puts a registration at the head of the list: it is told first from now on. */
  add(registration: Registration): void {
    registration.older = this.newest;
    if (this.newest) this.newest.newer = registration;
    this.newest = registration;
    this.byListener.set(registration.listener, registration);
    if (!registration.synchronous) this.asyncListeners++;
  }

  remove(registration: Registration): void {
    if (registration.newer) registration.newer.older = registration.older;
    else this.newest = registration.older;
    if (registration.older) registration.older.newer = registration.newer;
    this.byListener.delete(registration.listener);
    if (!registration.synchronous) this.asyncListeners--;
  }

  /**
   * Takes these registrations, newest first, in place of its own (a tracker over another's
   * memory: a block attached in a worker). Every listener must be synchronous.
   */
  replace(registrations: ReadonlyArray<RegistrationRecord>): void {
    const taken: Registration[] = registrations.map(({ id, listener, section }) => {
      const checked = checkListener(listener);
      if (!checked.synchronous) throw notSynchronous(checked.name);
      return { id, listener, section, ...checked, newer: null, older: null };
    });
    for (let i = 0; i < taken.length; i++) {
      taken[i]!.older = taken[i + 1] ?? null;
      taken[i]!.newer = taken[i - 1] ?? null;
    }
    this.newest = taken[0] ?? null;
    this.byListener.clear();
    for (const registration of taken) this.byListener.set(registration.listener, registration);
    this.asyncListeners = 0;
  }

  /** The name of the oldest listener that does not declare itself synchronous, as a refusal names it. */
  oldestAsyncName(): string {
    let name = 'listener';
    for (let r = this.newest; r; r = r.older) if (!r.synchronous) name = r.name;
    return name;
  }

  /** Each registration's id with its listener and section, newest first. */
  records(): RegistrationRecord[] {
    const result: RegistrationRecord[] = [];
    for (let r = this.newest; r; r = r.older) result.push({ id: r.id, listener: r.listener, section: r.section });
    return result;
  }
}
