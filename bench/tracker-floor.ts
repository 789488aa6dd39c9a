// The second yardstick of `npm run bench`: bench/tracker-yardstick.c transliterated into
// plain TypeScript (32-bit words, since a JavaScript bit operation is 32 bits wide), with
// nothing of the library's duties: no byte/bigint boundary, no range objects, no rollback,
// no re-entry guard, no diagnostics channel. It shows what JavaScript itself costs for the
// same semantics on this machine, next to the C, so that the library's ratio can be read
// as "the language" plus "ours". It is not part of the package.

const ALL = 0xffffffff;

function mask(lo: number, hi: number): number {
  return ((ALL >>> (32 - (hi - lo))) << lo) >>> 0;
}

/** A listener as the C yardstick has it: a section in granules and two counters. */
export class FloorListener {
  populated = 0;
  discarded = 0;
  constructor(
    readonly first: number,
    readonly count: number,
  ) {}
  populate(_first: number, count: number): void {
    this.populated += count;
  }
  discard(_first: number, count: number): void {
    this.discarded += count;
  }
}

/** What a change did: from 0 private, 1 shared, 2 mixture, -1 refused (as the C's result). */
export interface FloorResult {
  from: number;
  changed: number;
  runs: number;
}

export class FloorTracker {
  readonly granules: number;
  shared = 0;
  private readonly words: Uint32Array;
  private readonly runs: number[] = [];
  private readonly listeners: FloorListener[] = [];

  constructor(
    size: number,
    private readonly page: number,
  ) {
    this.granules = size / page;
    this.words = new Uint32Array(Math.ceil(this.granules / 32));
    this.words.fill(0);
  }

  addListener(listener: FloorListener): void {
    this.listeners.push(listener);
  }

  /** First bit equal to `value` in [from, end), or end. */
  private scan(from: number, end: number, value: boolean): number {
    if (from >= end) return end;
    const invert = value ? 0 : ALL;
    let i = Math.floor(from / 32);
    const last = Math.floor((end - 1) / 32);
    let w = ((this.words[i]! ^ invert) & mask(from - i * 32, 32)) >>> 0;
    while (w === 0) {
      if (++i > last) return end;
      w = (this.words[i]! ^ invert) >>> 0;
    }
    const found = i * 32 + 31 - Math.clz32(w & -w);
    return found < end ? found : end;
  }

  private fill(start: number, count: number, value: boolean): void {
    const end = start + count;
    const fw = Math.floor(start / 32);
    const lw = Math.floor((end - 1) / 32);
    const words = this.words;
    if (fw === lw) {
      const m = mask(start - fw * 32, end - 1 - lw * 32 + 1);
      words[fw] = value ? words[fw]! | m : words[fw]! & ~m;
      return;
    }
    const head = mask(start - fw * 32, 32);
    const tail = mask(0, end - 1 - lw * 32 + 1);
    words[fw] = value ? words[fw]! | head : words[fw]! & ~head;
    for (let i = fw + 1; i < lw; i++) words[i] = value ? ALL : 0;
    words[lw] = value ? words[lw]! | tail : words[lw]! & ~tail;
  }

  stateChange(offset: number, size: number, toShared: boolean): FloorResult {
    const first = offset / this.page;
    const count = size / this.page;
    const end = first + count;
    if (!(count > 0) || !Number.isInteger(first) || !Number.isInteger(count) || end > this.granules) return { from: -1, changed: 0, runs: 0 };
    const firstPrivate = this.scan(first, end, false);
    const firstShared = firstPrivate >= end ? first : this.scan(first, end, true);
    const from = firstPrivate >= end ? 1 : firstShared >= end ? 0 : 2;
    const runs = this.runs;
    let n = 0;
    if (from === 2) {
      let cursor = toShared ? firstPrivate : firstShared;
      while (cursor < end) {
        const s = this.scan(cursor, end, !toShared);
        if (s >= end) break;
        const e = this.scan(s, end, toShared);
        runs[2 * n] = s;
        runs[2 * n + 1] = e - s;
        n++;
        cursor = e;
      }
    } else if ((from === 1) !== toShared) {
      runs[0] = first;
      runs[1] = count;
      n = 1;
    }
    let changed = 0;
    for (let i = 0; i < n; i++) {
      this.fill(runs[2 * i]!, runs[2 * i + 1]!, toShared);
      changed += runs[2 * i + 1]!;
    }
    this.shared += toShared ? changed : -changed;
    for (const l of this.listeners) {
      for (let i = 0; i < n; i++) {
        const s = Math.max(runs[2 * i]!, l.first);
        const e = Math.min(runs[2 * i]! + runs[2 * i + 1]!, l.first + l.count);
        if (s < e) {
          if (toShared) l.populate(s, e - s);
          else l.discard(s, e - s);
        }
      }
    }
    return { from, changed, runs: n };
  }
}
