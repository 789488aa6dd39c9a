// One RAM block of a confidential VM: its shared backing (a memfd mapping), its private
// backing (a guest_memfd), the memslot that joins them at a guest physical address, and
// the tracker of which granules are shared. Its convert() is QEMU's kvm_convert_memory
// for one block, with every step undone if a later one fails.
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

import { describeDisagreements, findDisagreements, type Disagreement } from '../tracker/block-agreement';
import { GranuleRange, checkSafeBytes, checkSpan, type Bytes } from '../common/byte-range';
import { ConversionStats, type ConversionStep } from './conversion-stats';
import { GuestmemError, invalidArgType, invalidArgValue, outOfRange, shutdownIncomplete } from '../common/errors';
import { messageOf as describe } from '../common/errors';
import { GuestMemfd, type GuestMemfdSource } from '../kvm/kvm';
import type { MemoryVm } from '../kvm/memory-vm';
import { PageBitmap, type Run } from '../tracker/page-bitmap';
import { listenerName, type RamDiscardListener } from '../tracker/ram-discard-listener';
import { RamBlockAttributes, type SectionInput, type StateChangeResult } from '../tracker/ram-block-attributes';
import { Serializer } from '../common/serializer';
import { runAsync, runSync, type Steps } from '../common/steps';
import { SharedMemory, type SharedMemorySource } from '../kvm/shared-memory';
import type { PageState } from '../tracker/state-change-channel';

/** Gives a vCPU fd of the block's VM, for vCPU ioctls such as KVM_PRE_FAULT_MEMORY. */
export type VcpuFdProvider = () => number;

/** How {@link GuestMemory.addBlock} makes a block: where, how big, its granule and name. */
export interface RamBlockOptions {
  slot: number;
  /** Guest physical address and size: numbers or bigints, kept as numbers (both < 2^53). */
  gpa: Bytes;
  size: Bytes;
  granularity?: number;
  name?: string;
  /**
   * After each conversion, KVM_PRE_FAULT_MEMORY over the converted range on this vCPU, so
   * the guest's first touch does not fault; only where the VM has KVM_CAP_PRE_FAULT_MEMORY,
   * and a failure is ignored (counted in stats.prefaultFailed), as QEMU does.
   */
  prefault?: VcpuFdProvider;
  /**
   * Embedding: use this shared memory (a memfd at an offset, or memory mapped here by
   * address) instead of creating a memfd. Not closed or unmapped unless `close: true`.
   */
  shared?: SharedMemorySource;
  /** Embedding: use this guest_memfd from `offset` instead of creating one. Not closed unless `close: true`. */
  guestMemfd?: GuestMemfdSource;
  /**
   * Embedding: the memslot `slot` already joins these backings at `gpa` (the VMM made it):
   * it is not created, and not deleted on close unless `close: true`.
   */
  memslot?: { adopt: true; close?: boolean };
}

export type { Disagreement } from '../tracker/block-agreement';

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

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return value != null && typeof (value as PromiseLike<unknown>).then === 'function';
}

function opposite(state: PageState): PageState {
  return state === 'shared' ? 'private' : 'shared';
}

/** Runs as the messages give them: `first+count`, comma separated. */
function formatRuns(runs: Run[]): string {
  return runs.map(([first, count]) => `${first}+${count}`).join(', ');
}

/** Runs of `runs` that lie inside [first, first + count), clipped. */
function clipRuns(runs: Run[], first: number, count: number): Run[] {
  const end = first + count;
  const clipped: Run[] = [];
  for (const [start, length] of runs) {
    const a = Math.max(start, first);
    const b = Math.min(start + length, end);
    if (a < b) clipped.push([a, b - a]);
  }
  return clipped;
}

/** The steps of a conversion, in order (see CONVERSION ORDER above). */
const TO_SHARED: readonly ConversionStep[] = ['kvmAttributes', 'listeners', 'discard'];
const TO_PRIVATE: readonly ConversionStep[] = ['listeners', 'kvmAttributes', 'discard'];


/**
 * One RAM block: a guest_memfd memslot over a shared memfd, with its tracker. `convert()` is
 * QEMU's kvm_convert_memory: tracker, KVM attributes, listeners, punch-hole, each undone if a
 * later one fails.
 */
