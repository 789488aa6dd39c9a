// The tracker against its yardsticks, in one run: the same conversions (same generator, same
// seeds, generated before the clock starts) through the library's synchronous state change,
// through bench/tracker-yardstick.c (a plain C implementation of the same semantics, built
// here with gcc -O2) and through bench/tracker-floor.ts (that C transliterated into plain
// TypeScript, none of the library's duties: what the language itself costs). Each figure
// is the steady state: the time of the second million conversions (start-up and JIT
// warm-up drop out), the best of ROUNDS rounds on each side. All three print a checksum of
// every result, which must match: the same work. The library's conversions take the block's
// lock (the shared core's, as every thread's conversion does); the C's take none in its
// first column and, in "C+lock", a lock making the same memory operations (like for like:
// a C VMM whose vCPU threads convert takes one too). The ablation after the table says
// what the lock, the result object and the fan-out cost.
// Targets: at most 1.5× C on the boot-like workload and random mixtures; a one-page flip in
// a 1 TiB block within 10% of one in a 1 GiB block (same working set); whole-range
// conversions O(range / 32).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { GranuleRange } from '../lib/common/byte-range';
import { BlockLock, LOCK_BYTES } from '../lib/memory/block-lock';
import { RamBlockAttributes, type StateChangeResult } from '../lib/tracker/ram-block-attributes';
import type { RamDiscardListener } from '../lib/tracker/ram-discard-listener';
import { FloorListener, FloorTracker } from './tracker-floor';

const PAGE = 4096;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const TiB = 2 ** 40;
const MILLION = Number(process.env.GUESTMEM_BENCH_MILLION ?? 1_000_000);
/**
 * Each figure is the best of this many rounds: the round least disturbed by other work. The
 * rounds of every workload and of all three sides (C, library, plain TypeScript) take turns,
 * so that a slow spell of the machine falls on all of them alike.
 */
const ROUNDS = Number(process.env.GUESTMEM_BENCH_ROUNDS ?? 5);

/** A listener that costs almost nothing, so the numbers are the tracker's (the C one counts too). */
class CountingListener implements RamDiscardListener {
  readonly name = 'counting';
  readonly synchronous = true;
  populated = 0;
  discarded = 0;
  populate(range: GranuleRange): void {
    this.populated += range.count;
  }
  discard(range: GranuleRange): void {
    this.discarded += range.count;
  }
}

/**
 * xorshift32, as the C yardstick's next(), shifted down to 31 bits as it is there, so that
 * both sides generate the same conversions (the checksums compare them). It runs before the
 * clock starts, so its own cost (a JavaScript `%` costs more than C's) is never measured.
 */
const rng = new Int32Array(1);
function next(): number {
  let s = rng[0]!;
  s ^= s << 13;
  s ^= s >>> 17;
  s ^= s << 5;
  rng[0] = s;
  return s >>> 1;
}

const POOL_PAGES = (64 * MiB) / PAGE;
const WINDOW = (256 * MiB) / PAGE;

/**
 * The workloads:
 * boot: 1..512-page flips (powers of two: mostly small) inside a 64 MiB bounce pool;
 * mixture: 1..512 pages anywhere in 256 MiB, either way;
 * top flip: one page in the top 256 MiB of a block, the same working set whatever its size.
 */
const enum Kind {
  Boot,
  Mixture,
  TopFlip,
}

/**
 * The conversions of one round, generated before the clock starts (the C yardstick does
 * the same): what is timed is the tracker, not the generator, whose JavaScript `%` and
 * typed-array state cost more than C's and would be charged to the TypeScript side.
 */
interface Operations {
  firstPage: Uint32Array;
  pages: Uint32Array;
  toShared: Uint8Array;
}

