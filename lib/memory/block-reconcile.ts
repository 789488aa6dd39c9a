// Agreement after a failure: making KVM's attributes and every listener follow the tracker's
// bitmap again (reconcile), the listeners that cannot say what they hold (doubts), and the
// whole-block repair built from both. A failed conversion's undo runs reconcile over its
// range on whichever thread converted; repair() runs it over the whole block, on the main
// thread. Every step is written once, as generators of the promises it must wait for
// (common/steps.ts), and driven synchronously or asynchronously.
//
// The rule throughout: when in doubt, unmap. Unmapping comes first, before KVM turns
// anything private; mapping last, after KVM turned it shared.

import { findDisagreements, listenerLabels, type Disagreement } from '../tracker/block-agreement';
import { GranuleRange } from '../common/byte-range';
import { GuestmemError, messageOf as describe } from '../common/errors';
import type { PageBitmap, Run } from '../tracker/page-bitmap';
import { listenerName, type RamDiscardListener } from '../tracker/ram-discard-listener';
import type { RamBlockAttributes, StateChangeResult } from '../tracker/ram-block-attributes';
import type { Steps } from '../common/steps';
import type { PageState } from '../tracker/state-change-channel';

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value != null && typeof (value as PromiseLike<unknown>).then === 'function';
}

/** Runs of `runs` that lie inside [first, first + count), clipped. */
export function clipRuns(runs: readonly Run[], first: number, count: number): Run[] {
  const end = first + count;
  const clipped: Run[] = [];
  for (const [start, length] of runs) {
    const a = Math.max(start, first);
    const b = Math.min(start + length, end);
    if (a < b) clipped.push([a, b - a]);
  }
  return clipped;
}

/** The parts of [first, first + count) that sorted, disjoint `runs` leave out. */
export function gaps(runs: readonly Run[], first: number, count: number): Run[] {
  const found: Run[] = [];
  let at = first;
  for (const [start, length] of runs) {
    if (start > at) found.push([at, start - at]);
    at = Math.max(at, start + length);
  }
  if (at < first + count) found.push([at, first + count - at]);
  return found;
}

/** Sorted runs merged where they touch or overlap (sorts `runs` in place). */
export function mergeRuns(runs: Run[]): Run[] {
  runs.sort((a, b) => a[0] - b[0]);
  const merged: Run[] = [];
  for (const [f, c] of runs) {
    const last = merged[merged.length - 1];
    if (last && f <= last[0] + last[1]) last[1] = Math.max(last[1], f + c - last[0]);
    else merged.push([f, c]);
  }
  return merged;
}

/** What a repair found and left. */
export interface RepairOutcome {
  /** Disagreements found before it started (in-doubt granules included). */
  found: Disagreement[];
  /** What failed on the way. */
  errors: unknown[];
  /** What still disagrees. */
  left: Disagreement[];
}

/**
 * The agreement machinery of one block on one thread: the tracker, the record of KVM's
 * attributes, and the call that sets them (which keeps that record).
 */
export class BlockReconciler {
  /**
   * Per listener that cannot say what it holds (no heldRuns), keyed by the listener
   * registered, never by its name: the runs where the tracker's undo of it failed, so that
   * nobody knows what it maps there.
   */
  readonly doubts = new Map<RamDiscardListener, Run[]>();

  constructor(
    private readonly name: string,
    private readonly tracker: RamBlockAttributes,
    private readonly kvmShared: PageBitmap,
    private readonly setAttributes: (first: number, count: number, to: PageState) => void,
  ) {}

  /** What disagrees inside [first, first + count) now. */
  disagreements(first = 0, count = this.tracker.granules): Disagreement[] {
    return findDisagreements(first, count, this.kvmShared, this.tracker, this.doubts);
  }

  /**
   * The tracker reports a listener whose undo failed in a ROLLBACK_FAILED with the failures
   * in `errors` (each carrying the listener it names). For a listener that can say what it
   * holds, the check sees it anyway; for one that cannot, those ranges become doubts.
   */
  noteDoubts(error: unknown): void {
    const failures = (error as { code?: string; errors?: unknown[] } | null)?.code === 'ERR_GUESTMEM_ROLLBACK_FAILED' ? (error as { errors: unknown[] }).errors : [];
    const g = this.tracker.granularity;
    for (const failure of failures ?? []) {
      const { registered: listener, ranges } = failure as { registered?: RamDiscardListener; ranges?: Array<{ offset: number; size: number }> };
      if (!listener || listener.heldRuns || !ranges || !this.tracker.listeners.includes(listener)) continue;
      const runs = [...(this.doubts.get(listener) ?? []), ...ranges.map((r) => [Number(r.offset) / g, Number(r.size) / g] as Run)];
      this.doubts.set(listener, mergeRuns(runs));
    }
  }

