// The shared/private tracker of one RAM block and the fan-out of its conversions to
// listeners: QEMU's RamBlockAttributes (its RamDiscardManager for guest_memfd), with one
// change of policy: a listener that fails does not end the process, the change is rolled
// back so that the bitmap, every listener and the caller agree. This file is the public
// face and the sequencing: it checks arguments (tracker-arguments.ts), keeps operations in
// call order (a Serializer, for the asynchronous calls only), and drives the one fan-out
// (fan-out.ts) synchronously or asynchronously over the pure state (tracker-state.ts, the
// bitmap; tracker-registry.ts, the listeners).

import { GranuleRange, bytesOf, toGranuleRange, type Bytes } from '../common/byte-range';
import { GuestmemError } from '../common/errors';
import { PageBitmap, type Run } from './page-bitmap';
import { Serializer } from '../common/serializer';
import { checkListener, type RamDiscardListener } from './ram-discard-listener';
import { registerListener, unregisterListener, type RegistrationParts } from './listener-registration';
import type { DiscardSource, SourceChange } from './discard-source';
import { stateChangeChannel, type PageState } from './state-change-channel';
import { FanOut, fanOutAsync, fanOutSync } from './fan-out';
import { ListenerCalls, isThenable } from './listener-calls';
import { TrackerRegistry, type RegistrationRecord } from './tracker-registry';
import { COUNT_BYTES, TrackerState } from './tracker-state';
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

/** What a range was, by what its bits held before a change. */
const FROM: ReadonlyArray<StateChangeResult['from']> = ['private', 'shared', 'mixture'];

/**
 * QEMU's RamBlockAttributes: which granules of a block are shared, and the fan-out of every
 * change to the registered listeners, rolled back if one fails.
 */
export class RamBlockAttributes {
  readonly name: string;
  readonly granularity: number;
  /** Size of the block in granules. */
  readonly granules: number;
  /** The tracker's SharedArrayBuffer: the shared count, then the bitmap's words. */
  readonly memory: SharedArrayBuffer;
  private readonly state: TrackerState;
  private readonly registry = new TrackerRegistry();
  private readonly calls: ListenerCalls;
  /** What register and unregister work on (listener-registration.ts). */
  private readonly parts: RegistrationParts;
  /** The synchronous path's fan-out, reused change after change: no allocation per conversion. */
  private readonly fan: FanOut;
  /** Operations that call listeners asynchronously run one at a time, in call order. */
  private readonly queue = new Serializer();
  /**
   * True while a synchronous change runs: a change asked for from code it calls out to (a
   * diagnostics subscriber) is queued behind it, so it cannot reuse the run lists under it.
   */
  private changing = false;
  /** 1 / granularity: exact for a power of two, so byte offsets become granules by a multiply, not a division. */
  private readonly perByte: number;

  /**
   * A block of `size` bytes, tracked at `granularity` bytes (a power of two, default 4096).
   * Every granule starts private, as KVM makes a guest_memfd-backed slot private when it is
   * created. A block whose bitmap would take more than `maxBitmapBytes` (256 MiB) is refused.
   */
  constructor(size: Bytes, options: RamBlockAttributesOptions = {}) {
    const { granularity, granules } = blockGeometry(size, options);
    const name = checkName(options.name ?? 'ram-block');
    const listenerTimeoutMs = checkTimeout(options.listenerTimeoutMs);
    this.granularity = granularity;
    this.perByte = 1 / granularity;
    this.granules = granules;
    // In a SharedArrayBuffer whether or not the block is ever shared: a bitmap over plain
    // memory would have to be copied to be shared, and typed-array access costs the same.
    this.memory = trackerMemory(options.memory, granules, COUNT_BYTES + PageBitmap.bytesFor(granules));
    this.state = new TrackerState(granules, granularity, this.memory);
    this.name = name;
    this.calls = new ListenerCalls(name, listenerTimeoutMs);
    this.fan = new FanOut(this.calls, this.registry, this.state, granularity);
    this.parts = { name, granularity, state: this.state, registry: this.registry, calls: this.calls };
  }

  /** Block size in bytes: a number where exact, else a bigint. */
  get size(): Bytes {
    return bytesOf(this.granules, this.granularity);
  }

  get sharedGranules(): number {
    return this.state.shared;
  }

  get privateGranules(): number {
    return this.granules - this.state.shared;
  }

  /**
   * True while one of this tracker's listeners (or a replay callback) runs. Anything that
   * queues behind the change in progress (RamBlock.convert does) would deadlock if called
   * from there: check this and refuse, as stateChange does.
   */
  get inNotification(): boolean {
    return this.calls.notifying;
  }

  /**
   * True when a state change can run synchronously now: every listener declared itself
   * synchronous, no operation is queued or running, and no listener is being notified.
   */
  get canChangeSync(): boolean {
    return this.registry.asyncListeners === 0 && this.queue.idle && !this.calls.notifying && !this.changing;
  }

