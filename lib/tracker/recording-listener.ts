// A listener that models a VFIO DMA listener without a kernel: it keeps the set of granules
// it has "mapped" (a bitmap of the section it listens to, not of the whole block: 60,000
// one-page listeners on a 64 GiB block take 60,000 words, not 60,000 × 2 MiB) and counts
// every notification that maps a granule twice or unmaps one it does not hold. The dry run (`guestmem simulate`) and the tests use it as the witness
// that the tracker's notifications are exact. What it holds lives in a SharedArrayBuffer, so
// that a replica of it in another thread (toThreadDescriptor) holds the same; its counts are
// each thread's own.

import { GranuleRange } from '../common/byte-range';
import { invalidArgType, outOfRange } from '../common/errors';
import { checkInteger, describeValue } from '../common/validators';
import { Held, PageBitmap, RunList, type Run } from './page-bitmap';
import { checkListener, type RamDiscardListener } from './ram-discard-listener';
import { GuestmemError } from '../common/errors';
import { defineThreadKind, type ThreadDescriptor } from '../common/thread-kinds';

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
  /** Granules [base, base + mapped.bits) of the block: the section it records. */
  private readonly mapped: PageBitmap;
  private readonly base: number;
  /** What `mapped` lives in: the same for every replica of this listener. */
  private readonly memory: SharedArrayBuffer;
  /** Notifications that mapped a mapped granule or unmapped an unmapped one. */
  errors = 0;
  /** The runs a record flips (unused: convert lists them), reused. */
  private readonly flipped = new RunList();
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
      /**
       * The granules it will listen to, { first, count } (default: the whole block): it
       * records those alone, and refuses a notification outside them.
       */
      section?: { first: number; count: number };
      /** @internal A replica's: the memory of the listener it copies. */
      mapped?: SharedArrayBuffer;
    } = {},
  ) {
    if (typeof name !== 'string') throw invalidArgType(`name must be a string, got ${describeValue(name)}`);
    checkInteger(blockGranules, 'blockGranules', 0, PageBitmap.MAX_BITS);
    if (options === null || typeof options !== 'object') throw invalidArgType(`options must be an object, got ${describeValue(options)}`);
    if (options.inner !== undefined) checkListener(options.inner);
    const section = options.section ?? { first: 0, count: blockGranules };
    if (section === null || typeof section !== 'object') throw invalidArgType(`section must be an object { first, count }, got ${describeValue(section)}`);
    checkInteger(section.first, 'section.first', 0, blockGranules);
    checkInteger(section.count, 'section.count', 0, blockGranules - section.first);
    this.name = name;
    this.base = section.first;
    this.memory = options.mapped instanceof SharedArrayBuffer ? options.mapped : PageBitmap.sharedMemory(PageBitmap.bytesFor(section.count), 'a recording listener');
    this.mapped = new PageBitmap(section.count, { buffer: this.memory });
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
      kind: 'recording', name: this.name, first: this.base, granules: this.mapped.bits, doubleDiscardSupported: this.doubleDiscardSupported,
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

  /** A notification's range must be a GranuleRange inside the granules this listener records. */
  private checkRange(range: unknown): void {
    if (!(range instanceof GranuleRange)) throw invalidArgType(`${this.name}: expected a GranuleRange, got ${describeValue(range)}`);
    if (range.first < this.base || range.end > this.base + this.mapped.bits) {
      throw outOfRange(`${this.name}: ${range} (granules [${range.first}, ${range.end})) is outside the granules [${this.base}, ${this.base + this.mapped.bits}) this listener records`);
    }
  }

  /** One pass (PageBitmap.exchange): the granules flip, and what they held says whether any was mapped already. */
  private recordPopulate(range: GranuleRange): void {
    this.populates++;
    if (this.mapped.exchange(range.first - this.base, range.count, true, this.flipped) !== Held.Clear) this.errors++;
  }

  private recordDiscard(range: GranuleRange): void {
    this.discards++;
    // A listener with double discard accepts a discard over granules it no longer holds.
    if (this.mapped.exchange(range.first - this.base, range.count, false, this.flipped) !== Held.Set && !this.doubleDiscardSupported) this.errors++;
  }

  /** Maximal runs of mapped granules, ascending, in the block's granules. */
  mappedRuns(): Run[] {
    return this.heldRuns(this.base, this.mapped.bits);
  }

  /** Runs of mapped granules in [first, first + count) of the block (outside its section it holds none). */
  heldRuns(first: number, count: number): Run[] {
    const start = Math.max(first, this.base);
    const end = Math.min(first + count, this.base + this.mapped.bits);
    if (start >= end) return [];
    return this.mapped.runs(start - this.base, end - start, true).map(([at, n]): Run => [at + this.base, n]);
  }

  get mappedGranules(): number {
    return this.mapped.countSet(0, this.mapped.bits);
  }
}

defineThreadKind('listener', 'recording', (d) =>
  new RecordingListener(d.name as string, (d.first as number) + (d.granules as number), {
    doubleDiscardSupported: d.doubleDiscardSupported as boolean, batch: d.batch as boolean, section: { first: d.first as number, count: d.granules as number }, mapped: d.mapped as SharedArrayBuffer,
  }));
