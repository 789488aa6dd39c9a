// The fan-out of one change to a tracker's listeners, written once: deliver the runs to each
// registration in order (newest first, as QEMU's QLIST_INSERT_HEAD), and when one refuses,
// undo in reverse what those before it accepted, then report once. The steps are a state
// machine (FanOut: next() names the call to make and returns its argument, refused() is
// told of a failure, end() reports) run by one of two drivers: fanOutSync makes each call
// and runs to the end at once (every listener synchronous: the conversion hot path),
// fanOutAsync awaits a listener that answers with a promise. A hand-written machine, not a generator (common/steps.ts):
// a generator is an object per change on a path that makes none per conversion.
// What the undo sends is derived from where the fan-out stopped (which registration, which
// run), so the path that succeeds records nothing. Measured (valgrind's instruction count,
// the machine being too noisy for times): wrapping this fan-out in a generator per change
// adds about 250 instructions to a one-listener conversion of about 1,300.

import { granuleRangeOf, type GranuleRange } from '../common/byte-range';
import { abandon, inverse, isThenable, type ListenerCalls, type Notify } from './listener-calls';
import { RunList, type Run } from './page-bitmap';
import { notSynchronous, type Registration, type TrackerRegistry } from './tracker-registry';

/** A listener's method as the machine hands it to a driver: a single range or a batch. */
type Delivery = (arg: Arg) => unknown;

/** What one call hands a listener: a range, or a batch of them. */
type Arg = GranuleRange | GranuleRange[];

/**
 * What a fan-out tells: runs (ascending), and the span they lie in. A run that is the whole
 * span is handed to every listener as one range object (the common case: one conversion,
 * one object), made on first use so that a change no listener sees whole makes none.
 */
export class ToldRuns {
  runs = new RunList();
  first = 0;
  count = 0;
  /** The span's GranuleRange: the caller's where it made one, else made by range(). */
  rangeObject: GranuleRange | null = null;

  constructor(private readonly granularity: number) {}

  /** The span as a GranuleRange, made on first use. */
  range(): GranuleRange {
    return (this.rangeObject ??= granuleRangeOf(this.first, this.count, this.granularity));
  }

  /** The part of run [first, first + count) inside `section`, or null when they do not meet. */
  clip(section: GranuleRange, first: number, count: number): GranuleRange | null {
    const start = Math.max(section.first, first);
    const end = Math.min(section.first + section.count, first + count);
    if (start >= end) return null;
    if (start === this.first && end - start === this.count) return this.range();
    return granuleRangeOf(start, end - start, this.granularity);
  }

  /** The first `n` runs, clipped to `section`. */
  clipped(section: GranuleRange, n: number): GranuleRange[] {
    const runs = this.runs;
    const ranges: GranuleRange[] = [];
    for (let i = 0; i < n; i++) {
      const part = this.clip(section, runs.first(i), runs.count(i));
      if (part) ranges.push(part);
    }
    return ranges;
  }
}

/** What a change restores once its listeners are undone: the bitmap (TrackerState) or a discard source (SourceChange). */
export interface Restorable {
  revert(): void;
}

/** One call of an undo, planned when a listener refuses: the inverse of part of what was delivered. */
interface UndoCall {
  readonly registration: Registration;
  readonly method: Delivery;
  readonly arg: Arg;
  /** What one delivery handed over: a failed call skips the rest of its unit, as it would have stopped it. */
  readonly unit: number;
}

const enum Phase {
  Deliver,
  Undo,
  Over,
}

/** The steps of one fan-out; reused change after change by the tracker's synchronous path. */
export class FanOut {
  /**
   * The call to make now, with the argument next() returned (never kept here: a range made
   * for this call stays out of this long-lived object, which the garbage collector would
   * have to be told of on every conversion).
   */
  listener: unknown = undefined;
  method: Delivery = () => undefined;
  private callKind: Notify = 'populate';
  private callRegistration: Registration | null = null;

  private kind: Notify = 'populate';
  private told: ToldRuns;
  private head: Registration | null = null;
  /** Only the head is told (a register or an unregister), not the registrations after it. */
  private only = false;
  private restore: Restorable | null = null;
  private phase = Phase.Over;
  /** The registration being told, and how many runs of told it has been handed (all, for a batch). */
  private registration: Registration | null = null;
  private run = 0;
  /** The registration's method when it is told run by run; null when it takes batches. */
  private single: Delivery | null = null;
  private failed = false;
  private failure: unknown = undefined;
  private errors: unknown[] = [];
  private plan: UndoCall[] = [];
  private planAt = 0;
  private skipUnit = -1;

  constructor(
    readonly calls: ListenerCalls,
    private readonly registry: TrackerRegistry,
    /** What listeners may hold now (shared and plugged): a late populate is taken back outside it. */
    private readonly populated: { populatedRuns(first: number, count: number): Run[] },
    private readonly granularity: number,
  ) {
    this.told = new ToldRuns(granularity);
  }

