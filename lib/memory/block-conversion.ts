// The conversion of a range of one RAM block: QEMU's kvm_convert_memory, with every step
// undone if a later one fails. Written once, as a generator of the promises it must wait
// for (common/steps.ts): driven synchronously (every listener synchronous: a vCPU thread's
// exit, RamBlock.convertSync) or asynchronously (a listener that answers with a promise,
// main thread only), on whichever thread converts: the main thread's RamBlock and a
// worker's AttachedBlock run this same code over the same shared state, under the block's
// lock.
//
// After any failure, single or double, one of two things holds: KVM's attributes, the
// tracker's bitmap and every listener's mappings agree over the range (the error is
// ERR_GUESTMEM_CONVERSION_FAILED); or the error is ERR_GUESTMEM_ROLLBACK_FAILED naming the
// granules that disagree and how, and the block refuses to convert them until repair()
// has made KVM and the listeners follow the bitmap again. A mapping the tracker or KVM does
// not call shared is unmapped first, whatever else fails: when in doubt, unmap.
//
// CONVERSION ORDER. To shared follows QEMU's kvm_convert_memory: KVM's attributes, then the
// tracker's state change (listeners DMA-map), then the punch-hole of the guest_memfd. To
// private departs from it: the tracker's state change (listeners DMA-unmap) comes BEFORE
// KVM's attribute, then the discard of the shared backing. In QEMU's order (attribute
// first) an unmap that fails and a restore of the attribute that fails too leave a device
// mapping of a page KVM calls private. Unmapping first, KVM is made private only over
// pages no listener maps any more, so no pair of failures can leave such a mapping; a
// failed re-map on the way back leaves a shared page unmapped, which is safe and named.

import { describeDisagreements, type Disagreement } from '../tracker/block-agreement';
import { GranuleRange, checkSpan, type Bytes } from '../common/byte-range';
import { ConversionStats, type ConversionStep } from './conversion-stats';
import { GuestmemError, invalidArgValue, outOfRange, messageOf as describe } from '../common/errors';
import type { BlockKernel } from './block-kernel';
import { BlockReconciler, clipRuns, gaps } from './block-reconcile';
import type { BlockState } from './block-state';
import { STEP_UNDO } from './block-lock';
import type { Run } from '../tracker/page-bitmap';
import type { RamBlockAttributes, StateChangeResult } from '../tracker/ram-block-attributes';
import { runAsync, runSync, type Steps } from '../common/steps';
import type { PageState } from '../tracker/state-change-channel';

/**
 * errno and syscall of the kernel error at the root of a failure, if one is: the caller keeps
 * them.
 */
