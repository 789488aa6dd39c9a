// Do KVM's attributes, the tracker's bitmap and every listener's mappings agree over a range
// of a RAM block? After a failed conversion (and after a repair) the block asks this, and a
// disagreement is named exactly: which granules, and what each party says about them.

import type { PageBitmap, Run } from './page-bitmap';
import type { RamBlockAttributes } from './ram-block-attributes';
import { listenerName, type RamDiscardListener } from './ram-discard-listener';
import type { PageState } from './state-change-channel';

export interface Disagreement {
  /** Block granule index of the first granule, and how many. */
  first: number;
  count: number;
  /** What KVM's memory attributes say (as the block last set them). */
  kvm: PageState;
  /** What the tracker's bitmap says. */
  tracker: PageState;
  /**
   * Each listener that holds a mapping the tracker does not call shared, or lacks one it
   * does; 'unknown' for one that cannot say what it holds and whose undo failed there.
   * Keyed by the listener's name; where two registered listeners share a name, the later
   * ones are told apart as "name#2", "name#3" in the order they registered.
   */
  listeners: Record<string, 'mapped' | 'unmapped' | 'unknown'>;
}

/** True iff `index` lies in one of the sorted, disjoint runs. */
function inRuns(runs: Run[], index: number): boolean {
  let low = 0;
  let high = runs.length - 1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    const [first, count] = runs[middle]!;
    if (index < first) high = middle - 1;
    else if (index >= first + count) low = middle + 1;
    else return true;
  }
  return false;
}

function boundaries(runs: Run[], into: Set<number>): void {
  for (const [first, count] of runs) {
    into.add(first);
    into.add(first + count);
  }
}

/**
 * The name each registered listener goes by in reports: its own, or, for the second and
 * later of listeners that share one (two VFIO listeners with the default name), the name
 * with "#n" in registration order, so that neither hides the other.
 */
export function listenerLabels(listeners: readonly RamDiscardListener[]): Map<RamDiscardListener, string> {
  const labels = new Map<RamDiscardListener, string>();
  const seen = new Map<string, number>();
  // Oldest first: the first to register keeps its plain name.
  for (let i = listeners.length - 1; i >= 0; i--) {
    const name = listenerName(listeners[i]!);
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    labels.set(listeners[i]!, n === 1 ? name : `${name}#${n}`);
  }
  return labels;
}

/**
 * The disagreements inside [first, first + count), merged into maximal runs that share one
 * description. Costs O(runs · log runs) of the parties' run lists, not O(granules).
 * `kvmShared` is the block's record of KVM's attributes (1 = shared).
 */
export function findDisagreements(
  first: number,
  count: number,
  kvmShared: PageBitmap,
  tracker: RamBlockAttributes,
  doubts: ReadonlyMap<RamDiscardListener, Run[]> = new Map(),
): Disagreement[] {
  const labels = listenerLabels(tracker.listeners);
  const label = (listener: RamDiscardListener) => labels.get(listener) ?? listenerName(listener);
  const end = first + count;
  const kvmRuns = kvmShared.runs(first, count, true);
  const trackerRuns = tracker.runs('shared', { offset: first * tracker.granularity, size: count * tracker.granularity });
  // What listeners should hold: shared, and populated by every other discard source (plugged).
  const populatedRuns = tracker.populatedRuns(first, count);
  const cuts = new Set<number>([first, end]);
  boundaries(kvmRuns, cuts);
  boundaries(trackerRuns, cuts);
  boundaries(populatedRuns, cuts);
  const parties: Array<{ name: string; start: number; end: number; held: Run[] }> = [];
  for (const { listener, section } of tracker.registered) {
    if (!listener.heldRuns) continue;
    const start = Math.max(first, section.first);
    const stop = Math.min(end, section.end);
    if (start >= stop) continue;
    const held = listener.heldRuns(start, stop - start);
    parties.push({ name: label(listener), start, end: stop, held });
    cuts.add(start);
    cuts.add(stop);
    boundaries(held, cuts);
  }
  for (const runs of doubts.values()) boundaries(runs, cuts);
  const points = [...cuts].filter((p) => p >= first && p <= end).sort((a, b) => a - b);
  const found: Disagreement[] = [];
  let key = '';
  for (let i = 0; i + 1 < points.length; i++) {
    const at = points[i]!;
    const kvm: PageState = inRuns(kvmRuns, at) ? 'shared' : 'private';
    const trackerState: PageState = inRuns(trackerRuns, at) ? 'shared' : 'private';
    const populated = inRuns(populatedRuns, at);
    const listeners: Disagreement['listeners'] = {};
    for (const party of parties) {
      if (at < party.start || at >= party.end) continue;
      const mapped = inRuns(party.held, at);
      if (mapped !== populated) listeners[party.name] = mapped ? 'mapped' : 'unmapped';
    }
    for (const [listener, runs] of doubts) if (inRuns(runs, at)) listeners[label(listener)] = 'unknown';
    if (kvm === trackerState && Object.keys(listeners).length === 0) {
      key = '';
      continue;
    }
    const next = JSON.stringify([kvm, trackerState, listeners]);
    const last = found[found.length - 1];
    if (next === key && last && last.first + last.count === at) last.count += points[i + 1]! - at;
    else found.push({ first: at, count: points[i + 1]! - at, kvm, tracker: trackerState, listeners });
    key = next;
  }
  return found;
}

/** "[0x1000, +0x2000) KVM shared, tracker private, vfio-iommufd mapped" with block-relative offsets. */
export function describeDisagreements(found: Disagreement[], granularity: number): string {
  return found
    .map((d) => {
      const parts = [`KVM ${d.kvm}`, `tracker ${d.tracker}`, ...Object.entries(d.listeners).map(([name, state]) => `${name} ${state}`)];
      return `[0x${(d.first * granularity).toString(16)}, +0x${(d.count * granularity).toString(16)}) ${parts.join(', ')}`;
    })
    .join('; ');
}