function generate(blockPages: number, kind: Kind, seed: number): Operations {
  const n = 2 * MILLION;
  const ops: Operations = { firstPage: new Uint32Array(n), pages: new Uint32Array(n), toShared: new Uint8Array(n) };
  rng[0] = seed;
  for (let i = 0; i < n; i++) {
    if (kind === Kind.Boot) {
      const pages = 1 << next() % 10;
      ops.pages[i] = pages;
      ops.firstPage[i] = next() % (POOL_PAGES - pages + 1);
      ops.toShared[i] = next() & 1;
    } else if (kind === Kind.Mixture) {
      const pages = 1 + (next() % 512);
      ops.pages[i] = pages;
      ops.firstPage[i] = next() % (WINDOW - pages);
      ops.toShared[i] = next() & 1;
    } else {
      ops.pages[i] = 1;
      ops.firstPage[i] = blockPages - WINDOW + (next() % WINDOW);
      ops.toShared[i] = i & 1;
    }
  }
  return ops;
}

interface Workload {
  name: string;
  label: string;
  block: number;
  sharedAtBoot: number;
  ops: Operations;
}

/** A fresh tracker with its listener, through the library's public calls, ready for a round. */
async function libraryTracker(w: Workload): Promise<{ attributes: RamBlockAttributes; listener: CountingListener }> {
  const attributes = new RamBlockAttributes(w.block);
  const listener = new CountingListener();
  await attributes.register(listener, { offset: 0, size: w.block });
  if (w.sharedAtBoot > 0) attributes.stateChangeSync(0, w.sharedAtBoot, 'shared');
  return { attributes, listener };
}

/**
 * What a round of the library leaves out, for the ablation: nothing (the measured path), the
 * block's lock, or the reused result (a fresh plain object per conversion instead).
 */
const enum Without {
  Nothing,
  Lock,
  ReusedResult,
}

/**
 * ns per conversion over the second million through the library, and the checksum the C side
 * prints too. Each conversion takes the block's lock as every thread's conversion does
 * (BlockConversion.convertSync: acquire, record the intent, release), and reads its result
 * from one object it reuses.
 */
function libraryRound(attributes: RamBlockAttributes, listener: CountingListener, ops: Operations, without = Without.Nothing): { ns: number; checksum: number } {
  const lock = new BlockLock(new SharedArrayBuffer(LOCK_BYTES), 0, 'bench');
  const reused: StateChangeResult = { from: 'private', to: 'private', changed: 0, changedRuns: 0 };
  const into = without === Without.ReusedResult ? undefined : reused;
  const locked = without !== Without.Lock;
  let checksum = 0;
  let middle = 0n;
  for (let i = 0; i < 2 * MILLION; i++) {
    if (i === MILLION) middle = process.hrtime.bigint();
    const toShared = ops.toShared[i] === 1;
    let result: StateChangeResult;
    if (locked) lock.acquireForConversion();
    try {
      if (locked) lock.intendConversion(ops.firstPage[i]!, ops.pages[i]!, toShared);
      result = attributes.stateChangeSync(ops.firstPage[i]! * PAGE, ops.pages[i]! * PAGE, toShared ? 'shared' : 'private', into);
    } finally {
      if (locked) lock.release();
    }
    checksum += result.changed + (result.from === 'private' ? 0 : result.from === 'shared' ? 1 : 2);
  }
  const ns = Number(process.hrtime.bigint() - middle) / MILLION;
  return { ns, checksum: checksum + listener.populated - listener.discarded };
}

/** The same through the plain TypeScript transliteration of the C (bench/tracker-floor.ts). */
function floorRound(w: Workload): { ns: number; checksum: number } {
  const tracker = new FloorTracker(w.block, PAGE);
  const listener = new FloorListener(0, w.block / PAGE);
  tracker.addListener(listener);
  if (w.sharedAtBoot > 0) tracker.stateChange(0, w.sharedAtBoot, true);
  const { ops } = w;
  let checksum = 0;
  let middle = 0n;
  for (let i = 0; i < 2 * MILLION; i++) {
    if (i === MILLION) middle = process.hrtime.bigint();
    const result = tracker.stateChange(ops.firstPage[i]! * PAGE, ops.pages[i]! * PAGE, ops.toShared[i] === 1);
    checksum += result.changed + result.from;
  }
  const ns = Number(process.hrtime.bigint() - middle) / MILLION;
  return { ns, checksum: checksum + listener.populated - listener.discarded };
}