function kernelFacts(error: unknown): { errno?: number; syscall?: string } {
  for (let e = error as { errno?: unknown; syscall?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 8; e = e.cause as typeof e, depth++) {
    if (typeof e.errno === 'number' && typeof e.syscall === 'string') return { errno: e.errno, syscall: e.syscall };
  }
  return {};
}

function opposite(state: PageState): PageState {
  return state === 'shared' ? 'private' : 'shared';
}

/** Runs as the messages give them: `first+count`, comma separated. */
export function formatRuns(runs: readonly Run[]): string {
  return runs.map(([first, count]) => `${first}+${count}`).join(', ');
}

/** The steps of a conversion, in order (see CONVERSION ORDER above). */
const TO_SHARED: readonly ConversionStep[] = ['kvmAttributes', 'listeners', 'discard'];
const TO_PRIVATE: readonly ConversionStep[] = ['listeners', 'kvmAttributes', 'discard'];
/** Each step as the lock's intent records it (block-lock.ts: 1 + its index there). */
const STEP_CODE: Readonly<Record<ConversionStep, number>> = { kvmAttributes: 1, listeners: 2, discard: 3, prefault: 3 };

/** What a conversion needs of the thread it runs on: its block's parts there. */
export interface BlockConversionParts {
  readonly name: string;
  readonly gpa: number;
  readonly tracker: RamBlockAttributes;
  readonly state: BlockState;
  readonly kernel: BlockKernel;
  /** This thread's counts and timings. */
  readonly stats: ConversionStats;
  /** KVM_PRE_FAULT_MEMORY after a conversion, where this thread has a vCPU for it. */
  readonly prefault: ((gpa: number, size: number) => void) | null;
}

/**
 * The conversion state machine of one block on one thread, over the block's shared state:
 * validation, the steps, the undo, the report.
 */
export class BlockConversion {
  readonly reconciler: BlockReconciler;
  private readonly name: string;
  private readonly gpa: number;
  private readonly tracker: RamBlockAttributes;
  private readonly state: BlockState;
  private readonly kernel: BlockKernel;
  private readonly stats: ConversionStats;
  private readonly prefaultAt: ((gpa: number, size: number) => void) | null;
  private readonly refusal: () => GuestmemError;

  constructor(parts: BlockConversionParts) {
    ({ name: this.name, gpa: this.gpa, tracker: this.tracker, state: this.state, kernel: this.kernel, stats: this.stats, prefault: this.prefaultAt } = parts);
    this.reconciler = new BlockReconciler(this.name, this.tracker, this.state.kvmShared, (first, count, to) => this.setAttributes(first, count, to));
    this.refusal = () => new GuestmemError('ERR_GUESTMEM_ASYNC_LISTENER', `a listener of ${this.name} returned a promise during a synchronous conversion`);
  }

  /**
   * The whole synchronous conversion under the block's lock: `prepare` (a worker brings its
   * listeners up to date), the checks of the range, the steps, the undo. Every thread's
   * synchronous conversion is this call.
   */
  convertSync(gpa: Bytes, size: Bytes, to: PageState, prepare?: () => void): StateChangeResult {
    const lock = this.state.lock;
    lock.acquireForConversion();
    try {
      prepare?.();
      const range = this.range(gpa, size, to);
      lock.intendConversion(range.first, range.count, to === 'shared');
      return runSync(this.steps(range, to, true), this.refusal);
    } finally {
      lock.release();
    }
  }

  /** The same with a listener that may answer with a promise (main thread, a block never shared). */
  async convertAsync(range: GranuleRange, to: PageState): Promise<StateChangeResult> {
    const lock = this.state.lock;
    lock.acquire('convert', range.first, range.count, to);
    try {
      return await runAsync(this.steps(range, to, false));
    } finally {
      lock.release();
    }
  }

  /**
   * The conversion's range in granules, checked before any step: inside the block,
   * aligned, not empty, a valid target state, no granule awaiting repair; the block open.
   */
  range(gpa: Bytes, size: Bytes, to: PageState): GranuleRange {
    if (this.state.closed) throw new GuestmemError('ERR_GUESTMEM_CLOSED', `RAM block ${this.name} is closed`);
    let range: GranuleRange;
    if (typeof gpa === 'number' && Number.isSafeInteger(gpa) && gpa >= this.gpa) {
      // Numbers (every guest's request): no bigint; the tracker checks size and the end.
      range = this.tracker.range(gpa - this.gpa, size);
    } else {
      const [start, length] = checkSpan(gpa, size, 'conversion');
      if (start < BigInt(this.gpa)) {
        throw outOfRange(`gpa 0x${start.toString(16)} is below block ${this.name} at 0x${this.gpa.toString(16)}`);
      }
      range = this.tracker.range(start - BigInt(this.gpa), length);
    }
    if (to !== 'shared' && to !== 'private') throw invalidArgValue(`target state must be 'shared' or 'private', got ${String(to)}`);
    if (this.state.mayBeUnsettled && !this.state.unsettled.isAllClear(range.first, range.count)) {
      const runs = this.state.unsettledRuns(range.first, range.count);
      throw new GuestmemError(
        'ERR_GUESTMEM_CONVERSION_REJECTED',
        `${this.describeRange(range)} of ${this.name} holds granules that disagree since a failed rollback, or are in doubt since a thread died converting them ` +
          `(${formatRuns(runs)}): call repair() first`,
        { unsettled: runs },
      );
    }
    return range;
  }

  private describeRange(range: GranuleRange): string {
    const g = this.tracker.granularity;
    return `[0x${(this.gpa + range.first * g).toString(16)}, +0x${(range.count * g).toString(16)})`;
  }

  /**
   * The steps, in CONVERSION ORDER, each recorded in the lock's intent before it starts (a
   * thread that dies leaves the range and step behind); on a failure, the undo.
   */
  private *steps(range: GranuleRange, to: PageState, sync: boolean): Steps<StateChangeResult> {
    const steps = to === 'private' ? TO_PRIVATE : TO_SHARED;
    const stats = this.stats;
    const lock = this.state.lock;
    const before = this.runsToConvert(range, to);
    stats.conversions++;
    let result: StateChangeResult | null = null;
    let i = 0;
    try {
      // One clock reading per step boundary, each ending one step and starting the next.
      let started = stats.timing ? ConversionStats.now() : 0;
      for (; i < steps.length; i++) {
        const step = steps[i]!;
        lock.step(STEP_CODE[step]);
        if (step !== 'listeners') this.runKernelStep(step, range, to);
        else if (sync) result = this.tracker.changeSync(range, to === 'shared');
        else result = (yield this.tracker.stateChange(range.first * this.tracker.granularity, range.count * this.tracker.granularity, to)) as StateChangeResult;
        if (stats.timing) started = stats.lap(step, started);
      }
    } catch (error) {
      stats.failed++;
      lock.step(STEP_UNDO);
      throw yield* this.undo(steps[i]!, range, before, to, error);
    }
    this.prefault(range);
    return result!;
  }

  /**
   * The runs of the range not yet in the target state, read before any step: what an undo
   * puts back, and the baseline its report of what stayed converted is measured against.
   * Both ways read it here, before the first step, so that the report cannot depend on
   * which step failed (the tracker's own record of its last change is gone or rolled back
   * by then), nor on another caller of the tracker while a listener's promise is pending.
   */
  private runsToConvert(range: GranuleRange, to: PageState): Run[] {
    const g = this.tracker.granularity;
    return this.tracker.runs(opposite(to), { offset: range.first * g, size: range.count * g });
  }

  /** KVM's attributes, or the discard of the backing the range no longer uses. */
  private runKernelStep(step: ConversionStep, range: GranuleRange, to: PageState): void {
    if (step === 'kvmAttributes') {
      this.setAttributes(range.first, range.count, to);
      return;
    }
    const g = this.tracker.granularity;
    if (to === 'private') this.kernel.discardShared(range.first * g, range.count * g);
    else this.kernel.punchPrivate(range.first * g, range.count * g);
  }

  /** KVM's attributes over granules of the block, and the record of them that follows every call that succeeded. */
  setAttributes(first: number, count: number, to: PageState): void {
    const g = this.tracker.granularity;
    this.kernel.setMemoryAttributes(this.gpa + first * g, count * g, to);
    this.state.kvmShared.fill(first, count, to === 'shared');
  }

  /** The optional KVM_PRE_FAULT_MEMORY after a conversion: opportunistic, never a failure. */
  private prefault(range: GranuleRange): void {
    if (!this.prefaultAt) return;
    const g = this.tracker.granularity;
    const started = ConversionStats.now();
    try {
      this.prefaultAt(this.gpa + range.first * g, range.count * g);
    } catch {
      this.stats.prefaultFailed++;
    }
    this.stats.add('prefault', started);
  }

  /**
   * Undoes a conversion that failed at `step`, in the reverse order of the steps: what the
   * tracker changed is changed back run by run, so one failure does not stop the rest;
   * then KVM and the listeners are made to follow whatever the bitmap now says
   * (reconcile); then the range is checked. The error says which of the two outcomes it is.
   */
  private *undo(step: ConversionStep, range: GranuleRange, before: Run[], to: PageState, cause: unknown): Steps<Error> {
    const g = this.tracker.granularity;
    const reconciler = this.reconciler;
    const what = `converting ${this.describeRange(range)} of ${this.name} to ${to} failed at step ${step}`;
    const errors: unknown[] = [];
    const steps = to === 'private' ? TO_PRIVATE : TO_SHARED;
    const done = steps.slice(0, steps.indexOf(step));
    if (done.includes('listeners')) {
      // Run by run, in the safe order: a run going back to shared is shared in KVM before
      // it is mapped again (if KVM was made private: a failed call changes nothing); one
      // going back to private is unmapped before KVM makes it private.
      for (const [first, count] of before) {
        try {
          if (to === 'private' && done.includes('kvmAttributes')) this.setAttributes(first, count, 'shared');
          yield* reconciler.trackerChange(first, count, opposite(to));
          if (to === 'shared') this.setAttributes(first, count, 'private');
        } catch (error) {
          errors.push(error);
        }
      }
    }
    // The tracker's own rollback of a failed notification may have failed too; KVM may have
    // changed. Nothing ran only when the first step failed.
    if (done.length > 0 || step === 'listeners') errors.push(...(yield* reconciler.reconcile(range.first, range.count)));
    for (const error of [cause, ...errors]) reconciler.noteDoubts(error);
    const disagreements = reconciler.disagreements(range.first, range.count);
    const facts = { step, cause, errors, ...kernelFacts(cause) };
    // Whatever the outcome, the caller is told every run that stayed converted: a guest
    // told "failed, nothing changed" of a page that stayed shared would put secrets in it.
    const applied = this.stayedConverted(before, to, disagreements);
    const stayed = applied.length > 0 ? `; these runs stayed ${to}, in agreement: ${formatRuns(applied)}` : '';
    if (disagreements.length > 0) {
      this.state.markUnsettled(disagreements.map((d) => [d.first, d.count]));
      return new GuestmemError(
        'ERR_GUESTMEM_ROLLBACK_FAILED',
        `${what}: ${describe(cause)}; undoing it also failed (${errors.map(describe).join('; ')}), and these disagree until repair(): ` +
          `${describeDisagreements(disagreements, g)}${stayed}`,
        { ...facts, disagreements, applied },
      );
    }
    return new GuestmemError(
      'ERR_GUESTMEM_CONVERSION_FAILED',
      `${what}: ${describe(cause)}${errors.length > 0 ? ` (undo: ${errors.map(describe).join('; ')})` : ''}${stayed}`,
      { ...facts, applied },
    );
  }

  /**
   * The runs of `before` (what the conversion set out to change) that are in the target
   * state now, after the undo and reconcile, leaving out granules named as disagreements:
   * there the tracker does not speak for KVM and the listeners. Measured, not inferred from
   * which steps failed, so that it holds whatever the undo and reconcile did (reconcile
   * keeps a page shared when its mapping could not be removed).
   */
  private stayedConverted(before: Run[], to: PageState, disagreements: Disagreement[]): Run[] {
    const g = this.tracker.granularity;
    const converted = before.flatMap(([first, count]) => this.tracker.runs(to, { offset: first * g, size: count * g }));
    if (disagreements.length === 0) return converted;
    const doubtful = disagreements.map((d) => [d.first, d.count] as Run).sort((a, b) => a[0] - b[0]);
    return converted.flatMap(([first, count]) => gaps(clipRuns(doubtful, first, count), first, count));
  }
}