export class RamBlock implements Disposable {
  readonly name: string;
  readonly slot: number;
  readonly gpa: number;
  readonly size: number;
  readonly shared: SharedMemory;
  readonly guestMemfd: GuestMemfd;
  readonly attributes: RamBlockAttributes;
  readonly stats = new ConversionStats();
  private closed = false;
  private released = false;
  /** Conversions, repairs and the shutdown: one at a time, in call order. */
  private readonly conversions = new Serializer();
  private pending = 0;
  /**
   * KVM's memory attributes as this block set them (1 = shared). 6.12 cannot read them
   * back; a KVM_SET_MEMORY_ATTRIBUTES that fails changes nothing (KVM reserves its xarray
   * entries before it stores any), so this record follows every call that succeeded.
   */
  private readonly kvmShared: PageBitmap;
  /** Granules that disagree since a failed rollback: refused until repair(). */
  private readonly unsettled: PageBitmap;
  /** False while no granule is unsettled: a conversion then skips the check of its range. */
  private mayBeUnsettled = false;
  /**
   * Per listener that cannot say what it holds (no heldRuns): the runs where the tracker's
   * undo of it failed, so that nobody knows what it maps there.
   */
  private readonly doubts = new Map<string, Run[]>();
  private readonly prefaultVcpu: VcpuFdProvider | null;
  /** Whether close deletes the memslot: one this block made, or one it was told to. */
  private readonly ownsSlot: boolean;

  /**
   * Creates the backings and the memslot, then marks the whole block private in KVM, as
   * QEMU does for a guest_memfd block. Until that call returns, KVM sees the new slot as
   * shared (attributes default to 0) while the tracker already says private: nothing may
   * run the guest on the block in that window. If that call fails, the memslot is deleted
   * again: a guest_memfd slot cannot be changed, and one left behind would hold its number.
   */
  constructor(readonly vm: MemoryVm, options: RamBlockOptions) {
    this.name = options.name ?? `ram-block@0x${Number(options.gpa).toString(16)}`;
    this.attributes = new RamBlockAttributes(options.size, { granularity: options.granularity, name: this.name });
    this.slot = options.slot;
    // Numbers suffice: guest physical addresses stop at 2^52 and a memslot at 2^31 - 1 pages.
    this.gpa = checkSafeBytes(options.gpa, 'block gpa');
    this.size = checkSafeBytes(options.size, 'block size');
    if (options.prefault !== undefined && typeof options.prefault !== 'function') {
      throw invalidArgType(`prefault must be a function returning a vCPU fd, got ${typeof options.prefault}`);
    }
    this.prefaultVcpu = options.prefault && vm.supportsPreFault ? options.prefault : null;
    if (this.gpa % this.attributes.granularity !== 0) {
      throw outOfRange(`block gpa must be a non-negative multiple of ${this.attributes.granularity}, got ${options.gpa}`);
    }
    this.kvmShared = new PageBitmap(this.attributes.granules);
    this.unsettled = new PageBitmap(this.attributes.granules);
    const memslot = options.memslot;
    if (memslot !== undefined && (memslot === null || typeof memslot !== 'object' || memslot.adopt !== true || (memslot.close !== undefined && typeof memslot.close !== 'boolean'))) {
      throw invalidArgType('memslot must be { adopt: true, close?: boolean }');
    }
    // The memslot a VMM made joins its own backings: new ones here would take this block's
    // punch-holes and DMA mappings while the guest used the VMM's memory.
    if (memslot !== undefined && (options.shared === undefined || options.guestMemfd === undefined)) {
      throw invalidArgValue('an adopted memslot needs the backings it joins: give shared and guestMemfd too');
    }
    this.ownsSlot = memslot === undefined || memslot.close === true;
    this.shared = options.shared !== undefined ? SharedMemory.adopt(options.shared, options.size, this.name) : SharedMemory.create(options.size, this.name);
    try {
      this.guestMemfd = options.guestMemfd !== undefined ? GuestMemfd.adopt(options.guestMemfd, options.size) : vm.createGuestMemfd(options.size);
      try {
        if (memslot === undefined) {
          vm.setUserMemoryRegion({
            slot: this.slot, gpa: this.gpa, size: this.size, userspaceAddress: this.shared.address,
            guestMemfd: this.guestMemfd, guestMemfdOffset: this.guestMemfd.offset,
          });
        }
        try {
          vm.setMemoryAttributes(this.gpa, this.size, 'private');
        } catch (error) {
          if (memslot === undefined) this.deleteSlotAfter(error);
          throw error;
        }
      } catch (error) {
        this.guestMemfd.close();
        throw error;
      }
    } catch (error) {
      this.shared.close();
      throw error;
    }
  }