  /**
   * A listener in doubt is told to discard its doubtful runs (it must accept a discard of
   * what it may not hold: double discard), then to populate the parts that are shared (and plugged).
   */
  *resolveDoubts(errors: unknown[]): Steps<void> {
    const labels = listenerLabels(this.tracker.listeners);
    for (const [listener, runs] of [...this.doubts]) {
      if (!labels.has(listener)) {
        this.doubts.delete(listener);
        continue;
      }
      if (!listener.doubleDiscardSupported) {
        errors.push(new GuestmemError('ERR_GUESTMEM_REPAIR_FAILED', `listener "${labels.get(listener)}" cannot say what it holds and takes no double discard: unregister it and register it again`));
        continue;
      }
      const before = errors.length;
      yield* this.tell(listener, 'discard', runs, errors);
      const shared = runs.flatMap(([f, c]) => this.tracker.populatedRuns(f, c))
        .flatMap(([f, c]) => this.kvmShared.runs(f, c, true));
      if (errors.length === before && shared.length > 0) yield* this.tell(listener, 'populate', shared, errors);
      if (errors.length === before) this.doubts.delete(listener);
    }
  }

  /**
   * Granules whose state nobody knows (a thread died converting them): every listener that
   * can say what it holds is told to count them as held (assumeHeld) and then to discard
   * them, so that nothing stays mapped there unseen; KVM's record there is set against the
   * tracker, so that reconcile sets KVM's attributes there again whatever they are.
   */
  *forget(runs: readonly Run[], errors: unknown[]): Steps<void> {
    for (const { listener, section } of this.tracker.registered) {
      if (!listener.heldRuns) continue;
      const inside = clipRuns(runs, section.first, section.count);
      if (inside.length === 0) continue;
      for (const [first, count] of inside) listener.assumeHeld?.(first, count);
      yield* this.tell(listener, 'discard', inside, errors);
    }
    const g = this.tracker.granularity;
    for (const [first, count] of runs) {
      for (const state of ['shared', 'private'] as const) {
        for (const [f, c] of this.tracker.runs(state, { offset: first * g, size: count * g })) this.kvmShared.fill(f, c, state !== 'shared');
      }
    }
  }

  /**
   * Makes KVM's attributes and every listener that can say what it holds follow the
   * tracker's bitmap over [first, first + count); returns what failed.
   */
  *reconcile(first: number, count: number): Steps<unknown[]> {
    const g = this.tracker.granularity;
    const errors: unknown[] = [];
    const section = { offset: first * g, size: count * g };
    const withHoldings = this.tracker.registered.filter((r) => r.listener.heldRuns);
    // 1. When in doubt, unmap: a mapping of a granule the tracker or KVM calls private, or
    //    another discard source discards (unplugged), goes.
    const notShared = () => [...gaps(this.tracker.populatedRuns(first, count), first, count), ...this.kvmShared.runs(first, count, false)];
    for (const { listener, section: own } of withHoldings) {
      const excess = this.heldWhere(listener, own, notShared(), true);
      if (excess.length > 0) yield* this.tell(listener, 'discard', excess, errors);
    }
    // 2. A mapping that could not be removed keeps its page shared everywhere instead (KVM
    //    first where it says private, then the tracker, whose populate maps it for the
    //    other listeners too): a device must never reach a page that KVM or the tracker
    //    calls private.
    for (const { listener, section: own } of withHoldings) {
      for (const [start, length] of this.heldWhere(listener, own, notShared(), true)) {
        try {
          for (const [f, c] of this.kvmShared.runs(start, length, false)) this.setAttributes(f, c, 'shared');
          yield* this.trackerChange(start, length, 'shared');
        } catch (error) {
          errors.push(error);
        }
      }
    }
    // 3. KVM follows the bitmap, run by run; but a granule that a listener still maps stays
    //    shared in KVM (it is named as a disagreement), never private under a mapping.
    const trackerPrivate = this.tracker.runs('private', section);
    const trackerShared = this.tracker.runs('shared', section);
    for (const [state, runs] of [['private', trackerPrivate], ['shared', trackerShared]] as const) {
      for (const [start, length] of runs) {
        for (const [f, c] of this.kvmShared.runs(start, length, state === 'private')) {
          for (const [a, n] of state === 'private' ? this.unheld(withHoldings, f, c) : [[f, c] as Run]) {
            try {
              this.setAttributes(a, n, state);
            } catch (error) {
              errors.push(error);
            }
          }
        }
      }
    }
    // 4. A granule shared in both (and plugged) gets its mappings back where a listener lacks them.
    const kvmAndTrackerShared = this.tracker.populatedRuns(first, count).flatMap(([start, length]) => this.kvmShared.runs(start, length, true));
    for (const { listener, section: own } of withHoldings) {
      const missing = this.heldWhere(listener, own, kvmAndTrackerShared, false);
      if (missing.length > 0) yield* this.tell(listener, 'populate', missing, errors);
    }
    return errors;
  }

