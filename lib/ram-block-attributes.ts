// The shared/private tracker of one RAM block and the fan-out of its conversions to
// listeners: QEMU's RamBlockAttributes (its RamDiscardManager for guest_memfd), with one
// change of policy: a listener that fails does not end the process, the change is rolled
// back so that the bitmap, every listener and the caller agree.

import { GranuleRange, bytesOf, toGranuleRange, type Bytes } from './byte-range';
import { GuestmemError, outOfRange } from './errors';
import { PageBitmap, type Run } from './page-bitmap';
import { Serializer } from './serializer';
import { listenerName, type RamDiscardListener } from './ram-discard-listener';
import { stateChangeChannel, type PageState } from './state-change-channel';

export interface SectionInput {
  offset: Bytes;
  size: Bytes;
}

export interface StateChangeResult {
  /** What the range was before: wholly one state, or a mixture. */
  from: PageState | 'mixture';
  to: PageState;
  /** Granules that changed state. */
  changed: number;
  /** Notifications sent per listener: one per changed run. */
  runs: number;
}

interface Registration {
  readonly listener: RamDiscardListener;
  readonly section: GranuleRange;
}

type Notify = 'populate' | 'discard';

const DEFAULT_GRANULARITY = 4096;

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value != null && typeof (value as PromiseLike<unknown>).then === 'function';
}

/** Calls a listener, awaiting only when it returned a promise, so sync listeners stay fast. */
async function notify(listener: RamDiscardListener, kind: Notify, range: GranuleRange): Promise<void> {
  const result = kind === 'populate' ? listener.populate(range) : listener.discard(range);
  if (isThenable(result)) await result;
}

function batchOf(listener: RamDiscardListener, kind: Notify): ((ranges: GranuleRange[]) => void | PromiseLike<void>) | undefined {
  const batch = kind === 'populate' ? listener.populateRuns : listener.discardRuns;
  return batch?.bind(listener);
}

/** What one listener accepted during a change: undone, newest first, if the change fails. */
type Delivery = [Registration, GranuleRange[]];

function describeRanges(ranges: GranuleRange[]): string {
  return ranges.length === 1 ? String(ranges[0]) : `${ranges.length} runs from ${ranges[0]} to ${ranges[ranges.length - 1]}`;
}

function inverse(kind: Notify): Notify {
  return kind === 'populate' ? 'discard' : 'populate';
}