  private deleteSlotAfter(cause: unknown): void {
    try {
      this.vm.deleteMemorySlot(this.slot);
    } catch (error) {
      throw Object.assign(
        new GuestmemError(
          'ERR_GUESTMEM_ROLLBACK_FAILED',
          `${describe(cause)}; deleting memslot ${this.slot} again also failed, it stays in the VM: ${describe(error)}`,
          { cause },
        ),
        { slot: this.slot, errors: [error] },
      );
    }
  }

  /** True when [gpa, gpa + size) lies in this block. */
  contains(gpa: Bytes, size: Bytes): boolean {
    // Numbers compare as they are (every conversion by a guest asks this): a sum past 2^53
    // rounds up, never below the block's end, which is below 2^53.
    if (Number.isSafeInteger(gpa) && Number.isSafeInteger(size)) return (gpa as number) >= this.gpa && (gpa as number) + (size as number) <= this.gpa + this.size;
    return BigInt(gpa) >= BigInt(this.gpa) && BigInt(gpa) + BigInt(size) <= BigInt(this.gpa + this.size);
  }

  get sharedPages(): number {
    return this.attributes.sharedGranules;
  }

  get privatePages(): number {
    return this.attributes.privateGranules;
  }

  /** Runs of granules refused until repair(), ascending; empty when everything agrees. */
  get unsettledRuns(): Run[] {
    return this.unsettled.runs(0, this.unsettled.bits, true);
  }

  /** KVM's attributes as this block last set them: runs of shared granules. */
  kvmRuns(state: PageState = 'shared'): Run[] {
    return this.kvmShared.runs(0, this.kvmShared.bits, state === 'shared');
  }

  /** Registers a listener on a section (default the whole block), replaying what is shared now; queued behind conversions in progress. */
  register(listener: RamDiscardListener, section: SectionInput = { offset: 0, size: this.size }): Promise<void> {
    return this.attributes.register(listener, section);
  }

  /** Unregisters a listener, discarding what it holds (a VFIO listener unmaps its DMA); queued behind conversions in progress. */
  unregister(listener: RamDiscardListener): Promise<void> {
    return this.attributes.unregister(listener);
  }

