// The shared/private tracker of one RAM block and the fan-out of its conversions to
// listeners: QEMU's RamBlockAttributes (its RamDiscardManager for guest_memfd), with one
// change of policy: a listener that fails does not end the process, the change is rolled
// back so that the bitmap, every listener and the caller agree.

import { GranuleRange, bytesOf, granuleRangeOf, toGranuleRange, type Bytes } from '../common/byte-range';
import { GuestmemError, invalidArgValue } from '../common/errors';
import { messageOf as message } from '../common/errors';
import { PageBitmap, RunList, type Held, type Run } from './page-bitmap';
import { Serializer } from '../common/serializer';
import { checkListener, listenerName, type RamDiscardListener } from './ram-discard-listener';
import { anyDiscarded, maskRunList, populatedBySources, type DiscardSource, type SourceChange } from './discard-source';
import { stateChangeChannel, type PageState } from './state-change-channel';
import {
  blockGeometry,
  checkListenerObject,
  checkName,
  checkReplayCallback,
  checkSection,
  checkState,
  checkTimeout,
  trackerMemory,
  type RamBlockAttributesOptions,
  type SectionInput,
} from './tracker-arguments';

export { blockGeometry, DEFAULT_MAX_BITMAP_BYTES, type RamBlockAttributesOptions, type SectionInput } from './tracker-arguments';

/** What a state change did: the range's state before, the new state, and how much changed. */
export interface StateChangeResult {
  /** What the range was before: wholly one state, or a mixture. */
  from: PageState | 'mixture';
  to: PageState;
  /** Granules that changed state. */
  changed: number;
  /**
   * How many runs (`Run`: first granule, count) changed: each listener was notified once per
   * run, or once with all of them where it takes batches.
   */
  changedRuns: number;
}

/** Bytes before the bitmap's words in a tracker's memory: the shared count, a Float64. */
const COUNT_BYTES = 8;

type Notify = 'populate' | 'discard';
type Notifier = (range: GranuleRange) => unknown;
type BatchNotifier = (ranges: GranuleRange[]) => unknown;

/**
 * A registered listener: its section, and its methods as they were at register (checked
 * then, so a listener changed afterwards cannot turn a notification into a TypeError), in a
 * list newest first (QEMU's QLIST_INSERT_HEAD) that adds and removes in O(1).
 */
interface Registration {
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

/** No ranges: what notifySync says a listener was handed before it calls one. */
const NO_RANGES: GranuleRange[] = [];

/** What a range was, by what its bits held before a change. */
const FROM: ReadonlyArray<StateChangeResult['from']> = ['private', 'shared', 'mixture'];

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value != null && typeof (value as PromiseLike<unknown>).then === 'function';
}

/** A promise nobody will await any more must not end the process as an unhandled rejection. */
function abandon(value: unknown): void {
  if (isThenable(value)) Promise.resolve(value).catch(() => {});
}

/** What one listener accepted during a change: undone, newest first, if the change fails. */
type Delivery = [Registration, GranuleRange[]];

function describeRanges(ranges: GranuleRange[]): string {
  return ranges.length === 1 ? String(ranges[0]) : `${ranges.length} runs from ${ranges[0]} to ${ranges[ranges.length - 1]}`;
}

function inverse(kind: Notify): Notify {
  return kind === 'populate' ? 'discard' : 'populate';
}

/** The cause of a notification that broke a listener's promise to be synchronous. */
function notSynchronous(name: string): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_ASYNC_LISTENER', `listener "${name}" declared itself synchronous but returned a promise; it may still finish later, out of step with the tracker: unregister it`);
}

/**
 * QEMU's RamBlockAttributes: which granules of a block are shared, and the fan-out of every
 * change to the registered listeners, rolled back if one fails.
 */
export class RamBlockAttributes {
  readonly name: string;
  readonly granularity: number;
  /** Size of the block in granules. */
  readonly granules: number;
  private readonly bitmap: PageBitmap;
  /** Newest first, as QEMU's QLIST_INSERT_HEAD: the newest listener is notified first. */
  private newest: Registration | null = null;
  private readonly byListener = new Map<RamDiscardListener, Registration>();
  /** Word 0: shared granules, in the tracker's memory beside the bitmap. */
  private readonly counts: Float64Array;
  /** The tracker's SharedArrayBuffer: the shared count, then the bitmap's words. */
  readonly memory: SharedArrayBuffer;
  private nextId = 1;
  /** Operations that call listeners run one at a time, in call order. */
  private readonly queue = new Serializer();
  private readonly listenerTimeoutMs: number | undefined;
  /**
   * True while a listener (or a replay callback) runs. An operation that would wait in the
   * queue, called from there, waits for the very notification that called it: a deadlock.
   * It is refused at once instead, and the notification fails.
   */
  private notifying = false;
  /**
   * True while changeSync runs: a change asked for from code it calls out to (a diagnostics
   * subscriber) is queued behind it, so it cannot reuse `changes` under it.
   */
  private changing = false;
  private reentry: GuestmemError | null = null;
  /** Registered listeners that did not declare themselves synchronous. */
  private asyncListeners = 0;
  /** The runs the change in progress (or the last one) flips: reused, never reallocated per change. */
  private readonly changes = new RunList();
  /** The range of the change in progress, in granules. */
  private changeFirst = 0;
  private changeCount = 0;
  /**
   * Its GranuleRange: the caller's where it made one, else made when a listener is first
   * handed the whole range (changeRange()), so that a change no listener sees whole makes none.
   */
  private changeRangeObject: GranuleRange | null = null;
  /** 1 / granularity: exact for a power of two, so byte offsets become granules by a multiply, not a division. */
  private readonly perByte: number;
  /** Discard sources besides the bitmap (a plug source): listeners hold what all of them call populated. */
  private readonly sources: DiscardSource[] = [];
  /** The runs listeners are told of in the change in progress: `changes`, or `masked` while another source discards. */
  private told: RunList = this.changes;
  private readonly masked = new RunList();

