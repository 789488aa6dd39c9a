// A listener that models a VFIO DMA listener without a kernel: it keeps the set of granules
// it has "mapped" and counts every notification that maps a granule twice or unmaps one it
// does not hold. The dry run (`guestmem simulate`) and the tests use it as the witness
// that the tracker's notifications are exact. What it holds lives in a SharedArrayBuffer, so
// that a replica of it in another thread (toThreadDescriptor) holds the same; its counts are
// each thread's own.

import { GranuleRange } from '../common/byte-range';
import { checkInteger, describeValue, invalidArgType, outOfRange } from '../common/errors';
import { PageBitmap, type Run } from './page-bitmap';
import { checkListener, type RamDiscardListener } from './ram-discard-listener';
import { GuestmemError } from '../common/errors';
import { defineThreadKind, type ThreadDescriptor } from '../memory/thread-kinds';

type Kind = 'populate' | 'discard';

/**
 * A listener that records what it holds as VFIO would (a double map or unmap counts as an
 * error): a stand-in for a device in simulations and tests.
 */
export class RecordingListener implements RamDiscardListener {
  readonly name: string;
  readonly doubleDiscardSupported: boolean;
  /** Synchronous alone, or when the listener it wraps is. */
  readonly synchronous: boolean;
  private readonly mapped: PageBitmap;
  /** What `mapped` lives in: the same for every replica of this listener. */
  private readonly memory: SharedArrayBuffer;
  /** Notifications that mapped a mapped granule or unmapped an unmapped one. */
  errors = 0;
  populates = 0;
  discards = 0;
  /** Test hook: return true to make the next notification throw, as a failing DMA map would. */
  failWhen: ((kind: Kind, range: GranuleRange) => boolean) | null = null;

  private readonly inner: RamDiscardListener | null;
  populateRuns?: (ranges: GranuleRange[]) => void | PromiseLike<void>;
  /** Present when it takes batches (its inner listener does, or `batch` was asked for). */
  discardRuns?: (ranges: GranuleRange[]) => void | PromiseLike<void>;

  /**
   * With `inner`, it forwards each notification to that listener (a VfioDmaListener, say)
   * and records only what the inner listener accepted: a witness of a real listener. It
   * takes batches when the inner listener does, or, without one, when asked to (`batch`).
   */
  constructor(
    name: string,
    blockGranules: number,
    options: {
      doubleDiscardSupported?: boolean;
      inner?: RamDiscardListener;
      batch?: boolean;
      /** @internal A replica's: the memory of the listener it copies. */
      mapped?: SharedArrayBuffer;
    } = {},
  ) {
    if (typeof name !== 'string') throw invalidArgType(`name must be a string, got ${describeValue(name)}`);
    checkInteger(blockGranules, 'blockGranules', 0, PageBitmap.MAX_BITS);
    if (options === null || typeof options !== 'object') throw invalidArgType(`options must be an object, got ${describeValue(options)}`);
    if (options.inner !== undefined) checkListener(options.inner);
    this.name = name;
    this.memory = options.mapped instanceof SharedArrayBuffer ? options.mapped : PageBitmap.sharedMemory(PageBitmap.bytesFor(blockGranules), 'a recording listener');
    this.mapped = new PageBitmap(blockGranules, { buffer: this.memory });
    this.inner = options.inner ?? null;
    this.doubleDiscardSupported = options.doubleDiscardSupported ?? this.inner?.doubleDiscardSupported ?? false;
    this.synchronous = this.inner ? this.inner.synchronous === true : true;
    const inner = this.inner;
    if (inner ? inner.populateRuns : options.batch) this.populateRuns = (ranges) => this.batch('populate', ranges);
    if (inner ? inner.discardRuns : options.batch) this.discardRuns = (ranges) => this.batch('discard', ranges);
  }