  /**
   * Converts [gpa, gpa + size) of this block: KVM attributes, the tracker's state change
   * (listeners map or unmap) and the discard of the backing that was left, in the order
   * CONVERSION ORDER gives. Refused before any step (ERR_GUESTMEM_CONVERSION_REJECTED, or a
   * RangeError for a bad range) changes nothing. A failure at a step undoes the earlier
   * ones: ERR_GUESTMEM_CONVERSION_FAILED when everything agrees afterwards (`applied` lists
   * any runs left converted because their undo failed, consistently),
   * ERR_GUESTMEM_ROLLBACK_FAILED with `disagreements` when not. Conversions run one at a
   * time, in call order; when none is in flight and every listener is synchronous, this one
   * is done before convert returns (as convertSync does) and the promise has settled.
   */
  convert(gpa: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult> {
    // One conversion at a time per block: each reads the tracker to know what to undo, and
    // KVM's attributes must change in the same order as the tracker's bitmap.
    // Asked for after close() or shutdown(): refused; asked for before: they still run.
    if (this.closed) return Promise.reject(this.closedError());
    if (this.pending === 0 && this.attributes.canChangeSync) {
      try {
        return Promise.resolve(this.convertRange(this.conversionRange(gpa, size, to), to));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.serialized(async () => {
      const range = this.conversionRange(gpa, size, to);
      return this.attributes.canChangeSync ? this.convertRange(range, to) : this.convertRangeAsync(range, to);
    });
  }

  /**
   * True when convertSync may be called now: no conversion, repair or shutdown of this
   * block in flight, no operation of its tracker queued, every listener synchronous
   * (`synchronous: true`, as VfioDmaListener and RecordingListener are) and the block open.
   */
  get canConvertSync(): boolean {
    return !this.closed && this.pending === 0 && this.attributes.canChangeSync;
  }

  /**
   * convert, done before it returns: the same steps, order, undo and errors, with no promise,
   * no closure and no per-conversion allocation but the one range object handed to the
   * tracker, KVM and the listeners, and the result. For a VMM loop handling an exit.
   *
   * Contract: call it only when `canConvertSync` is true; otherwise it throws, changing
   * nothing, ERR_GUESTMEM_CLOSED (the block is closed), ERR_GUESTMEM_BUSY (a conversion,
   * repair, shutdown, register, unregister or replay is in flight: await it, or use
   * convert) or ERR_GUESTMEM_ASYNC_LISTENER (a listener does not declare `synchronous:
   * true`: use convert). Every other outcome is convert's, thrown instead of rejected:
   * ERR_GUESTMEM_CONVERSION_REJECTED or a RangeError/TypeError before any step, and
   * ERR_GUESTMEM_CONVERSION_FAILED or ERR_GUESTMEM_ROLLBACK_FAILED after one. It must not
   * be called from inside a listener of this block (ERR_GUESTMEM_REENTRANT_CALL).
   */
  convertSync(gpa: Bytes, size: Bytes, to: PageState): StateChangeResult {
    if (this.closed) throw this.closedError();
    if (this.pending !== 0) {
      throw new GuestmemError('ERR_GUESTMEM_BUSY', `convertSync on ${this.name}: a conversion, repair or shutdown is still in flight; await it first, or use convert`);
    }
    const refusal = this.attributes.canChangeSync ? null : this.attributes.syncRefusal('convertSync');
    if (refusal) throw refusal;
    return this.convertRange(this.conversionRange(gpa, size, to), to);
  }

  private serialized<T>(op: () => Promise<T>): Promise<T> {
    this.pending++;
    return this.conversions.run(async () => {
      try {
        return await op();
      } finally {
        this.pending--;
      }
    });
  }

  /**
   * The conversion's range in granules, checked once, before any step: inside the block,
   * aligned, not empty, a valid target state, no granule awaiting repair.
   */
  private conversionRange(gpa: Bytes, size: Bytes, to: PageState): GranuleRange {
    this.checkOpen();
    let range: GranuleRange;
    if (typeof gpa === 'number' && Number.isSafeInteger(gpa) && gpa >= this.gpa) {
      // Numbers (every guest's request): no bigint; the tracker checks size and the end.
      range = this.attributes.range(gpa - this.gpa, size);
    } else {
      const [start, length] = checkSpan(gpa, size, 'conversion');
      if (start < BigInt(this.gpa)) {
        throw outOfRange(`gpa 0x${start.toString(16)} is below block ${this.name} at 0x${this.gpa.toString(16)}`);
      }
      range = this.attributes.range(start - BigInt(this.gpa), length);
    }
    if (to !== 'shared' && to !== 'private') throw invalidArgValue(`target state must be 'shared' or 'private', got ${String(to)}`);
    if (this.mayBeUnsettled && !this.unsettled.isAllClear(range.first, range.count)) {
      const runs = this.unsettled.runs(range.first, range.count, true);
      throw Object.assign(
        new GuestmemError(
          'ERR_GUESTMEM_CONVERSION_REJECTED',
          `${this.describeRange(range)} of ${this.name} holds granules that disagree since a failed rollback ` +
            `(${formatRuns(runs)}): call repair() first`,
        ),
        { unsettled: runs },
      );
    }
    return range;
  }

  private describeRange(range: GranuleRange): string {
    const g = this.attributes.granularity;
    return `[0x${(this.gpa + range.first * g).toString(16)}, +0x${(range.count * g).toString(16)})`;
  }

  /**
   * The steps of a conversion whose listeners are all synchronous, start to end. It counts
   * as in flight while it runs: code it calls out to (a diagnostics subscriber, a delegated
   * VM's VMM, the pre-fault's vCPU provider) that converts or closes this block is queued
   * behind it, never run in the middle of it (which could leave a device mapping a page the
   * outer conversion then makes private).
   */
  private convertRange(range: GranuleRange, to: PageState): StateChangeResult {
    this.pending++;
    try {
      return this.convertRangeNow(range, to);
    } finally {
      this.pending--;
    }
  }

  private convertRangeNow(range: GranuleRange, to: PageState): StateChangeResult {
    const steps = to === 'private' ? TO_PRIVATE : TO_SHARED;
    const stats = this.stats;
    const before = this.runsToConvert(range, to);
    stats.conversions++;
    let result: StateChangeResult | null = null;
    let i = 0;
    try {
      // One clock reading per step boundary, each ending one step and starting the next.
      let started = stats.timing ? ConversionStats.now() : 0;
      for (; i < steps.length; i++) {
        if (steps[i] === 'listeners') result = this.attributes.changeSync(range, to === 'shared');
        else this.runKernelStep(steps[i]!, range, to);
        if (stats.timing) started = stats.lap(steps[i]!, started);
      }
    } catch (error) {
      stats.failed++;
      throw runSync(this.undo(steps[i]!, range, before, to, error), () => this.notSynchronous());
    }
    this.prefault(range);
    return result!;
  }

  /** convertRange for a block with a listener that may answer with a promise. */
  private async convertRangeAsync(range: GranuleRange, to: PageState): Promise<StateChangeResult> {
    const g = this.attributes.granularity;
    const steps = to === 'private' ? TO_PRIVATE : TO_SHARED;
    const stats = this.stats;
    const before = this.runsToConvert(range, to);
    stats.conversions++;
    let result: StateChangeResult | null = null;
    let i = 0;
    try {
      // One clock reading per step boundary, each ending one step and starting the next.
      let started = stats.timing ? ConversionStats.now() : 0;
      for (; i < steps.length; i++) {
        if (steps[i] === 'listeners') result = await this.attributes.stateChange(range.first * g, range.count * g, to);
        else this.runKernelStep(steps[i]!, range, to);
        if (stats.timing) started = stats.lap(steps[i]!, started);
      }
    } catch (error) {
      stats.failed++;
      throw await runAsync(this.undo(steps[i]!, range, before, to, error));
    }
    this.prefault(range);
    return result!;
  }

  /**
   * The runs of the range not yet in the target state, read before any step: what an undo
   * puts back, and the baseline its report of what stayed converted is measured against.
   * Both paths read it here, before the first step, so that the report cannot depend on
   * which step failed (the tracker's own record of its last change is gone or rolled back
   * by then), nor on another caller of the tracker while a listener's promise is pending.
   */
  private runsToConvert(range: GranuleRange, to: PageState): Run[] {
    const g = this.attributes.granularity;
    return this.attributes.runs(opposite(to), { offset: range.first * g, size: range.count * g });
  }

  /** KVM's attributes, or the discard of the backing the range no longer uses. */
  private runKernelStep(step: ConversionStep, range: GranuleRange, to: PageState): void {
    if (step === 'kvmAttributes') {
      this.setAttributes(range.first, range.count, to);
      return;
    }
    const g = this.attributes.granularity;
    if (to === 'private') this.shared.discard(range.first * g, range.count * g);
    else this.guestMemfd.punchHole(range.first * g, range.count * g);
  }

  private notSynchronous(): GuestmemError {
    return new GuestmemError('ERR_GUESTMEM_ASYNC_LISTENER', `a listener of ${this.name} returned a promise during a synchronous conversion`);
  }

  /** The optional KVM_PRE_FAULT_MEMORY after a conversion: opportunistic, never a failure. */
  private prefault(range: GranuleRange): void {
    if (!this.prefaultVcpu) return;
    const g = this.attributes.granularity;
    const started = ConversionStats.now();
    try {
      this.vm.preFaultMemory(this.prefaultVcpu(), this.gpa + range.first * g, range.count * g);
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
    const g = this.attributes.granularity;
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
          yield* this.trackerChange(first, count, opposite(to));
          if (to === 'shared') this.setAttributes(first, count, 'private');
        } catch (error) {
          errors.push(error);
        }
      }
    }
    // The tracker's own rollback of a failed notification may have failed too; KVM may have
    // changed. Nothing ran only when the first step failed.
    if (done.length > 0 || step === 'listeners') errors.push(...(yield* this.reconcile(range.first, range.count)));
    for (const error of [cause, ...errors]) this.noteDoubts(error);
    const disagreements = findDisagreements(range.first, range.count, this.kvmShared, this.attributes, this.doubts);
    const facts = { step, cause, errors, ...kernelFacts(cause) };
    // Whatever the outcome, the caller is told every run that stayed converted: a guest
    // told "failed, nothing changed" of a page that stayed shared would put secrets in it.
    const applied = this.stayedConverted(before, to, disagreements);
    const stayed = applied.length > 0 ? `; these runs stayed ${to}, in agreement: ${formatRuns(applied)}` : '';
    if (disagreements.length > 0) {
      this.markUnsettled(disagreements);
      return Object.assign(
        new GuestmemError(
          'ERR_GUESTMEM_ROLLBACK_FAILED',
          `${what}: ${describe(cause)}; undoing it also failed (${errors.map(describe).join('; ')}), and these disagree until repair(): ` +
            `${describeDisagreements(disagreements, g)}${stayed}`,
          { cause },
        ),
        { ...facts, disagreements, applied },
      );
    }
    return Object.assign(
      new GuestmemError('ERR_GUESTMEM_CONVERSION_FAILED', `${what}: ${describe(cause)}${errors.length > 0 ? ` (undo: ${errors.map(describe).join('; ')})` : ''}${stayed}`, { cause }),
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
    const g = this.attributes.granularity;
    const converted = before.flatMap(([first, count]) => this.attributes.runs(to, { offset: first * g, size: count * g }));
    if (disagreements.length === 0) return converted;
    const doubtful = disagreements.map((d) => [d.first, d.count] as Run).sort((a, b) => a[0] - b[0]);
    return converted.flatMap(([first, count]) => this.gaps(clipRuns(doubtful, first, count), first, count));
  }

  /**
   * The tracker reports a listener whose undo failed in a ROLLBACK_FAILED with the failures
   * in `errors` (listener, ranges). For a listener that can say what it holds, the check
   * sees it anyway; for one that cannot, those ranges become doubts.
   */
  private noteDoubts(error: unknown): void {
    const failures = (error as { code?: string; errors?: unknown[] } | null)?.code === 'ERR_GUESTMEM_ROLLBACK_FAILED' ? (error as { errors: unknown[] }).errors : [];
    for (const failure of failures ?? []) {
      const { listener: name, ranges } = failure as { listener?: string; ranges?: Array<{ offset: number; size: number }> };
      const registration = this.attributes.registered.find((r) => listenerName(r.listener) === name);
      if (!registration || registration.listener.heldRuns || !ranges) continue;
      const g = this.attributes.granularity;
      const runs = [...(this.doubts.get(name!) ?? []), ...ranges.map((r) => [Number(r.offset) / g, Number(r.size) / g] as Run)];
      runs.sort((a, b) => a[0] - b[0]);
      const merged: Run[] = [];
      for (const [f, c] of runs) {
        const last = merged[merged.length - 1];
        if (last && f <= last[0] + last[1]) last[1] = Math.max(last[1], f + c - last[0]);
        else merged.push([f, c]);
      }
      this.doubts.set(name!, merged);
    }
  }

  /**
   * A listener in doubt is told to discard its doubtful runs (it must accept a discard of
   * what it may not hold: double discard), then to populate the parts that are shared.
   */
  private *resolveDoubts(errors: unknown[]): Steps<void> {
    const g = this.attributes.granularity;
    for (const [name, runs] of [...this.doubts]) {
      const registration = this.attributes.registered.find((r) => listenerName(r.listener) === name);
      if (!registration) {
        this.doubts.delete(name);
        continue;
      }
      if (!registration.listener.doubleDiscardSupported) {
        errors.push(new GuestmemError('ERR_GUESTMEM_REPAIR_FAILED', `listener "${name}" cannot say what it holds and takes no double discard: unregister it and register it again`));
        continue;
      }
      const before = errors.length;
      yield* this.tell(registration.listener, 'discard', runs, errors);
      const shared = runs.flatMap(([f, c]) => this.attributes.runs('shared', { offset: f * g, size: c * g }))
        .flatMap(([f, c]) => this.kvmShared.runs(f, c, true));
      if (errors.length === before && shared.length > 0) yield* this.tell(registration.listener, 'populate', shared, errors);
      if (errors.length === before) this.doubts.delete(name);
    }
  }

  /**
   * Makes KVM's attributes and every listener that can say what it holds follow the
   * tracker's bitmap over [first, first + count); returns what failed. Unmapping comes
   * first, before KVM turns anything private, and mapping last, after KVM turned it shared.
   */
  private *reconcile(first: number, count: number): Steps<unknown[]> {
    const g = this.attributes.granularity;
    const errors: unknown[] = [];
    const section = { offset: first * g, size: count * g };
    const withHoldings = this.attributes.registered.filter((r) => r.listener.heldRuns);
    // 1. When in doubt, unmap: a mapping of a granule the tracker or KVM calls private goes.
    const notShared = () => [...this.attributes.runs('private', section), ...this.kvmShared.runs(first, count, false)];
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
    const trackerPrivate = this.attributes.runs('private', section);
    const trackerShared = this.attributes.runs('shared', section);
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
    // 4. A granule shared in both gets its mappings back where a listener lacks them.
    const kvmAndTrackerShared = trackerShared.flatMap(([start, length]) => this.kvmShared.runs(start, length, true));
    for (const { listener, section: own } of withHoldings) {
      const missing = this.heldWhere(listener, own, kvmAndTrackerShared, false);
      if (missing.length > 0) yield* this.tell(listener, 'populate', missing, errors);
    }
    return errors;
  }

  /** Parts of [first, first + count) that no listener in `listeners` maps. */
  private unheld(listeners: ReadonlyArray<{ listener: RamDiscardListener; section: GranuleRange }>, first: number, count: number): Run[] {
    let free: Run[] = [[first, count]];
    for (const { listener, section } of listeners) {
      const held = this.heldWhere(listener, section, free, true);
      if (held.length > 0) free = free.flatMap(([f, c]) => this.gaps(clipRuns(held, f, c), f, c));
    }
    return free;
  }

  /** Parts of `runs` (inside the listener's section) that the listener holds (or lacks). */
  private heldWhere(listener: RamDiscardListener, section: GranuleRange, runs: Run[], held: boolean): Run[] {
    const found: Run[] = [];
    for (const [start, length] of clipRuns(runs, section.first, section.count)) {
      const holding = listener.heldRuns!(start, length);
      found.push(...(held ? holding : this.gaps(holding, start, length)));
    }
    return found;
  }

  private gaps(runs: Run[], first: number, count: number): Run[] {
    const gaps: Run[] = [];
    let at = first;
    for (const [start, length] of runs) {
      if (start > at) gaps.push([at, start - at]);
      at = Math.max(at, start + length);
    }
    if (at < first + count) gaps.push([at, first + count - at]);
    return gaps;
  }

  /** Sends a listener a populate or discard outside the tracker (a repair); records a failure. */
  private *tell(listener: RamDiscardListener, kind: 'populate' | 'discard', runs: Run[], errors: unknown[]): Steps<void> {
    const ranges = runs.map(([f, c]) => new GranuleRange(f, c, this.attributes.granularity));
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
      errors.push(Object.assign(new GuestmemError('ERR_GUESTMEM_LISTENER_FAILED', `repairing listener "${listenerName(listener)}": ${kind} failed: ${describe(error)}`, { cause: error }), { listener: listenerName(listener) }));
    }
  }

  /** A state change of the tracker on an undo or repair path: at once where it can be. */
  private *trackerChange(first: number, count: number, to: PageState): Steps<StateChangeResult> {
    const g = this.attributes.granularity;
    if (this.attributes.canChangeSync) return this.attributes.changeSync(this.attributes.range(first * g, count * g), to === 'shared');
    return (yield this.attributes.stateChange(first * g, count * g, to)) as StateChangeResult;
  }

  private markUnsettled(disagreements: Disagreement[]): void {
    for (const d of disagreements) this.unsettled.setRange(d.first, d.count);
    if (disagreements.length > 0) this.mayBeUnsettled = true;
  }

  private setAttributes(first: number, count: number, to: PageState): void {
    const g = this.attributes.granularity;
    this.vm.setMemoryAttributes(this.gpa + first * g, count * g, to);
    this.kvmShared.fill(first, count, to === 'shared');
  }

  /**
   * Re-derives KVM's attributes and every listener's mappings from the tracker's bitmap,
   * over the whole block (unmapping first), and accepts conversions of the granules that
   * agree again. Resolves with the granules it found in disagreement; rejects with
   * ERR_GUESTMEM_REPAIR_FAILED and `disagreements` for what still disagrees.
   */
  repair(): Promise<{ repaired: number }> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.serialized(async () => {
      this.checkOpen();
      const granules = this.attributes.granules;
      const found = findDisagreements(0, granules, this.kvmShared, this.attributes, this.doubts);
      const errors = found.length > 0 ? await runAsync(this.reconcile(0, granules)) : [];
      await runAsync(this.resolveDoubts(errors));
      const left = findDisagreements(0, granules, this.kvmShared, this.attributes, this.doubts);
      this.unsettled.clearRange(0, granules);
      this.mayBeUnsettled = false;
      this.markUnsettled(left);
      if (left.length > 0) {
        throw Object.assign(
          new GuestmemError(
            'ERR_GUESTMEM_REPAIR_FAILED',
            `repairing ${this.name} failed (${errors.map(describe).join('; ')}); still in disagreement: ${describeDisagreements(left, this.attributes.granularity)}`,
          ),
          { errors, disagreements: left },
        );
      }
      return { repaired: found.reduce((sum, d) => sum + d.count, 0) };
    });
  }