  /**
   * A block of `size` bytes, tracked at `granularity` bytes (a power of two, default 4096).
   * Every granule starts private, as KVM makes a guest_memfd-backed slot private when it is
   * created. A block whose bitmap would take more than `maxBitmapBytes` (256 MiB) is refused.
   */
  constructor(size: Bytes, options: RamBlockAttributesOptions = {}) {
    const { granularity, granules } = blockGeometry(size, options);
    const name = checkName(options.name ?? 'ram-block');
    this.listenerTimeoutMs = checkTimeout(options.listenerTimeoutMs);
    this.granularity = granularity;
    this.perByte = 1 / granularity;
    this.granules = granules;
    // In a SharedArrayBuffer whether or not the block is ever shared: a bitmap over plain
    // memory would have to be copied to be shared, and typed-array access costs the same.
    this.memory = trackerMemory(options.memory, granules, COUNT_BYTES + PageBitmap.bytesFor(granules));
    this.counts = new Float64Array(this.memory, 0, 1);
    this.bitmap = new PageBitmap(granules, { buffer: this.memory, byteOffset: COUNT_BYTES });
    this.name = name;
  }

  /** Block size in bytes: a number where exact, else a bigint. */
  get size(): Bytes {
    return bytesOf(this.granules, this.granularity);
  }

  get sharedGranules(): number {
    return this.counts[0]!;
  }

  get privateGranules(): number {
    return this.granules - this.counts[0]!;
  }

  /**
   * True while one of this tracker's listeners (or a replay callback) runs. Anything that
   * queues behind the change in progress (RamBlock.convert does) would deadlock if called
   * from there: check this and refuse, as stateChange does.
   */
  get inNotification(): boolean {
    return this.notifying;
  }

  /**
   * True when a state change can run synchronously now: every listener declared itself
   * synchronous, no operation is queued or running, and no listener is being notified.
   */
  get canChangeSync(): boolean {
    return this.asyncListeners === 0 && this.queue.idle && !this.notifying && !this.changing;
  }

  /**
   * Why a synchronous change is refused now (null when it is not): a listener that is not
   * synchronous (ERR_GUESTMEM_ASYNC_LISTENER, naming it) or an operation in flight
   * (ERR_GUESTMEM_BUSY). Throws ERR_GUESTMEM_REENTRANT_CALL from inside a notification.
   */
  syncRefusal(operation: string): GuestmemError | null {
    this.refuseReentry(operation);
    if (this.asyncListeners > 0) {
      let name = 'listener';
      for (let r = this.newest; r; r = r.older) if (!r.synchronous) name = r.name;
      return new GuestmemError(
        'ERR_GUESTMEM_ASYNC_LISTENER',
        `${operation} on ${this.name} needs every listener to be synchronous, and "${name}" does not declare it (synchronous: true): use the asynchronous call`,
      );
    }
    if (!this.queue.idle) {
      return new GuestmemError('ERR_GUESTMEM_BUSY', `${operation} on ${this.name}: an asynchronous operation (register, unregister, replay or a change) is still in flight; await it first`);
    }
    if (this.changing) {
      // A state-change subscriber runs inside the change it hears of: a change made there
      // would run inside it, on the run list it is still reading.
      return new GuestmemError('ERR_GUESTMEM_BUSY', `${operation} on ${this.name}: called from inside a change (a state-change subscriber); use stateChange, which queues behind it`);
    }
    return null;
  }

  /** The registered listeners, newest first. */
  get listeners(): RamDiscardListener[] {
    const result: RamDiscardListener[] = [];
    for (let r = this.newest; r; r = r.older) result.push(r.listener);
    return result;
  }

  /** Each listener with its section in granules, newest first. */
  get registered(): ReadonlyArray<{ readonly listener: RamDiscardListener; readonly section: GranuleRange }> {
    const result: Array<{ listener: RamDiscardListener; section: GranuleRange }> = [];
    for (let r = this.newest; r; r = r.older) result.push({ listener: r.listener, section: r.section });
    return result;
  }

