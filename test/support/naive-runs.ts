// The naive model's runs, page by page: what every property test compares the word-level
// bitmap, tracker and listeners against.

import type { Run } from '../../lib/tracker/page-bitmap';

/** The runs of pages in [start, end) for which `held` is true, found one page at a time. */
export function runsWhere(held: (page: number) => boolean, start: number, end: number): Run[] {
  const runs: Run[] = [];
  for (let i = start + 0; i < end; i++) { // + 0: a start of -0 still gives runs from 0
    if (!held(i)) continue;
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === i) last[1]++;
    else runs.push([i, 1]);
  }
  return runs;
}

/** The runs of set pages of a boolean model in [start, end). */
export function naiveRuns(bits: boolean[], start = 0, end = bits.length): Run[] {
  return runsWhere((page) => bits[page] === true, start, end);
}
