// A second say in what a block's listeners hold. QEMU's answer to virtio-mem in a
// confidential guest (a RAM discard manager with several sources) is that a granule is
// populated for listeners only when every source calls it populated: the shared/private
// bitmap is one source, a plug source (plug-source.ts) another, a balloon could be a third.
// The tracker asks its other sources through this interface, and only while one of them
// discards something (`discarded` > 0), so that a block nobody unplugs pays nothing.

import type { RunList, Run } from './page-bitmap';

/** A source of discards besides the shared/private bitmap, as the tracker consults it. */
export interface DiscardSource {
  /** Shown in errors and reports. */
  readonly name: string;
  /** Granules this source discards now; 0 lets the tracker skip asking it. */
  readonly discarded: number;
  /** The runs of [first, first + count) this source calls populated, ascending, clipped. */
  populatedRuns(first: number, count: number): Run[];
}

/** The parts of sorted, disjoint `runs` that every source calls populated, ascending. */
export function populatedBySources(runs: readonly Run[], sources: readonly DiscardSource[]): Run[] {
  let kept: Run[] = runs as Run[];
  for (const source of sources) {
    if (source.discarded === 0) continue;
    kept = kept.flatMap(([first, count]) => source.populatedRuns(first, count));
  }
  return kept;
}

/** `populatedBySources` from a RunList into another (the tracker's reused lists). */
export function maskRunList(from: RunList, sources: readonly DiscardSource[], into: RunList): void {
  into.clear();
  for (let i = 0; i < from.length; i++) {
    for (const [first, count] of populatedBySources([[from.first(i), from.count(i)]], sources)) into.push(first, count);
  }
}

/** True when some source discards something: the tracker must mask what it tells listeners. */
export function anyDiscarded(sources: readonly DiscardSource[]): boolean {
  for (const source of sources) if (source.discarded > 0) return true;
  return false;
}

/** One change of a discard source, as the tracker makes it between its other operations. */
export interface SourceChange {
  readonly source: DiscardSource;
  /** True when the source gives granules back (plug), false when it takes them (unplug). */
  readonly populate: boolean;
  /** Makes the change in the source; returns the granules whose state changed, ascending. */
  apply(): Run[];
  /** Undoes apply(): a listener refused the change. */
  revert(): void;
}