  /** Each registration's id with its listener and section, newest first (what a descriptor of the block carries). */
  get registrations(): ReadonlyArray<{ readonly id: number; readonly listener: RamDiscardListener; readonly section: GranuleRange }> {
    const result: Array<{ id: number; listener: RamDiscardListener; section: GranuleRange }> = [];
    for (let r = this.newest; r; r = r.older) result.push({ id: r.id, listener: r.listener, section: r.section });
    return result;
  }

  /**
   * @internal For a tracker over another's memory (a block attached in a worker): takes
   * these registrations, newest first, as its own, with no notification (the tracker that
   * registered them has notified them already). Every listener must be synchronous.
   */
  adoptRegistrations(registrations: ReadonlyArray<{ id: number; listener: RamDiscardListener; section: GranuleRange }>): void {
    const adopted: Registration[] = registrations.map(({ id, listener, section }) => {
      const checked = checkListener(listener);
      if (!checked.synchronous) throw notSynchronous(checked.name);
      return { id, listener, section, ...checked, newer: null, older: null };
    });
    for (let i = 0; i < adopted.length; i++) {
      adopted[i]!.older = adopted[i + 1] ?? null;
      adopted[i]!.newer = adopted[i - 1] ?? null;
    }
    this.newest = adopted[0] ?? null;
    this.byListener.clear();
    for (const registration of adopted) this.byListener.set(registration.listener, registration);
    this.asyncListeners = 0;
  }

  /**
   * @internal Counts the shared granules again from the bitmap, O(block / 32): after a thread
   * died holding the block's lock, between a change of the bitmap and of its count.
   */
  recount(): void {
    this.counts[0] = this.bitmap.countSet(0, this.granules);
  }

  /** Validates a byte range of this block and returns it in granules. */
  range(offset: Bytes, size: Bytes, what = 'range'): GranuleRange {
    return toGranuleRange(offset, size, this.granularity, this.granules, what);
  }

  /** True iff every granule of the range is shared (QEMU: is_populated). */
  isPopulated(section: SectionInput): boolean {
    const range = this.sectionRange(section);
    return this.bitmap.isAllSet(range.first, range.count);
  }

  /** True iff every granule of the range is private. */
  isDiscarded(section: SectionInput): boolean {
    const range = this.sectionRange(section);
    return this.bitmap.isAllClear(range.first, range.count);
  }

  /** Maximal runs of shared (or private) granules, in granule indices, ascending. */
  runs(state: PageState, section?: SectionInput): Run[] {
    const shared = checkState(state);
    const range = section === undefined ? null : this.sectionRange(section);
    return this.bitmap.runs(range?.first ?? 0, range?.count ?? this.granules, shared);
  }

  /** Shared granules inside a range; O(range / 32). */
  countShared(section: SectionInput): number {
    const range = this.sectionRange(section);
    return this.bitmap.countSet(range.first, range.count);
  }

  /**
   * What a listener holds of [first, first + count) (granules): the shared runs that every
   * other discard source (a plug source) calls populated too, ascending.
   */
  populatedRuns(first = 0, count = this.granules): Run[] {
    return populatedBySources(this.bitmap.runs(first, count, true), this.sources);
  }

  /**
   * Adds a discard source besides the bitmap (a plug source): from now on listeners are
   * told, and hold, only what it calls populated too. It must call everything populated
   * now (what listeners already hold stays theirs); it changes through sourceChange.
   */
  addSource(source: DiscardSource): void {
    if (source.discarded !== 0) throw invalidArgValue(`discard source "${source.name}" of ${this.name} must start with nothing discarded`);
    this.sources.push(source);
  }

  /**
   * Adds a listener for a section of the block and replays every shared run inside it to
   * its populate. If a replay fails, the runs already populated are discarded again and
   * the listener is not registered. The listener is checked first: populate and discard
   * must be functions, populateRuns and discardRuns functions where present.
   */
  register(listener: RamDiscardListener, section: SectionInput): Promise<void> {
    this.refuseReentry('register');
    const checked = checkListener(listener);
    const range = this.sectionRange(section);
    return this.queue.run(() => this.guarded('register', range, async () => {
      if (this.byListener.has(listener)) {
        throw new GuestmemError('ERR_GUESTMEM_ALREADY_REGISTERED', `listener "${checked.name}" is already registered on ${this.name}`);
      }
      const registration: Registration = { id: this.nextId++, listener, section: range, ...checked, newer: null, older: null };
      if (checked.attach) {
        try {
          // An async attach is awaited: its rejection refuses the registration like a throw
          // would, instead of escaping as an unhandled rejection after register resolved.
          const answer = this.call(listener, checked.attach, range);
          if (isThenable(answer)) await this.settle(answer);
        } catch (cause) {
          throw this.listenerFailed(registration, 'attach', [range], cause);
        }
      }
      await this.notifyRuns(registration, this.toRanges(this.populatedRuns(range.first, range.count)), 'populate');
      registration.older = this.newest;
      if (this.newest) this.newest.newer = registration;
      this.newest = registration;
      this.byListener.set(listener, registration);
      if (!registration.synchronous) this.asyncListeners++;
    }));
  }