  /** What disagrees now over the whole block (empty when KVM, tracker and listeners agree). */
  disagreements(): Disagreement[] {
    return findDisagreements(0, this.attributes.granules, this.kvmShared, this.attributes, this.doubts);
  }

  private checkOpen(): void {
    if (this.released || this.shared.closed || this.guestMemfd.closed) throw this.closedError();
  }

  private closedError(): GuestmemError {
    return new GuestmemError('ERR_GUESTMEM_CLOSED', `RAM block ${this.name} is closed`);
  }

  /**
   * After the conversions already asked for: unregisters every listener (a VFIO listener
   * unmaps what it holds), then deletes the memslot and closes both backings. It goes on
   * past failures: a listener that fails to unregister has what it still holds unmapped
   * directly where it can say what that is; what could not be released is reported at the
   * end in one ERR_GUESTMEM_SHUTDOWN_INCOMPLETE (a GuestmemError; `errors` holds each).
   */
  shutdown(): Promise<void> {
    if (this.closed) return this.conversions.run(async () => undefined);
    this.closed = true;
    return this.conversions.run(async () => {
      const errors: unknown[] = [];
      for (const listener of this.attributes.listeners) {
        try {
          await this.attributes.unregister(listener);
        } catch (error) {
          const left = await this.releaseHoldings(listener);
          if (left === null || left.length > 0) {
            errors.push(Object.assign(
              new GuestmemError(
                'ERR_GUESTMEM_LISTENER_FAILED',
                `listener "${listenerName(listener)}" failed to unregister from ${this.name}: ${describe(error)}` +
                  (left ? `; it still holds granules ${formatRuns(left)}` : ''),
                { cause: error },
              ),
              { listener: listenerName(listener), held: left },
            ));
          }
        }
      }
      errors.push(...this.release());
      if (errors.length > 0) throw shutdownIncomplete(`RAM block ${this.name}`, errors);
    });
  }

