// What a tracker knows, as pure state: which granules are shared (the bitmap and its count,
// in memory other threads may share), the other discard sources (a plug source) that have a
// say in what listeners hold, and the runs the change in progress flips and tells. It calls
// no listener and queues nothing: the tracker (ram-block-attributes.ts) sequences, the
// fan-out (fan-out.ts) tells.

import type { GranuleRange } from '../common/byte-range';
import { invalidArgValue } from '../common/errors';
import { ToldRuns, type Restorable } from './fan-out';
import { PageBitmap, RunList, type Held, type Run } from './page-bitmap';
import { anyDiscarded, maskRunList, populatedBySources, type DiscardSource, type SourceChange } from './discard-source';

/** Bytes before the bitmap's words in a tracker's memory: the shared count, a Float64. */
export const COUNT_BYTES = 8;

export class TrackerState implements Restorable {
  readonly bitmap: PageBitmap;
  /** Word 0: shared granules, in the tracker's memory beside the bitmap. */
  private readonly counts: Float64Array;
  /** The runs the change in progress (or the last one) flips: reused, never reallocated per change. */
  readonly changes = new RunList();
  /** What listeners are told of the change in progress: `changes`, or `masked` while another source discards. */
  readonly told: ToldRuns;
  private readonly masked = new RunList();
  /** Discard sources besides the bitmap (a plug source): listeners hold what all of them call populated. */
  private readonly sources: DiscardSource[] = [];
  /** The way the change in progress flips: what revert() flips back. */
  private toShared = false;

  constructor(
    readonly granules: number,
    granularity: number,
    memory: SharedArrayBuffer,
  ) {
    this.counts = new Float64Array(memory, 0, 1);
    this.bitmap = new PageBitmap(granules, { buffer: memory, byteOffset: COUNT_BYTES });
    this.told = new ToldRuns(granularity);
    this.told.runs = this.changes;
  }

  get shared(): number {
    return this.counts[0]!;
  }

  /** Counts the shared granules again from the bitmap, O(block / 32). */
  recount(): void {
    this.counts[0] = this.bitmap.countSet(0, this.granules);
  }

  /**
   * A change's bitmap step: makes granules [first, first + count) (`range`, where the caller
   * has it) the change in progress, flips them, puts the runs that changed in `changes` and
   * what listeners are to be told in `told`, counts them.
   */
  convert(first: number, count: number, range: GranuleRange | null, toShared: boolean): Held {
    this.toShared = toShared;
    // The span's fields set here, not through a method: this is the conversion hot path.
    const told = this.told;
    told.first = first;
    told.count = count;
    told.rangeObject = range;
    const held = this.bitmap.exchange(first, count, toShared, this.changes);
    this.counts[0] += toShared ? this.changes.total : -this.changes.total;
    // Masked only while another source discards something: a block nobody unplugs pays one test.
    if (this.sources.length === 0 || !anyDiscarded(this.sources)) {
      this.told.runs = this.changes;
    } else {
      maskRunList(this.changes, this.sources, this.masked);
      this.told.runs = this.masked;
    }
    return held;
  }

  /** Flips back, last first, what the change in progress flipped (a listener refused it). */
  revert(): void {
    const toShared = this.toShared;
    const flipped = this.changes;
    for (let i = flipped.length - 1; i >= 0; i--) {
      const first = flipped.first(i);
      const count = flipped.count(i);
      this.bitmap.fill(first, count, !toShared);
      this.counts[0] += toShared ? -count : count;
    }
  }

  /**
   * What listeners hold of [first, first + count) (granules): the shared runs that every
   * other discard source (a plug source) calls populated too, ascending.
   */
  populatedRuns(first: number, count: number): Run[] {
    return populatedBySources(this.bitmap.runs(first, count, true), this.sources);
  }

  addSource(source: DiscardSource, tracker: string, inEffect: boolean): void {
    if (source.discarded !== 0 && !inEffect) throw invalidArgValue(`discard source "${source.name}" of ${tracker} must start with nothing discarded`);
    this.sources.push(source);
  }

  /**
   * Applies a source's change and puts the granules the listeners are to be told of in
   * `told`; the change in progress is the span they lie in (what a listener is handed
   * whole). Nothing flips: `changes` is left empty. False when there is nothing to tell.
   */
  sourceRuns(change: SourceChange): boolean {
    // Nothing flips: revert() has nothing to flip back.
    this.changes.clear();
    const told = this.masked;
    told.clear();
    const others = this.sources.filter((source) => source !== change.source);
    for (const [first, count] of change.apply()) {
      for (const [f, c] of populatedBySources(this.bitmap.runs(first, count, true), others)) told.push(f, c);
    }
    this.told.runs = told;
    if (told.length === 0) return false;
    const start = told.first(0);
    this.told.first = start;
    this.told.count = told.first(told.length - 1) + told.count(told.length - 1) - start;
    this.told.rangeObject = null;
    return true;
  }
}