  /**
   * Removes a listener after discarding what it holds: one whole-section discard if it
   * supports double discard, else one per shared run. If a discard fails the listener stays
   * registered, with what it had discarded populated again.
   */
  unregister(listener: RamDiscardListener): Promise<void> {
    this.refuseReentry('unregister');
    checkListenerObject(listener);
    return this.queue.run(() => this.guarded('unregister', this.byListener.get(listener)?.section ?? null, async () => {
      const registration = this.byListener.get(listener);
      if (!registration) {
        throw new GuestmemError('ERR_GUESTMEM_NOT_REGISTERED', `listener "${listenerName(listener)}" is not registered on ${this.name}`);
      }
      const { section } = registration;
      const ranges = registration.doubleDiscardSupported ? [section] : this.toRanges(this.populatedRuns(section.first, section.count));
      await this.notifyRuns(registration, ranges, 'discard');
      if (registration.newer) registration.newer.older = registration.older;
      else this.newest = registration.older;
      if (registration.older) registration.older.newer = registration.newer;
      this.byListener.delete(listener);
      if (!registration.synchronous) this.asyncListeners--;
    }));
  }

  /**
   * @internal Called around each register and unregister while it runs: RamBlock takes its
   * lock there (so that no thread converts while the registry changes) and, when the
   * registry changed, tells the threads it is shared with before releasing it.
   */
  registryGuard: { enter(kind: 'register' | 'unregister', section: GranuleRange | null): void; exit(changed: boolean): void } | null = null;

  private async guarded(kind: 'register' | 'unregister', section: GranuleRange | null, op: () => Promise<void>): Promise<void> {
    const guard = this.registryGuard;
    if (guard === null) return op();
    guard.enter(kind, section);
    let changed = false;
    try {
      await op();
      changed = true;
    } finally {
      guard.exit(changed);
    }
  }

  /** Calls `fn` for each maximal shared run in the section; stops at, and rethrows, the first error. */
  replayPopulated(section: SectionInput, fn: (range: GranuleRange) => void | PromiseLike<void>): Promise<void> {
    return this.replay(section, true, fn);
  }

  /** Calls `fn` for each maximal private run in the section; stops at, and rethrows, the first error. */
  replayDiscarded(section: SectionInput, fn: (range: GranuleRange) => void | PromiseLike<void>): Promise<void> {
    return this.replay(section, false, fn);
  }