  /**
   * What another thread needs to record into the same bitmap (a replica: its own counts and
   * failWhen). Not for one that wraps another listener: that one would have to travel too.
   */
  toThreadDescriptor(): ThreadDescriptor {
    if (this.inner !== null) throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `recording listener "${this.name}" wraps another listener and cannot run on another thread`);
    return {
      kind: 'recording', name: this.name, granules: this.mapped.bits, doubleDiscardSupported: this.doubleDiscardSupported,
      batch: this.populateRuns !== undefined, mapped: this.memory,
    };
  }

  /** Refuses a section that does not fit the block it was made for, at register. */
  attach(section: GranuleRange): void {
    this.checkRange(section);
    this.inner?.attach?.(section);
  }

  /**
   * A batch is all or nothing: a malformed range or an injected failure on any range fails
   * it before any change.
   */
  private batch(kind: Kind, ranges: GranuleRange[]): void | PromiseLike<void> {
    if (!Array.isArray(ranges)) throw invalidArgType(`${kind}Runs takes an array of GranuleRanges, got ${describeValue(ranges)}`);
    for (const range of ranges) this.checkRange(range);
    for (const range of ranges) {
      if (this.failWhen?.(kind, range)) throw new Error(`injected ${kind} failure on ${range}`);
    }
    const inner = kind === 'populate' ? this.inner?.populateRuns : this.inner?.discardRuns;
    const record = () => {
      for (const range of ranges) {
        if (kind === 'populate') this.recordPopulate(range);
        else this.recordDiscard(range);
      }
    };
    const forwarded = inner?.call(this.inner, ranges);
    if (forwarded && typeof forwarded.then === 'function') return Promise.resolve(forwarded).then(record);
    record();
  }

  populate(range: GranuleRange): void | PromiseLike<void> {
    this.checkRange(range);
    if (this.failWhen?.('populate', range)) throw new Error(`injected populate failure on ${range}`);
    const forwarded = this.inner?.populate(range);
    if (forwarded && typeof forwarded.then === 'function') return Promise.resolve(forwarded).then(() => this.recordPopulate(range));
    this.recordPopulate(range);
  }

  discard(range: GranuleRange): void | PromiseLike<void> {
    this.checkRange(range);
    if (this.failWhen?.('discard', range)) throw new Error(`injected discard failure on ${range}`);
    const forwarded = this.inner?.discard(range);
    if (forwarded && typeof forwarded.then === 'function') return Promise.resolve(forwarded).then(() => this.recordDiscard(range));
    this.recordDiscard(range);
  }

  /** A notification's range must be a GranuleRange inside the block this listener records. */
  private checkRange(range: unknown): void {
    if (!(range instanceof GranuleRange)) throw invalidArgType(`${this.name}: expected a GranuleRange, got ${describeValue(range)}`);
    if (range.end > this.mapped.bits) {
      throw outOfRange(`${this.name}: ${range} (granules [${range.first}, ${range.end})) is past the ${this.mapped.bits} granules this listener records`);
    }
  }

  private recordPopulate(range: GranuleRange): void {
    this.populates++;
    if (!this.mapped.isAllClear(range.first, range.count)) this.errors++;
    this.mapped.setRange(range.first, range.count);
  }

  private recordDiscard(range: GranuleRange): void {
    this.discards++;
    // A listener with double discard accepts a discard over granules it no longer holds.
    if (!this.doubleDiscardSupported && !this.mapped.isAllSet(range.first, range.count)) this.errors++;
    this.mapped.clearRange(range.first, range.count);
  }

  /** Maximal runs of mapped granules, ascending. */
  mappedRuns(): Run[] {
    return this.mapped.runs(0, this.mapped.bits, true);
  }

  heldRuns(first: number, count: number): Run[] {
    return this.mapped.runs(first, count, true);
  }

  get mappedGranules(): number {
    return this.mapped.countSet(0, this.mapped.bits);
  }
}

defineThreadKind('listener', 'recording', (d) =>
  new RecordingListener(d.name as string, d.granules as number, { doubleDiscardSupported: d.doubleDiscardSupported as boolean, batch: d.batch as boolean, mapped: d.mapped as SharedArrayBuffer }));