  /**
   * The whole block made to agree: granules in doubt forgotten first (see forget), then
   * reconcile where anything disagrees, then the doubts resolved. The caller holds the
   * block's lock and marks what is left unsettled.
   */
  *repair(inDoubt: readonly Run[]): Steps<RepairOutcome> {
    const errors: unknown[] = [];
    if (inDoubt.length > 0) yield* this.forget(inDoubt, errors);
    const granules = this.tracker.granules;
    const found = this.disagreements(0, granules);
    if (found.length > 0 || inDoubt.length > 0) errors.push(...(yield* this.reconcile(0, granules)));
    yield* this.resolveDoubts(errors);
    return { found, errors, left: this.disagreements(0, granules) };
  }

  /** Parts of [first, first + count) that no listener in `listeners` maps. */
  private unheld(listeners: ReadonlyArray<{ listener: RamDiscardListener; section: GranuleRange }>, first: number, count: number): Run[] {
    let free: Run[] = [[first, count]];
    for (const { listener, section } of listeners) {
      const held = this.heldWhere(listener, section, free, true);
      if (held.length > 0) free = free.flatMap(([f, c]) => gaps(clipRuns(held, f, c), f, c));
    }
    return free;
  }

  /** Parts of `runs` (inside the listener's section) that the listener holds (or lacks). */
  private heldWhere(listener: RamDiscardListener, section: GranuleRange, runs: Run[], held: boolean): Run[] {
    const found: Run[] = [];
    for (const [start, length] of clipRuns(runs, section.first, section.count)) {
      const holding = listener.heldRuns!(start, length);
      found.push(...(held ? holding : gaps(holding, start, length)));
    }
    return found;
  }

  /** Sends a listener a populate or discard outside the tracker (a repair); records a failure. */
  *tell(listener: RamDiscardListener, kind: 'populate' | 'discard', runs: Run[], errors: unknown[]): Steps<void> {
    const ranges = runs.map(([f, c]) => new GranuleRange(f, c, this.tracker.granularity));
    const batch = kind === 'populate' ? listener.populateRuns : listener.discardRuns;
    try {
      if (batch) {
        const result = batch.call(listener, ranges);
        if (isThenable(result)) yield result;
      } else {
        for (const range of ranges) {
          const result = kind === 'populate' ? listener.populate(range) : listener.discard(range);
          if (isThenable(result)) yield result;
        }
      }
    } catch (error) {
      errors.push(new GuestmemError('ERR_GUESTMEM_LISTENER_FAILED', `repairing listener "${listenerName(listener)}" of ${this.name}: ${kind} failed: ${describe(error)}`, { cause: error, listener: listenerName(listener) }));
    }
  }

  /** A state change of the tracker on an undo or repair path: at once where it can be. */
  *trackerChange(first: number, count: number, to: PageState): Steps<StateChangeResult> {
    const g = this.tracker.granularity;
    if (this.tracker.canChangeSync) return this.tracker.changeSync(this.tracker.range(first * g, count * g), to === 'shared');
    return (yield this.tracker.stateChange(first * g, count * g, to)) as StateChangeResult;
  }
}