  /**
   * Starts a fan-out of `told` from `head`: to every registration after it too, or with
   * `only`, to the head alone. If a listener refuses, `restore` is reverted after the
   * listeners are undone, before the failure is reported.
   */
  begin(populate: boolean, told: ToldRuns, head: Registration | null, only: boolean, restore: Restorable | null): void {
    this.kind = populate ? 'populate' : 'discard';
    this.told = told;
    this.head = head;
    this.only = only;
    this.restore = restore;
    this.failed = false;
    this.phase = head === null ? Phase.Over : Phase.Deliver;
    if (head !== null) this.enter(head);
  }

  /** Makes `registration` the one being told: its first call is next to be named. */
  private enter(registration: Registration): void {
    const populate = this.kind === 'populate';
    const batch = populate ? registration.populateRuns : registration.discardRuns;
    this.registration = registration;
    this.run = 0;
    this.single = batch === undefined ? ((populate ? registration.populate : registration.discard) as Delivery) : null;
    this.callRegistration = registration;
    this.callKind = this.kind;
    this.listener = registration.listener;
    this.method = this.single ?? (batch as Delivery);
  }

  /**
   * Names the next call (listener, method, arg); false when the fan-out, and its undo, are
   * over. Delivering: every registration whose section the runs meet, in order, each with
   * all of its clipped runs in one call where it takes batches, else run by run straight
   * from the run list (no list of ranges is built). Kept small, so that it inlines into
   * the driver: a listener told run by run is the conversion hot path.
   */
  next(): Arg | null {
    if (this.phase !== Phase.Deliver) return this.phase === Phase.Undo ? this.nextUndo() : null;
    if (this.single !== null) {
      const part = this.nextRun();
      if (part !== null) return part;
      if (this.only || this.registration!.older === null) {
        this.phase = Phase.Over;
        return null;
      }
    }
    return this.nextRegistration();
  }

  /** The next run of the registration told run by run that meets its section; null when none is left. */
  private nextRun(): GranuleRange | null {
    const told = this.told;
    const runs = told.runs;
    const section = this.registration!.section;
    while (this.run < runs.length) {
      const part = told.clip(section, runs.first(this.run), runs.count(this.run));
      this.run++;
      if (part !== null) return part;
    }
    return null;
  }

  /**
   * The batch of the registration that takes them (all of its clipped runs in one call),
   * else the first call of the next registration the runs meet, in a loop: a block may have
   * tens of thousands of listeners on sections the change does not meet.
   */
  private nextRegistration(): Arg | null {
    for (let registration = this.registration!; ; ) {
      if (this.single === null && this.run === 0) {
        // run 1: the batch is handed over (a failed one did nothing: all or nothing).
        this.run = 1;
        const ranges = this.told.clipped(registration.section, this.told.runs.length);
        if (ranges.length > 0) return ranges;
      }
      const older = this.only ? null : registration.older;
      if (older === null) {
        this.phase = Phase.Over;
        return null;
      }
      this.enter(older);
      registration = older;
      const part = this.single !== null ? this.nextRun() : null;
      if (part !== null) return part;
    }
  }

  private prepare(registration: Registration, kind: Notify, method: Delivery, arg: Arg): Arg {
    this.callRegistration = registration;
    this.callKind = kind;
    this.listener = registration.listener;
    this.method = method;
    return arg;
  }

  private nextUndo(): Arg | null {
    while (this.planAt < this.plan.length) {
      const call = this.plan[this.planAt++]!;
      if (call.unit === this.skipUnit) continue;
      this.skipUnit = -1;
      return this.prepare(call.registration, inverse(this.kind), call.method, call.arg);
    }
    this.phase = Phase.Over;
    return null;
  }

  /** The call named by next() threw, rejected or broke its word: fail the fan-out, or note a failed undo. */
  refused(cause: unknown, arg: Arg): void {
    const registration = this.callRegistration!;
    const error = this.calls.listenerFailed(registration, this.callKind, Array.isArray(arg) ? arg : [arg], cause);
    if (this.phase === Phase.Undo) {
      this.errors.push(error);
      this.skipUnit = this.plan[this.planAt - 1]!.unit;
      return;
    }
    this.failed = true;
    this.failure = error;
    this.planUndo(registration);
  }

