// Plugging and unplugging a range of one RAM block (virtio-mem's requests), with every step
// undone if a later one fails, as a conversion's are (block-conversion.ts). The plug source
// (tracker/plug-source.ts) is a second discard source beside the shared/private bitmap:
// listeners hold what is shared AND plugged.
//
// UNPLUG ORDER. The listeners first (the tracker's sourceChange: each discards what it held
// of the range, a VFIO listener unmaps it), then both backings give the memory back (the
// punch-hole of the shared memfd and of the guest_memfd over the whole range: unplugged
// memory holds nothing, whatever KVM calls it). KVM's attributes are left as the guest set
// them: a page unplugged while private is private again once plugged, as virtio-mem leaves
// the guest's view of a page to the guest. A failed punch-hole plugs the range back (the
// listeners map again what is shared there); what the guest had in it is forfeit from the
// moment it asked, as virtio-mem promises nothing of an unplugged block's contents.
//
// PLUG ORDER. One step: the listeners populate the parts of the range that are shared.
// Memory comes back on first touch; nothing needs allocating.
//
// On the main thread (RamBlock's plug and unplug), under the block's lock: the plug bitmap
// is shared memory (plug-source.ts), so a block shared with vCPU threads is plugged and
// unplugged here while they convert it, and their conversions mask what is unplugged.

import { describeDisagreements } from '../tracker/block-agreement';
import { checkSpan, type Bytes, type GranuleRange } from '../common/byte-range';
import { GuestmemError, messageOf as describe, outOfRange } from '../common/errors';
import type { BlockKernel } from './block-kernel';
import { formatRuns } from './block-conversion';
import type { BlockReconciler } from './block-reconcile';
import type { BlockState } from './block-state';
import { STEP_UNDO } from './block-lock';
import type { Run } from '../tracker/page-bitmap';
import { oppositePlug, type PlugSource, type PlugState } from '../tracker/plug-source';
import type { RamBlockAttributes } from '../tracker/ram-block-attributes';
import type { SourceChange } from '../tracker/discard-source';
import type { Steps } from '../common/steps';

/** What a plug or unplug did. */
export interface PlugResult {
  /** What the range was before: wholly one state, or a mixture. */
  from: PlugState | 'mixture';
  to: PlugState;
  /** Granules whose plug state changed. */
  changed: number;
  /** Granules the listeners were told of: the changed ones that are shared. */
  notified: number;
}

/** Where a plug or unplug failed, as its error's `step` says. */
export type PlugStep = 'listeners' | 'discard';

/** Step codes as the lock's intent records them (block-lock.ts: 'listeners' 2, 'discard' 3). */
const STEP_CODE: Readonly<Record<PlugStep, number>> = { listeners: 2, discard: 3 };


export interface BlockPlugParts {
  readonly name: string;
  readonly gpa: number;
  readonly tracker: RamBlockAttributes;
  readonly plug: PlugSource;
  readonly state: BlockState;
  readonly kernel: BlockKernel;
  readonly reconciler: BlockReconciler;
}

/** The plug state machine of one block: validation, the steps, the undo, the report. */
export class BlockPlug {
  constructor(private readonly parts: BlockPlugParts) {}

  /**
   * The range in granules, checked before any step: the block open, inside it, aligned to
   * the plug block size, not empty, no overflow, no granule awaiting repair.
   */
  range(gpa: Bytes, size: Bytes, to: PlugState): GranuleRange {
    const { name, state, plug } = this.parts;
    const what = to === 'plugged' ? 'plug' : 'unplug';
    if (state.closed) throw new GuestmemError('ERR_GUESTMEM_CLOSED', `RAM block ${name} is closed`);
    const [start, length] = checkSpan(gpa, size, what);
    if (start < BigInt(this.parts.gpa)) throw outOfRange(`${what} gpa 0x${start.toString(16)} is below block ${name} at 0x${this.parts.gpa.toString(16)}`);
    const range = plug.range(start - BigInt(this.parts.gpa), length, what);
    this.refuseUnsettled(range, what);
    return range;
  }

  /**
   * Refuses a range holding granules that await repair. Checked again under the lock: another
   * thread's failed rollback may have put some there while this one waited for it.
   */
  private refuseUnsettled(range: GranuleRange, what: string): void {
    const { name, state } = this.parts;
    if (state.closed) throw new GuestmemError('ERR_GUESTMEM_CLOSED', `RAM block ${name} is closed`);
    if (state.mayBeUnsettled && !state.unsettled.isAllClear(range.first, range.count)) {
      const runs = state.unsettledRuns(range.first, range.count);
      throw new GuestmemError(
        'ERR_GUESTMEM_CONVERSION_REJECTED',
        `${what} of ${range} of ${name} holds granules that disagree since a failed rollback (${formatRuns(runs)}): call repair() first`,
        { unsettled: runs },
      );
    }
  }