  /** Discards what a listener holds, outside the tracker; the runs still held, or null if it cannot say. */
  private async releaseHoldings(listener: RamDiscardListener): Promise<Run[] | null> {
    if (!listener.heldRuns) return null;
    const held = listener.heldRuns(0, this.attributes.granules);
    if (held.length > 0) await runAsync(this.tell(listener, 'discard', held, []));
    return listener.heldRuns(0, this.attributes.granules);
  }

  /** Shuts the block down: listeners first, then the memslot and backings (`await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }

  /**
   * Deletes the memslot and closes both backings; after a conversion in flight, if there is
   * one (conversions asked for after close() are refused). It cannot wait for listeners:
   * DMA mappings they still hold stay (pinning the shared pages) until they are
   * unregistered or their container closes, so prefer shutdown().
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.pending === 0) {
      const errors = this.release();
      if (errors.length > 0) throw errors.length === 1 ? errors[0] : shutdownIncomplete(`RAM block ${this.name}`, errors);
      return;
    }
    void this.conversions.run(async () => {
      const errors = this.release();
      if (errors.length > 0) process.emitWarning(shutdownIncomplete(`RAM block ${this.name}`, errors));
    });
  }

  /** Memslot, then both fds: each is tried whatever happened to the one before. */
  private release(): unknown[] {
    if (this.released) return [];
    this.released = true;
    const errors: unknown[] = [];
    for (const step of [
      () => {
        if (this.ownsSlot && !this.vm.closed) this.vm.deleteMemorySlot(this.slot);
      },
      () => this.guestMemfd.close(),
      () => this.shared.close(),
    ]) {
      try {
        step();
      } catch (error) {
        errors.push(error);
      }
    }
    return errors;
  }

  /** close(): the block goes at once, listeners still registered keep their mappings; prefer `await using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