  /**
   * The undo of a fan-out that failed at `failed`: the inverse to each registration told
   * before it and to the runs it accepted itself, last first. A batch was all or nothing;
   * run by run, the runs before the one that failed went through.
   */
  private planUndo(failed: Registration): void {
    const plan: UndoCall[] = [];
    const undoPopulate = this.kind === 'discard';
    const runs = this.told.runs;
    let unit = 0;
    for (let registration: Registration | null = failed; registration !== null; registration = registration === this.head ? null : registration.newer) {
      const asBatch = (undoPopulate ? registration.discardRuns : registration.populateRuns) !== undefined;
      if (registration === failed && asBatch) continue;
      const ranges = this.told.clipped(registration.section, registration === failed ? this.run - 1 : runs.length);
      const units = asBatch ? [ranges] : ranges.reverse().map((range) => [range]);
      const batch = undoPopulate ? registration.populateRuns : registration.discardRuns;
      const single = (undoPopulate ? registration.populate : registration.discard) as Delivery;
      for (const ranges of units) {
        if (ranges.length === 0) continue;
        if (batch !== undefined) plan.push({ registration, method: batch as Delivery, arg: ranges, unit });
        else for (const range of ranges) plan.push({ registration, method: single, arg: range, unit });
        unit++;
      }
    }
    this.plan = plan;
    this.planAt = 0;
    this.skipUnit = -1;
    this.errors = [];
    this.phase = Phase.Undo;
  }

  /** Ends the fan-out: when a listener refused, restores what the change changed (after the undo) and throws its report. */
  end(): void {
    if (this.failed) this.report();
  }

  private report(): never {
    this.failed = false;
    this.plan = [];
    this.listener = undefined;
    this.restore?.revert();
    throw this.calls.withRollbackErrors(this.failure, this.errors);
  }

  /**
   * What the answer of a call named by next() amounts to for a synchronous driver, when it
   * is not plain `undefined`: a failure when the listener swallowed the re-entry error of a
   * call back into the tracker, or broke its word and returned a promise.
   */
  answered(result: unknown, arg: Arg): void {
    const reentry = this.calls.takeReentry(result);
    if (reentry !== null) this.refused(reentry, arg);
    else if (isThenable(result)) this.refused(this.broken(result, arg), arg);
  }

  /**
   * The call named by next() answered a synchronous driver with a promise: the failure it
   * amounts to. The change is rolled back now, but what the listener started may land
   * later: a populate landing after the rollback would map granules the tracker calls
   * private, so it is retracted when it settles.
   */
  private broken(late: PromiseLike<unknown>, arg: Arg): unknown {
    const registration = this.callRegistration!;
    if (this.callKind === 'populate') this.retractWhenSettled(registration, Array.isArray(arg) ? arg : [arg], late);
    else abandon(late);
    return notSynchronous(registration.name);
  }

  /**
   * When a populate that broke its promise to be synchronous settles, tells the listener to
   * discard whatever of its ranges listeners may not hold by then: private, or unplugged
   * (when in doubt, unmap). Its failures are left to the block's agreement check: nothing
   * is waiting for them.
   */
  private retractWhenSettled(registration: Registration, ranges: GranuleRange[], late: PromiseLike<unknown>): void {
    const { populated, calls, registry, granularity } = this;
    const discard = (first: number, count: number): void => {
      try {
        abandon(calls.call(registration.listener, registration.discard, granuleRangeOf(first, count, granularity)));
      } catch {
        // The agreement check (disagreements(), repair()) sees what is still mapped.
      }
    };
    const retract = (): void => {
      if (!registry.includes(registration)) return;
      for (const range of ranges) {
        let at = range.first;
        for (const [first, count] of populated.populatedRuns(range.first, range.count)) {
          if (first > at) discard(at, first - at);
          at = first + count;
        }
        if (at < range.first + range.count) discard(at, range.first + range.count - at);
      }
    };
    Promise.resolve(late).then(retract, retract);
  }
}

/**
 * Runs a fan-out to the end now: every listener synchronous. A promise breaks a listener's
 * word and fails its call; the undo runs the same way. Each call is ListenerCalls.call
 * written out (the re-entry guard up around it), with one try around the loop rather than
 * one per call, entered again after a failure: this is the conversion hot path.
 */
export function fanOutSync(fan: FanOut, populate: boolean, told: ToldRuns, head: Registration, restore: Restorable): void {
  const calls = fan.calls;
  fan.begin(populate, told, head, false, restore);
  for (;;) {
    let arg: Arg | null = null;
    try {
      while ((arg = fan.next()) !== null) {
        calls.notifying = true;
        const result = fan.method.call(fan.listener, arg);
        calls.notifying = false;
        if (result !== undefined || calls.reentry !== null) fan.answered(result, arg);
      }
      break;
    } catch (cause) {
      calls.notifying = false;
      // It failed anyway (with the re-entry error or another): the notification fails.
      calls.reentry = null;
      fan.refused(cause, arg!);
    }
  }
  fan.end();
}

/** Runs a fan-out awaiting each listener that answers with a promise (bounded by listenerTimeoutMs). */
export async function fanOutAsync(fan: FanOut, populate: boolean, told: ToldRuns, head: Registration | null, only: boolean, restore: Restorable | null): Promise<void> {
  const calls = fan.calls;
  fan.begin(populate, told, head, only, restore);
  for (let arg = fan.next(); arg !== null; arg = fan.next()) {
    try {
      const result = calls.call(fan.listener, fan.method, arg);
      if (isThenable(result)) await calls.settle(result);
    } catch (cause) {
      fan.refused(cause, arg);
    }
  }
  fan.end();
}