  /**
   * @internal Why a synchronous change is refused now (null when it is not): a listener that is not
   * synchronous (ERR_GUESTMEM_ASYNC_LISTENER, naming it) or an operation in flight
   * (ERR_GUESTMEM_BUSY). Throws ERR_GUESTMEM_REENTRANT_CALL from inside a notification.
   */
  syncRefusal(operation: string): GuestmemError | null {
    this.calls.refuseReentry(operation);
    if (this.registry.asyncListeners > 0) {
      return new GuestmemError(
        'ERR_GUESTMEM_ASYNC_LISTENER',
        `${operation} on ${this.name} needs every listener to be synchronous, and "${this.registry.oldestAsyncName()}" does not declare it (synchronous: true): use the asynchronous call`,
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
    return this.registry.records().map((r) => r.listener);
  }

  /** Each listener with its section in granules, newest first. */
  get registered(): ReadonlyArray<{ readonly listener: RamDiscardListener; readonly section: GranuleRange }> {
    return this.registry.records().map(({ listener, section }) => ({ listener, section }));
  }

  /** Each registration's id with its listener and section, newest first (what a descriptor of the block carries). */
  get registrations(): ReadonlyArray<{ readonly id: number; readonly listener: RamDiscardListener; readonly section: GranuleRange }> {
    return this.registry.records();
  }

  /**
   * @internal For a tracker over another's memory (a block attached in a worker): takes
   * these registrations, newest first, as its own, with no notification (the tracker that
   * registered them has notified them already). Every listener must be synchronous.
   */
  replaceRegistrations(registrations: ReadonlyArray<RegistrationRecord>): void {
    this.registry.replace(registrations);
  }

  /**
   * @internal Counts the shared granules again from the bitmap, O(block / 32): after a thread
   * died holding the block's lock, between a change of the bitmap and of its count.
   */
  recount(): void {
    this.state.recount();
  }

  /** Validates a byte range of this block and returns it in granules. */
  range(offset: Bytes, size: Bytes, what = 'range'): GranuleRange {
    return toGranuleRange(offset, size, this.granularity, this.granules, what);
  }

  /** A section of this block checked (an object, aligned, inside) and in granules; throws as register does. */
  sectionRange(section: SectionInput): GranuleRange {
    const { offset, size } = checkSection(section, 'section');
    return this.range(offset, size, 'section');
  }

  /** True iff every granule of the range is shared (QEMU: is_populated). */
  isPopulated(section: SectionInput): boolean {
    const range = this.sectionRange(section);
    return this.state.bitmap.isAllSet(range.first, range.count);
  }

  /** True iff every granule of the range is private. */
  isDiscarded(section: SectionInput): boolean {
    const range = this.sectionRange(section);
    return this.state.bitmap.isAllClear(range.first, range.count);
  }

  /** Maximal runs of shared (or private) granules, in granule indices, ascending. */
  runs(state: PageState, section?: SectionInput): Run[] {
    const shared = checkState(state);
    const range = section === undefined ? null : this.sectionRange(section);
    return this.state.bitmap.runs(range?.first ?? 0, range?.count ?? this.granules, shared);
  }

  /** Shared granules inside a range; O(range / 32). */
  countShared(section: SectionInput): number {
    const range = this.sectionRange(section);
    return this.state.bitmap.countSet(range.first, range.count);
  }

  /**
   * What a listener holds of [first, first + count) (granules): the shared runs that every
   * other discard source (a plug source) calls populated too, ascending.
   */
  populatedRuns(first = 0, count = this.granules): Run[] {
    return this.state.populatedRuns(first, count);
  }

  /**
   * Adds a discard source besides the bitmap (a plug source): from now on listeners are
   * told, and hold, only what it calls populated too. It must call everything populated
   * now (what listeners already hold stays theirs); it changes through sourceChange.
   * `inEffect`: the source's discards are already in effect for the listeners (a tracker
   * over another thread's memory, whose listeners' holdings are shared state), so it may
   * discard something now.
   */
  addSource(source: DiscardSource, options: { inEffect?: boolean } = {}): void {
    this.state.addSource(source, this.name, options.inEffect === true);
  }

  /** The runs the last change flipped (valid until the next change), as Run tuples. */
  lastChanges(): Run[] {
    return this.state.changes.toRuns();
  }

  /**
   * Adds a listener for a section of the block and replays every shared run inside it to
   * its populate. If a replay fails, the runs already populated are discarded again and
   * the listener is not registered. The listener is checked first: populate and discard
   * must be functions, populateRuns and discardRuns functions where present.
   */
  register(listener: RamDiscardListener, section: SectionInput): Promise<void> {
    this.calls.refuseReentry('register');
    const checked = checkListener(listener);
    const range = this.sectionRange(section);
    return this.queue.run(() => this.guarded('register', range, () => registerListener(this.parts, listener, checked, range)));
  }

  /**
   * Removes a listener after discarding what it holds: one whole-section discard if it
   * supports double discard, else one per shared run. If a discard fails the listener stays
   * registered, with what it had discarded populated again.
   */
  unregister(listener: RamDiscardListener): Promise<void> {
    this.calls.refuseReentry('unregister');
    checkListenerObject(listener);
    return this.queue.run(() => this.guarded('unregister', this.registry.get(listener)?.section ?? null, () => unregisterListener(this.parts, listener)));
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

  private replay(section: SectionInput, shared: boolean, fn: (range: GranuleRange) => void | PromiseLike<void>): Promise<void> {
    this.calls.refuseReentry(shared ? 'replayPopulated' : 'replayDiscarded');
    const range = this.sectionRange(section);
    checkReplayCallback(fn);
    return this.queue.run(async () => {
      for (const [first, count] of this.state.bitmap.runs(range.first, range.count, shared)) {
        const result = this.calls.call(undefined, fn, new GranuleRange(first, count, this.granularity));
        if (isThenable(result)) await this.calls.settle(result);
      }
    });
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
    this.calls.refuseReentry('stateChange');
    const range = this.range(offset, size);
    const toShared = checkState(to, 'target state');
    if (this.canChangeSync) {
      try {
        return Promise.resolve(this.changeSync(range, toShared));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.queue.run(async () => (this.registry.asyncListeners === 0 ? this.changeSync(range, toShared) : this.changeAsync(range, toShared)));
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
   * @internal The state change of a range this tracker has validated (range()), made now, with every
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
      const state = this.state;
      const held = state.convert(first, count, range, toShared);
      const changed = state.changes.total;
      const head = this.registry.newest;
      if (state.told.runs.length > 0 && head !== null) fanOutSync(this.fan, toShared, state.told, head, state);
      return this.finish(FROM[held]!, toShared, changed, into);
    } finally {
      this.changing = false;
    }
  }

  /** The asynchronous form of changeSync, for listeners that may return promises: the same steps, awaited. */
  private async changeAsync(range: GranuleRange, toShared: boolean): Promise<StateChangeResult> {
    const state = this.state;
    const held = state.convert(range.first, range.count, range, toShared);
    const changed = state.changes.total;
    if (state.told.runs.length > 0) await fanOutAsync(this.newFanOut(), toShared, state.told, this.registry.newest, false, state);
    return this.finish(FROM[held]!, toShared, changed);
  }

  /** A fan-out of its own for an asynchronous operation (the synchronous path reuses this.fan). */
  private newFanOut(): FanOut {
    return new FanOut(this.calls, this.registry, this.state, this.granularity);
  }

  private finish(from: StateChangeResult['from'], toShared: boolean, changed: number, into?: StateChangeResult): StateChangeResult {
    const to: PageState = toShared ? 'shared' : 'private';
    const changedRuns = this.state.changes.length;
    // Read before publishing: a subscriber may start another change.
    let result: StateChangeResult;
    if (into === undefined) {
      result = { from, to, changed, changedRuns };
    } else {
      result = into;
      result.from = from;
      result.to = to;
      result.changed = changed;
      result.changedRuns = changedRuns;
    }
    if (stateChangeChannel.hasSubscribers) this.publish(from, to);
    return result;
  }

  /** QEMU's ram_block_attributes_state_change tracepoint; apart from finish so that finish stays small enough to inline. */
  private publish(from: StateChangeResult['from'], to: PageState): void {
    stateChangeChannel.publish({ block: this.name, ...this.state.told.range().toJSON(), from, to });
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
    this.calls.refuseReentry('sourceChange');
    if (this.canChangeSync) {
      try {
        return Promise.resolve(this.changeSourceSync(change));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.queue.run(async () => (this.registry.asyncListeners === 0 ? this.changeSourceSync(change) : this.changeSourceAsync(change)));
  }

  /** sourceChange, made before it returns; only while canChangeSync (else it throws as stateChangeSync does). */
  sourceChangeSync(change: SourceChange): number {
    if (!this.canChangeSync) {
      const refusal = this.syncRefusal('sourceChangeSync');
      if (refusal) throw refusal;
    }
    return this.changeSourceSync(change);
  }

  private changeSourceSync(change: SourceChange): number {
    this.changing = true;
    try {
      const head = this.registry.newest;
      if (this.state.sourceRuns(change) && head !== null) fanOutSync(this.fan, change.populate, this.state.told, head, change);
      return this.state.told.runs.total;
    } finally {
      this.changing = false;
    }
  }

  private async changeSourceAsync(change: SourceChange): Promise<number> {
    const any = this.state.sourceRuns(change);
    const told = this.state.told.runs.total;
    if (any) await fanOutAsync(this.newFanOut(), change.populate, this.state.told, this.registry.newest, false, change);
    return told;
  }
}