  /**
   * Converts a range to `to`. Already there: nothing. Wholly the other state: one
   * notification per listener with the range clipped to its section. A mixture: only the
   * granules that change, one notification per changed run (or one batch of them for a
   * listener that takes batches). Invalid input throws at once and changes nothing; a
   * failing listener rolls the whole change back and the promise rejects with
   * ERR_GUESTMEM_LISTENER_FAILED. Called from inside a listener of this block, it throws
   * ERR_GUESTMEM_REENTRANT_CALL at once, and the change that listener is part of fails.
   * Changes run in call order with the other operations; when nothing is queued and every
   * listener is synchronous, the change is made before this returns (see stateChangeSync).
   */
  stateChange(offset: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult> {
    this.refuseReentry('stateChange');
    const range = this.range(offset, size);
    const toShared = checkState(to, 'target state');
    if (this.canChangeSync) {
      try {
        return Promise.resolve(this.changeSync(range, toShared));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.queue.run(async () => (this.asyncListeners === 0 ? this.changeSync(range, toShared) : this.changeAsync(range, toShared)));
  }

  /**
   * stateChange, made before it returns: no promise, no closure, no allocation but the range
   * and the result (and, for a mixture, one GranuleRange per run a listener is told of).
   * Only while every listener is synchronous and nothing is in flight (canChangeSync):
   * otherwise it throws ERR_GUESTMEM_ASYNC_LISTENER or ERR_GUESTMEM_BUSY and changes
   * nothing. A failing listener rolls the change back and it throws, as stateChange rejects.
   */
  stateChangeSync(offset: Bytes, size: Bytes, to: PageState, into?: StateChangeResult): StateChangeResult {
    if (!this.canChangeSync) {
      const refusal = this.syncRefusal('stateChangeSync');
      if (refusal) throw refusal;
    }
    if (typeof offset === 'number' && typeof size === 'number') {
      // The common block's fast path: granule indices that are int32 (a block of fewer than
      // 2^31 granules), found by a multiply (exact: the granularity is a power of two) and
      // checked by comparisons alone; anything else (a bigint, a fraction, a misaligned or
      // out-of-range value, a larger block) takes range(), which names what is wrong.
      const first = offset * this.perByte;
      const count = size * this.perByte;
      if ((first | 0) === first && (count | 0) === count && first >= 0 && count > 0 && first + count <= this.granules) {
        return this.changeGranules(first, count, checkState(to, 'target state'), null, into);
      }
    }
    return this.changeSync(this.range(offset, size), checkState(to, 'target state'), into);
  }

  /**
   * A change of another discard source (a plug or unplug), with the listeners told in call
   * order with the state changes: `change.apply()` changes the source and names the granules
   * it changed; the listeners are told to populate (or discard) those of them that are
   * shared and populated by every other source, newest first, as a state change tells
   * them. A listener that fails rolls the listeners back, `change.revert()` restores the
   * source, and the call rejects as stateChange does. The bitmap never changes.
   */
  sourceChange(change: SourceChange): Promise<number> {
    this.refuseReentry('sourceChange');
    if (this.canChangeSync) {
      try {
        return Promise.resolve(this.changeSourceSync(change));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.queue.run(async () => (this.asyncListeners === 0 ? this.changeSourceSync(change) : this.changeSourceAsync(change)));
  }

  /** sourceChange, made before it returns; only while canChangeSync (else it throws as stateChangeSync does). */
  sourceChangeSync(change: SourceChange): number {
    if (!this.canChangeSync) {
      const refusal = this.syncRefusal('sourceChangeSync');
      if (refusal) throw refusal;
    }
    return this.changeSourceSync(change);
  }

  /**
   * Applies a source's change and puts the granules the listeners are to be told of in
   * this.told; the change in progress is the span they lie in (what clip() hands a listener
   * whole). False when there is nothing to tell.
   */
  private sourceRuns(change: SourceChange): boolean {
    this.changes.clear();
    const told = this.masked;
    told.clear();
    const others = this.sources.filter((source) => source !== change.source);
    for (const [first, count] of change.apply()) {
      for (const [f, c] of populatedBySources(this.bitmap.runs(first, count, true), others)) told.push(f, c);
    }
    this.told = told;
    if (told.length === 0) return false;
    this.changeFirst = told.first(0);
    this.changeCount = told.first(told.length - 1) + told.count(told.length - 1) - this.changeFirst;
    this.changeRangeObject = null;
    return true;
  }

  private changeSourceSync(change: SourceChange): number {
    this.changing = true;
    try {
      const any = this.sourceRuns(change);
      try {
        if (any && this.newest !== null) this.notifySync(change.populate);
      } catch (error) {
        change.revert();
        throw error;
      }
      return this.told.total;
    } finally {
      this.changing = false;
    }
  }

  private async changeSourceAsync(change: SourceChange): Promise<number> {
    const any = this.sourceRuns(change);
    const told = this.told.total;
    try {
      if (any) await this.applyRuns([], change.populate);
    } catch (error) {
      change.revert();
      throw error;
    }
    return told;
  }

  /**
   * The state change of a range this tracker has validated (range()), made now, with every
   * listener synchronous: the conversion path of RamBlock hands its one range object down.
   * The caller has checked canChangeSync.
   */
  changeSync(range: GranuleRange, toShared: boolean, into?: StateChangeResult): StateChangeResult {
    return this.changeGranules(range.first, range.count, toShared, range, into);
  }

  /**
   * changeSync on granules [first, first + count), checked by the caller; `range` is their
   * GranuleRange where the caller has one. With `into`, the result is written there and no
   * object is made (a caller converting in a loop keeps one); else a fresh plain object.
   */
  private changeGranules(first: number, count: number, toShared: boolean, range: GranuleRange | null, into: StateChangeResult | undefined): StateChangeResult {
    this.changing = true;
    try {
      const held = this.convertBitmap(first, count, range, toShared);
      const changed = this.changes.total;
      if (this.told.length > 0 && this.newest !== null) this.notifySync(toShared);
      return this.finish(FROM[held], toShared, changed, into);
    } finally {
      this.changing = false;
    }
  }

  /** The runs the last change flipped (valid until the next change), as Run tuples. */
  lastChanges(): Run[] {
    return this.changes.toRuns();
  }

  private finish(from: StateChangeResult['from'], toShared: boolean, changed: number, into?: StateChangeResult): StateChangeResult {
    const to: PageState = toShared ? 'shared' : 'private';
    // Read before publishing: a subscriber may start another change.
    let result: StateChangeResult;
    if (into === undefined) {
      result = { from, to, changed, changedRuns: this.changes.length };
    } else {
      result = into;
      result.from = from;
      result.to = to;
      result.changed = changed;
      result.changedRuns = this.changes.length;
    }
    if (stateChangeChannel.hasSubscribers) this.publish(from, to);
    return result;
  }

  /** QEMU's ram_block_attributes_state_change tracepoint; apart from finish so that finish stays small enough to inline. */
  private publish(from: StateChangeResult['from'], to: PageState): void {
    stateChangeChannel.publish({ block: this.name, ...this.changeRange().toJSON(), from, to });
  }

  /** The asynchronous form of changeSync, for listeners that may return promises. */
  private async changeAsync(range: GranuleRange, toShared: boolean): Promise<StateChangeResult> {
    const held = this.convertBitmap(range.first, range.count, range, toShared);
    const changed = this.changes.total;
    const runs = this.changes.toRuns();
    await this.applyRuns(runs, toShared);
    return this.finish(FROM[held], toShared, changed);
  }

  private replay(section: SectionInput, shared: boolean, fn: (range: GranuleRange) => void | PromiseLike<void>): Promise<void> {
    this.refuseReentry(shared ? 'replayPopulated' : 'replayDiscarded');
    const range = this.sectionRange(section);
    checkReplayCallback(fn);
    return this.queue.run(async () => {
      for (const [first, count] of this.bitmap.runs(range.first, range.count, shared)) {
        const result = this.call(undefined, fn, new GranuleRange(first, count, this.granularity));
        if (isThenable(result)) await this.settle(result);
      }
    });
  }

  /** A section of this block checked (an object, aligned, inside) and in granules; throws as register does. */
  sectionRange(section: SectionInput): GranuleRange {
    const { offset, size } = checkSection(section, 'section');
    return this.range(offset, size, 'section');
  }

  private refuseReentry(operation: string): void {
    if (!this.notifying) return;
    this.reentry = new GuestmemError(
      'ERR_GUESTMEM_REENTRANT_CALL',
      `${operation} on ${this.name} was called from inside one of its own listeners, which would wait for itself: ` +
        'a listener must not change the block it listens to (defer the call until the change has settled)',
    );
    throw this.reentry;
  }

  /**
   * Calls a listener's method (or a replay callback) with the re-entry guard up. A call
   * back into this tracker throws at once; if the listener swallowed that error, its
   * notification fails anyway, so the change it is part of rolls back.
   */
  private call<A>(listener: unknown, method: (arg: A) => unknown, arg: A): unknown {
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
    const reentry = this.reentry;
    if (reentry !== null) {
      this.reentry = null;
      abandon(result);
      throw reentry;
    }
    return result;
  }

  /**
   * A listener's promise, bounded by listenerTimeoutMs where one is set. After a timeout
   * the listener may still finish: the error says it is out of step and should go.
   */
  private settle(result: PromiseLike<unknown>): PromiseLike<unknown> {
    const ms = this.listenerTimeoutMs;
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

  /**
   * A change's bitmap step: makes granules [first, first + count) (`range`, where the caller
   * has it) the change in progress, flips them, puts the runs that changed in this.changes,
   * counts them.
   */
  private convertBitmap(first: number, count: number, range: GranuleRange | null, toShared: boolean): Held {
    this.changeFirst = first;
    this.changeCount = count;
    this.changeRangeObject = range;
    const held = this.bitmap.convert(first, count, toShared, this.changes);
    this.counts[0] += toShared ? this.changes.total : -this.changes.total;
    // Masked only while another source discards something: a block nobody unplugs pays one test.
    this.told = this.sources.length === 0 || !anyDiscarded(this.sources) ? this.changes : this.maskChanges();
    return held;
  }

  /** The change in progress as a GranuleRange, made on first use. */
  private changeRange(): GranuleRange {
    return (this.changeRangeObject ??= granuleRangeOf(this.changeFirst, this.changeCount, this.granularity));
  }

  /**
   * The part of run [first, first + count) of the change in progress inside `section`, or
   * null when they do not meet; the change's own range object when the run is the whole
   * change (the common case: one range object per conversion, handed to every listener).
   */
  private clip(section: GranuleRange, first: number, count: number): GranuleRange | null {
    const start = Math.max(section.first, first);
    const end = Math.min(section.first + section.count, first + count);
    if (start >= end) return null;
    if (start === this.changeFirst && end - start === this.changeCount) return this.changeRange();
    return granuleRangeOf(start, end - start, this.granularity);
  }

  /** The runs of this.changes that every other discard source calls populated, in this.masked. */
  private maskChanges(): RunList {
    maskRunList(this.changes, this.sources, this.masked);
    return this.masked;
  }

  /** Flips granules of a range this tracker has checked (hence the unchecked fill). */
  private flip(first: number, count: number, toShared: boolean): void {
    this.bitmap.fill(first, count, toShared);
    this.counts[0] += toShared ? count : -count;
  }

  private toRanges(runs: Run[]): GranuleRange[] {
    return runs.map(([first, count]) => new GranuleRange(first, count, this.granularity));
  }

  /**
   * Notifies, on runs convert() has flipped already, every listener whose section they meet, newest first,
   * each with all of its clipped runs (in one call where it takes batches). On a failure,
   * undoes in reverse order what was done for this change, flips the runs back, rethrows.
   */
  private async applyRuns(runs: Run[], toShared: boolean): Promise<void> {
    if (this.told.length === 0) return;
    const kind: Notify = toShared ? 'populate' : 'discard';
    const done: Delivery[] = [];
    try {
      for (let registration = this.newest; registration; registration = registration.older) {
        const clipped = this.clipped(registration, this.told.length);
        if (clipped.length > 0) await this.deliver(registration, kind, clipped, done);
      }
    } catch (failure) {
      const rollbackErrors = await this.undo(done, kind);
      for (let i = runs.length - 1; i >= 0; i--) this.flip(runs[i]![0], runs[i]![1], !toShared);
      throw this.withRollbackErrors(failure, rollbackErrors);
    }
  }

  /** The first `runs` runs of the change in progress, clipped to a listener's section. */
  private clipped(registration: Registration, runs: number): GranuleRange[] {
    const changes = this.told;
    const ranges: GranuleRange[] = [];
    for (let i = 0; i < runs; i++) {
      const part = this.clip(registration.section, changes.first(i), changes.count(i));
      if (part) ranges.push(part);
    }
    return ranges;
  }

  /**
   * applyRuns for synchronous listeners, on the runs already flipped in this.changes: every
   * listener whose section they meet, newest first, each called straight from here (one run
   * or one batch at a time) under one re-entry guard for the whole fan-out. A change of one
   * run (the common case) hands each listener the conversion's own range object. On a
   * failure it undoes, last first, what was delivered, restores the bitmap and throws.
   */
  private notifySync(toShared: boolean): void {
    const kind: Notify = toShared ? 'populate' : 'discard';
    const changes = this.told;
    let registration = this.newest;
    // For a listener told run by run: the runs of this.changes it has been told of.
    let told = 0;
    // What the listener being called was handed (set before each call), and the failure its answer amounts to.
    let arg: GranuleRange | GranuleRange[] = NO_RANGES;
    let broken: GuestmemError | null = null;
    this.notifying = true;
    try {
      for (; registration !== null; registration = registration.older) {
        told = 0;
        const batch = toShared ? registration.populateRuns : registration.discardRuns;
        if (batch !== undefined) {
          const ranges = this.clipped(registration, changes.length);
          if (ranges.length === 0) continue;
          arg = ranges;
          const result = batch.call(registration.listener, ranges);
          if (result !== undefined || this.reentry !== null) broken = this.brokenDelivery(registration, kind, ranges, result);
          if (broken !== null) throw broken;
          continue;
        }
        // Run by run, straight from the run list: no list of ranges is built.
        const single = toShared ? registration.populate : registration.discard;
        for (; told < changes.length; told++) {
          const part = this.clip(registration.section, changes.first(told), changes.count(told));
          if (part === null) continue;
          arg = part;
          const result = single.call(registration.listener, part);
          if (result !== undefined || this.reentry !== null) broken = this.brokenDelivery(registration, kind, part, result);
          if (broken !== null) throw broken;
        }
      }
      this.notifying = false;
    } catch (cause) {
      this.notifying = false;
      let failure: unknown = cause;
      if (cause !== broken) {
        // The listener threw (the re-entry error, or its own): its notification failed.
        this.reentry = null;
        failure = this.listenerFailed(registration!, kind, Array.isArray(arg) ? arg : [arg], cause);
      }
      const errors = this.undoSync(registration!, told, kind);
      const flipped = this.changes;
      for (let i = flipped.length - 1; i >= 0; i--) this.flip(flipped.first(i), flipped.count(i), !toShared);
      throw this.withRollbackErrors(failure, errors);
    }
  }

  /**
   * What a synchronous listener's normal return amounts to: null when it kept its promises;
   * else the failure, when it swallowed the re-entry error of a call back into this tracker,
   * or returned a promise (a populate's late result is retracted when it settles).
   */
  private brokenDelivery(registration: Registration, kind: Notify, arg: GranuleRange | GranuleRange[], result: unknown): GuestmemError | null {
    const ranges = Array.isArray(arg) ? arg : [arg];
    const reentry = this.reentry;
    if (reentry !== null) {
      this.reentry = null;
      abandon(result);
      return this.listenerFailed(registration, kind, ranges, reentry);
    }
    if (!isThenable(result)) return null;
    // The change is rolled back now, but what the listener started may land later: a
    // populate landing after the rollback would map granules the tracker calls private.
    if (kind === 'populate') this.retractWhenSettled(registration, ranges, result);
    else abandon(result);
    return this.listenerFailed(registration, kind, ranges, notSynchronous(registration.name));
  }

  /** One call of a synchronous listener (the undo path): a promise breaks its contract and fails the call. */
  private deliverOne<A extends GranuleRange | GranuleRange[]>(registration: Registration, method: (arg: A) => unknown, kind: Notify, arg: A): void {
    let result: unknown;
    try {
      result = this.call(registration.listener, method, arg);
    } catch (cause) {
      throw this.listenerFailed(registration, kind, Array.isArray(arg) ? arg : [arg as GranuleRange], cause);
    }
    const broken = this.brokenDelivery(registration, kind, arg, result);
    if (broken !== null) throw broken;
  }

  /**
   * When a populate that broke its promise to be synchronous settles, tells the listener to
   * discard whatever of its ranges the tracker calls private by then (when in doubt, unmap).
   * Its failures are left to the block's agreement check: nothing is waiting for them.
   */
  private retractWhenSettled(registration: Registration, ranges: GranuleRange[], late: PromiseLike<unknown>): void {
    const retract = (): void => {
      let registered = false;
      for (let r = this.newest; r; r = r.older) if (r === registration) registered = true;
      if (!registered) return;
      for (const range of ranges) {
        const end = range.first + range.count;
        for (let first = this.bitmap.scan(range.first, end, false); first < end; ) {
          const stop = this.bitmap.scan(first, end, true);
          try {
            abandon(this.call(registration.listener, registration.discard, granuleRangeOf(first, stop - first, this.granularity)));
          } catch {
            // The agreement check (disagreements(), repair()) sees what is still mapped.
          }
          first = stop < end ? this.bitmap.scan(stop, end, false) : end;
        }
      }
    };
    Promise.resolve(late).then(retract, retract);
  }

  /**
   * Undoes a synchronous notification that failed at `failed` (whose first `delivered`
   * single ranges went through): the inverse to each listener told before, last first, as
   * the asynchronous undo does from its log. Returns what failed.
   */
  private undoSync(failed: Registration, told: number, kind: Notify): unknown[] {
    const errors: unknown[] = [];
    const undoKind = inverse(kind);
    for (let registration: Registration | null = failed; registration; registration = registration.newer) {
      const asBatch = (kind === 'populate' ? registration.populateRuns : registration.discardRuns) !== undefined;
      // The failed listener itself: a batch did nothing (all or nothing); run by run, the
      // runs before the one that failed went through.
      if (registration === failed && asBatch) continue;
      const ranges = this.clipped(registration, registration === failed ? told : this.told.length);
      if (ranges.length === 0) continue;
      if (asBatch) {
        try {
          this.deliverAllSync(registration, undoKind, ranges);
        } catch (error) {
          errors.push(error);
        }
        continue;
      }
      for (let i = ranges.length - 1; i >= 0; i--) {
        try {
          this.deliverAllSync(registration, undoKind, [ranges[i]!]);
        } catch (error) {
          errors.push(error);
        }
      }
    }
    return errors;
  }

  /** deliver, synchronously: in one call where the listener takes batches, else one by one. */
  private deliverAllSync(registration: Registration, kind: Notify, ranges: GranuleRange[]): void {
    const batch = kind === 'populate' ? registration.populateRuns : registration.discardRuns;
    if (batch) {
      this.deliverOne(registration, batch, kind, ranges);
      return;
    }
    const single = kind === 'populate' ? registration.populate : registration.discard;
    for (const range of ranges) this.deliverOne(registration, single, kind, range);
  }

  /** Notifies one listener of several ranges, undoing its earlier ones if a later one fails. */
  private async notifyRuns(registration: Registration, ranges: GranuleRange[], kind: Notify): Promise<void> {
    if (ranges.length === 0) return;
    const done: Delivery[] = [];
    try {
      await this.deliver(registration, kind, ranges, done);
    } catch (failure) {
      throw this.withRollbackErrors(failure, await this.undo(done, kind));
    }
  }

  /**
   * Hands ranges to one listener: in one call if it takes batches (all or nothing), else
   * one by one. Records in `done` what it accepted; throws ERR_GUESTMEM_LISTENER_FAILED.
   */
  private async deliver(registration: Registration, kind: Notify, ranges: GranuleRange[], done: Delivery[]): Promise<void> {
    const batch = kind === 'populate' ? registration.populateRuns : registration.discardRuns;
    if (batch) {
      try {
        const result = this.call(registration.listener, batch, ranges);
        if (isThenable(result)) await this.settle(result);
      } catch (cause) {
        throw this.listenerFailed(registration, kind, ranges, cause);
      }
      done.push([registration, ranges]);
      return;
    }
    const single = kind === 'populate' ? registration.populate : registration.discard;
    for (const range of ranges) {
      try {
        const result = this.call(registration.listener, single, range);
        if (isThenable(result)) await this.settle(result);
      } catch (cause) {
        throw this.listenerFailed(registration, kind, [range], cause);
      }
      done.push([registration, [range]]);
    }
  }

  /** Sends the inverse notification for each delivery, last first; returns what failed. */
  private async undo(done: Delivery[], kind: Notify): Promise<unknown[]> {
    const errors: unknown[] = [];
    for (let i = done.length - 1; i >= 0; i--) {
      const [registration, ranges] = done[i]!;
      try {
        await this.deliver(registration, inverse(kind), ranges, []);
      } catch (error) {
        errors.push(error);
      }
    }
    return errors;
  }

  private listenerFailed(registration: Registration, kind: Notify | 'attach', ranges: GranuleRange[], cause: unknown): GuestmemError {
    const { name } = registration;
    const what = kind === 'attach' ? `accept its section ${ranges[0]}` : `${kind} ${describeRanges(ranges)}`;
    const error = Object.assign(
      new GuestmemError('ERR_GUESTMEM_LISTENER_FAILED', `listener "${name}" failed to ${what} of ${this.name}: ${message(cause)}`, { cause }),
      { listener: name, operation: kind, ranges: ranges.map((r) => r.toJSON()) },
    );
    // The block finds the listener by this, never by its name, which two listeners may share.
    Object.defineProperty(error, 'registered', { value: registration.listener, enumerable: false });
    return error;
  }

  /** A rollback that itself failed leaves listeners out of step: say so, loudly. */
  private withRollbackErrors(failure: unknown, rollbackErrors: unknown[]): unknown {
    if (rollbackErrors.length === 0) return failure;
    return Object.assign(
      new GuestmemError(
        'ERR_GUESTMEM_ROLLBACK_FAILED',
        `${message(failure)}; rolling back also failed, listeners may disagree with the tracker: ${rollbackErrors.map(message).join('; ')}`,
        { cause: failure },
      ),
      { errors: rollbackErrors },
    );
  }
}