  /** The steps under the block's lock, driven by runSync or runAsync. */
  *steps(range: GranuleRange, to: PlugState, sync: boolean): Steps<PlugResult> {
    const { plug, state } = this.parts;
    const lock = state.lock;
    lock.acquire(to === 'plugged' ? 'plug' : 'unplug', range.first, range.count, null);
    try {
      this.refuseUnsettled(range, to === 'plugged' ? 'plug' : 'unplug');
      // Read before any step: what an undo puts back, and what a report of the outcome is measured against.
      const before = plug.runs(oppositePlug(to), range.first, range.count);
      const changed = before.reduce((sum, [, count]) => sum + count, 0);
      const from = changed === 0 ? to : changed === range.count ? oppositePlug(to) : 'mixture';
      let step: PlugStep = 'listeners';
      let notified = 0;
      try {
        lock.step(STEP_CODE.listeners);
        notified = yield* this.tell(plug.change(before, to), sync);
        if (to === 'unplugged') {
          step = 'discard';
          lock.step(STEP_CODE.discard);
          this.giveBack(range);
        }
      } catch (error) {
        lock.step(STEP_UNDO);
        throw yield* this.undo(step, range, before, to, error, sync);
      }
      return { from, to, changed, notified };
    } finally {
      lock.release();
    }
  }

  /** The tracker's source change: at once where every listener is synchronous. */
  private *tell(change: SourceChange, sync: boolean): Steps<number> {
    const { tracker } = this.parts;
    if (sync || tracker.canChangeSync) return tracker.sourceChangeSync(change);
    return (yield tracker.sourceChange(change)) as number;
  }

  /** Both backings give the range back: the shared memfd and the guest_memfd. */
  private giveBack(range: GranuleRange): void {
    const { kernel } = this.parts;
    const g = range.granularity;
    kernel.discardShared(range.first * g, range.count * g);
    kernel.punchPrivate(range.first * g, range.count * g);
  }

  /**
   * Undoes an unplug whose punch-hole failed (the listeners' step rolls itself back in the
   * tracker): the runs it unplugged are plugged again, the listeners mapping what is shared
   * there. Then KVM and the listeners are made to follow the tracker and the plug state
   * (reconcile), and the range is checked, as a conversion's undo does.
   */
  private *undo(step: PlugStep, range: GranuleRange, before: Run[], to: PlugState, cause: unknown, sync: boolean): Steps<Error> {
    const { name, plug, reconciler, state } = this.parts;
    const what = `${to === 'plugged' ? 'plugging' : 'unplugging'} ${range} of ${name} failed at step ${step}`;
    const errors: unknown[] = [];
    if (step === 'discard') {
      try {
        yield* this.tell(plug.change(before, oppositePlug(to)), sync);
      } catch (error) {
        errors.push(error);
      }
    }
    errors.push(...(yield* reconciler.reconcile(range.first, range.count)));
    for (const error of [cause, ...errors]) reconciler.noteDoubts(error);
    const disagreements = reconciler.disagreements(range.first, range.count);
    const doubtful = disagreements.map((d) => [d.first, d.count] as Run);
    const applied = before.flatMap(([first, count]) => plug.runs(to, first, count))
      .filter(([first, count]) => !doubtful.some(([f, c]) => f < first + count && first < f + c));
    const stayed = applied.length > 0 ? `; these runs stayed ${to}, in agreement: ${formatRuns(applied)}` : '';
    const facts = { step, cause, errors, applied, operation: to === 'plugged' ? 'plug' as const : 'unplug' as const };
    if (disagreements.length > 0) {
      state.markUnsettled(doubtful);
      return new GuestmemError(
        'ERR_GUESTMEM_ROLLBACK_FAILED',
        `${what}: ${describe(cause)}; undoing it also failed (${errors.map(describe).join('; ')}), and these disagree until repair(): ` +
          `${describeDisagreements(disagreements, range.granularity)}${stayed}`,
        { ...facts, disagreements },
      );
    }
    return new GuestmemError(
      'ERR_GUESTMEM_CONVERSION_FAILED',
      `${what}: ${describe(cause)}${errors.length > 0 ? ` (undo: ${errors.map(describe).join('; ')})` : ''}${stayed}`,
      { ...facts },
    );
  }
}