/**
 * The C yardstick, built once: `round()` runs one round of every workload in it and keeps,
 * per workload, the best [ns, checksum] so far. Its rounds take turns with the TypeScript
 * ones (main), so that a slow spell of the machine falls on both sides alike. Without gcc,
 * `failure` says why and nothing is measured.
 */
class Yardstick {
  readonly best = new Map<string, [number, number]>();
  failure: string | null = null;
  private readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-yardstick-'));
  private readonly binary = path.join(this.dir, 'tracker-yardstick');

  constructor() {
    try {
      execFileSync('gcc', ['-O2', '-o', this.binary, path.join(__dirname, '..', '..', 'bench', 'tracker-yardstick.c')], { stdio: 'pipe' });
    } catch (error) {
      this.fail(error);
    }
  }

  round(): void {
    if (this.failure !== null) return;
    try {
      const out = execFileSync(this.binary, [String(MILLION), '1'], { encoding: 'utf8' });
      for (const line of out.trim().split('\n')) {
        const [name, ns, checksum] = line.split(' ');
        const known = this.best.get(name!);
        if (!known || Number(ns) < known[0]) this.best.set(name!, [Number(ns), Number(checksum)]);
      }
    } catch (error) {
      this.fail(error);
    }
  }

  dispose(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private fail(error: unknown): void {
    this.failure = `the C yardstick did not build or run (${(error as Error).message.split('\n')[0]}): scripts/install-deps.sh installs gcc`;
  }
}

async function main(): Promise<void> {
  console.log(`guestmem tracker benchmark: ns per conversion at steady state (the second of 2 × ${MILLION} conversions, generated beforehand, best of ${ROUNDS} rounds), one listener on the whole block`);
  const yardstick = new Yardstick();
  const specs: Array<[string, string, number, number, Kind, number]> = [
    ['boot', '16 GiB block, 64 MiB bounce pool shared at boot, 1..512-page flips', 16 * GiB, 64 * MiB, Kind.Boot, 1],
    ['mixture', '16 GiB block, random 1..512-page mixtures in 256 MiB', 16 * GiB, 0, Kind.Mixture, 2],
    ['flip-1GiB', '1 GiB block, one-page flips in its top 256 MiB', GiB, 0, Kind.TopFlip, 3],
    ['flip-1TiB', '1 TiB block, one-page flips in its top 256 MiB', TiB, 0, Kind.TopFlip, 3],
  ];
  console.log(`${'workload'.padEnd(70)} ${'TS ns'.padStart(8)} ${'C ns'.padStart(8)} ${'TS / C'.padStart(7)} ${'plain TS'.padStart(9)} ${'/ C'.padStart(6)} ${'C+lock'.padStart(8)} ${'TS / C+lock'.padStart(12)}`);
  const ts: Record<string, number> = {};
  let withinC = true;
  let sameWork = true;
  const workloads = specs.map(([name, label, block, sharedAtBoot, kind, seed]) => ({
    w: { name, label, block, sharedAtBoot, ops: generate(block / PAGE, kind, seed) } as Workload,
    kind,
    library: { ns: Infinity, checksum: 0 },
    floor: { ns: Infinity, checksum: 0 },
  }));
  // The ablation, on the boot-like workload: the measured path less one of its duties
  // (the lock; the reused result; the fan-out, with no listener registered), best of ROUNDS.
  const ablation: Array<[string, number]> = [['without the lock', Infinity], ['with a fresh result object per conversion', Infinity], ['without the fan-out (no listener)', Infinity]];
  for (let round = 0; round < ROUNDS; round++) {
    yardstick.round();
    for (const entry of workloads) {
      const { attributes, listener } = await libraryTracker(entry.w);
      const library = libraryRound(attributes, listener, entry.w.ops);
      if (library.ns < entry.library.ns) entry.library = library;
      const floor = floorRound(entry.w);
      if (floor.ns < entry.floor.ns) entry.floor = floor;
    }
    const boot = workloads[0]!.w;
    for (const [index, without] of [Without.Lock, Without.ReusedResult].entries()) {
      const { attributes, listener } = await libraryTracker(boot);
      ablation[index]![1] = Math.min(ablation[index]![1], libraryRound(attributes, listener, boot.ops, without).ns);
    }
    const alone = new RamBlockAttributes(boot.block);
    alone.stateChangeSync(0, boot.sharedAtBoot, 'shared');
    ablation[2]![1] = Math.min(ablation[2]![1], libraryRound(alone, new CountingListener(), boot.ops).ns);
  }
  for (const { w, kind, library, floor } of workloads) {
    const { ns, checksum } = library;
    ts[w.name] = ns;
    const yard = yardstick.best.get(w.name);
    const ratio = yard ? ns / yard[0] : NaN;
    if ((yard && yard[1] !== checksum) || floor.checksum !== checksum) sameWork = false;
    // The 1.5× target is the issue's, on the boot-like workload and random mixtures.
    if (yard && ratio > 1.5 && kind !== Kind.TopFlip) withinC = false;
    // Like for like: the C conversion under a lock making the same memory operations as ours.
    const locked = yardstick.best.get(`${w.name}+lock`);
    if (locked && locked[1] !== checksum) sameWork = false;
    const lockedCells = locked ? [locked[0].toFixed(1).padStart(8), (ns / locked[0]).toFixed(2).padStart(12)] : [];
    const cells = yard ? [yard[0].toFixed(1).padStart(8), ratio.toFixed(2).padStart(7), floor.ns.toFixed(1).padStart(9), (floor.ns / yard[0]).toFixed(2).padStart(6), ...lockedCells] : ['n/a'.padStart(8), ''.padStart(7), floor.ns.toFixed(1).padStart(9), ''];
    console.log(`${w.label.padEnd(70)} ${ns.toFixed(1).padStart(8)} ${cells.join(' ')}`);
  }
  console.log(`ablation on the boot-like workload (${ts['boot']!.toFixed(1)} ns with everything):`);
  for (const [what, ns] of ablation) console.log(`  ${what.padEnd(68)} ${ns.toFixed(1).padStart(8)} ns (${(ts['boot']! - ns).toFixed(1)} ns saved)`);
  const flat = ts['flip-1TiB']! / ts['flip-1GiB']!;
  console.log('whole-range conversions in a 16 GiB block (private -> shared -> private):');
  const attributes = new RamBlockAttributes(16 * GiB);
  await attributes.register(new CountingListener(), { offset: 0, size: 16 * GiB });
  const perPage: number[] = [];
  for (const pages of [1, 32, 1024, 32768, 1048576]) {
    const iterations = Math.max(20, Math.min(200_000, Math.floor(4e7 / pages)));
    for (let i = 0; i < iterations; i++) attributes.stateChangeSync(0, pages * PAGE, i % 2 === 0 ? 'shared' : 'private');
    const started = process.hrtime.bigint();
    for (let i = 0; i < iterations; i++) attributes.stateChangeSync(0, pages * PAGE, i % 2 === 0 ? 'shared' : 'private');
    const ns = Number(process.hrtime.bigint() - started) / iterations;
    perPage.push(ns / pages);
    console.log(`  ${String(pages).padEnd(68)} ${ns.toFixed(1).padStart(8)} ns (${(ns / pages).toFixed(3)} ns/page)`);
  }
  const linear = perPage[perPage.length - 1]! < perPage[2]! && perPage[perPage.length - 1]! < 1;
  yardstick.dispose();
  const c = yardstick.failure;
  if (c !== null) console.log(c);
  else console.log(`same work in all three (checksums of every result): ${sameWork ? 'yes' : 'NO'}`);
  console.log(`target: at most 1.5× C on the boot-like workload and random mixtures: ${c !== null ? 'not measured' : withinC ? 'PASS' : 'FAIL'}`);
  console.log(`target: one-page flip, 1 TiB vs 1 GiB block within 10%: ratio ${flat.toFixed(3)} ${Math.abs(flat - 1) <= 0.1 ? 'PASS' : 'FAIL'}`);
  console.log(`target: whole-range cost O(range/32): ${perPage[perPage.length - 1]!.toFixed(3)} ns/page at 2^20 pages (under 1 ns/page) ${linear ? 'PASS' : 'FAIL'}`);
  if (!sameWork || !withinC || Math.abs(flat - 1) > 0.1 || !linear) process.exitCode = 1;
}

void main();