/** The part of [first, first + count) inside `section`, or null when they do not meet. */
function clip(section: GranuleRange, first: number, count: number): GranuleRange | null {
  const start = Math.max(section.first, first);
  const end = Math.min(section.end, first + count);
  return start < end ? new GranuleRange(start, end - start, section.granularity) : null;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class RamBlockAttributes {
  readonly name: string;
  readonly granularity: number;
  /** Size of the block in granules. */
  readonly granules: number;
  private readonly bitmap: PageBitmap;
  /** Newest first, as QEMU's QLIST_INSERT_HEAD: the newest listener is notified first. */
  private registrations: Registration[] = [];
  private shared = 0;
  /** Operations that call listeners run one at a time, in call order. */
  private readonly queue = new Serializer();

  /**
   * A block of `size` bytes, tracked at `granularity` bytes (a power of two, default 4096).
   * Every granule starts private, as KVM makes a guest_memfd-backed slot private when it is
   * created.
   */
  constructor(size: Bytes, options: { granularity?: number; name?: string } = {}) {
    const granularity = options.granularity ?? DEFAULT_GRANULARITY;
    if (!Number.isSafeInteger(granularity) || granularity <= 0 || !Number.isInteger(Math.log2(granularity))) {
      throw outOfRange(`granularity must be a power of two, got ${granularity}`);
    }
    const whole = toGranuleRange(0, size, granularity, Number.MAX_SAFE_INTEGER, 'block');
    this.granularity = granularity;
    this.granules = whole.count;
    this.bitmap = new PageBitmap(whole.count);
    this.name = options.name ?? 'ram-block';
  }

  /** Block size in bytes: a number where exact, else a bigint. */
  get size(): Bytes {
    return bytesOf(this.granules, this.granularity);
  }

  get sharedGranules(): number {
    return this.shared;
  }

  get privateGranules(): number {
    return this.granules - this.shared;
  }

  get listeners(): RamDiscardListener[] {
    return this.registrations.map((r) => r.listener);
  }

  /** Each listener with its section in granules, newest first (what a repair must follow). */
  get registered(): ReadonlyArray<{ readonly listener: RamDiscardListener; readonly section: GranuleRange }> {
    return this.registrations;
  }

  /** Validates a byte range of this block and returns it in granules. */
  range(offset: Bytes, size: Bytes, what = 'range'): GranuleRange {
    return toGranuleRange(offset, size, this.granularity, this.granules, what);
  }

  /** True iff every granule of the range is shared (QEMU: is_populated). */
  isPopulated(section: SectionInput): boolean {
    const range = this.range(section.offset, section.size, 'section');
    return this.bitmap.isAllSet(range.first, range.count);
  }

  /** True iff every granule of the range is private. */
  isDiscarded(section: SectionInput): boolean {
    const range = this.range(section.offset, section.size, 'section');
    return this.bitmap.isAllClear(range.first, range.count);
  }

  /** Maximal runs of shared (or private) granules, in granule indices, ascending. */
  runs(state: PageState, section?: SectionInput): Run[] {
    const range = section ? this.range(section.offset, section.size, 'section') : null;
    return this.bitmap.runs(range?.first ?? 0, range?.count ?? this.granules, state === 'shared');
  }

  /** Shared granules inside a range; O(range / 32). */
  countShared(section: SectionInput): number {
    const range = this.range(section.offset, section.size, 'section');
    return this.bitmap.countSet(range.first, range.count);
  }

  /**
   * Adds a listener for a section of the block and replays every shared run inside it to
   * its populate. If a replay fails, the runs already populated are discarded again and
   * the listener is not registered.
   */
  register(listener: RamDiscardListener, section: SectionInput): Promise<void> {
    const range = this.range(section.offset, section.size, 'section');
    return this.queue.run(async () => {
      if (this.registrations.some((r) => r.listener === listener)) {
        throw new GuestmemError('ERR_GUESTMEM_ALREADY_REGISTERED', `listener "${listenerName(listener)}" is already registered on ${this.name}`);
      }
      const registration = { listener, section: range };
      await this.notifyRuns(registration, this.toRanges(this.bitmap.runs(range.first, range.count, true)), 'populate');
      this.registrations = [registration, ...this.registrations];
    });
  }

  /**
   * Removes a listener after discarding what it holds: one whole-section discard if it
   * supports double discard, else one per shared run. If a discard fails the listener stays
   * registered, with what it had discarded populated again.
   */
  unregister(listener: RamDiscardListener): Promise<void> {
    return this.queue.run(async () => {
      const registration = this.registrations.find((r) => r.listener === listener);
      if (!registration) {
        throw new GuestmemError('ERR_GUESTMEM_NOT_REGISTERED', `listener "${listenerName(listener)}" is not registered on ${this.name}`);
      }
      const { section } = registration;
      const ranges = listener.doubleDiscardSupported ? [section] : this.toRanges(this.bitmap.runs(section.first, section.count, true));
      await this.notifyRuns(registration, ranges, 'discard');
      this.registrations = this.registrations.filter((r) => r !== registration);
    });
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
   * ERR_GUESTMEM_LISTENER_FAILED.
   */
  stateChange(offset: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult> {
    const range = this.range(offset, size);
    if (to !== 'shared' && to !== 'private') {
      throw outOfRange(`target state must be 'shared' or 'private', got ${String(to)}`);
    }
    return this.queue.run(async () => {
      const toShared = to === 'shared';
      const { first, count } = range;
      const from: StateChangeResult['from'] = this.bitmap.isAllSet(first, count)
        ? 'shared'
        : this.bitmap.isAllClear(first, count)
          ? 'private'
          : 'mixture';
      let runs: Run[] = [];
      if (from === 'mixture') runs = this.bitmap.runs(first, count, !toShared);
      else if (from !== to) runs = [[first, count]];
      await this.applyRuns(runs, toShared);
      if (stateChangeChannel.hasSubscribers) {
        stateChangeChannel.publish({ block: this.name, ...range.toJSON(), from, to });
      }
      let changed = 0;
      for (const [, n] of runs) changed += n;
      return { from, to, changed, runs: runs.length };
    });
  }

  private async replay(
    section: SectionInput,
    shared: boolean,
    fn: (range: GranuleRange) => void | PromiseLike<void>,
  ): Promise<void> {
    const range = this.range(section.offset, section.size, 'section');
    return this.queue.run(async () => {
      for (const [first, count] of this.bitmap.runs(range.first, range.count, shared)) {
        const result = fn(new GranuleRange(first, count, this.granularity));
        if (isThenable(result)) await result;
      }
    });
  }

  private flip(first: number, count: number, toShared: boolean): void {
    this.bitmap.fillRange(first, count, toShared);
    this.shared += toShared ? count : -count;
  }

  private toRanges(runs: Run[]): GranuleRange[] {
    return runs.map(([first, count]) => new GranuleRange(first, count, this.granularity));
  }

  /**
   * Flips the runs, then notifies every listener whose section they meet, newest first,
   * each with all of its clipped runs (in one call where it takes batches). On a failure,
   * undoes in reverse order what was done for this change, restores the bitmap, rethrows.
   */
  private async applyRuns(runs: Run[], toShared: boolean): Promise<void> {
    const kind: Notify = toShared ? 'populate' : 'discard';
    for (const [first, count] of runs) this.flip(first, count, toShared);
    const done: Delivery[] = [];
    try {
      for (const registration of this.registrations) {
        const clipped: GranuleRange[] = [];
        for (const [first, count] of runs) {
          const range = clip(registration.section, first, count);
          if (range) clipped.push(range);
        }
        if (clipped.length > 0) await this.deliver(registration, kind, clipped, done);
      }
    } catch (failure) {
      const rollbackErrors = await this.undo(done, kind);
      for (let i = runs.length - 1; i >= 0; i--) this.flip(runs[i]![0], runs[i]![1], !toShared);
      throw this.withRollbackErrors(failure, rollbackErrors);
    }
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
    const { listener } = registration;
    const batch = batchOf(listener, kind);
    if (batch) {
      try {
        const result = batch(ranges);
        if (isThenable(result)) await result;
      } catch (cause) {
        throw this.listenerFailed(listener, kind, ranges, cause);
      }
      done.push([registration, ranges]);
      return;
    }
    for (const range of ranges) {
      try {
        await notify(listener, kind, range);
      } catch (cause) {
        throw this.listenerFailed(listener, kind, [range], cause);
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

  private listenerFailed(listener: RamDiscardListener, kind: Notify, ranges: GranuleRange[], cause: unknown): GuestmemError {
    const name = listenerName(listener);
    return Object.assign(
      new GuestmemError(
        'ERR_GUESTMEM_LISTENER_FAILED',
        `listener "${name}" failed to ${kind} ${describeRanges(ranges)} of ${this.name}: ${message(cause)}`,
        { cause },
      ),
      { listener: name, operation: kind, ranges: ranges.map((r) => r.toJSON()) },
    );
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
