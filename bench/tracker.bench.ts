// The tracker against its yardstick, in one run: the same workloads (same generator, same
// seeds) through the TypeScript tracker's synchronous state change and through
// bench/tracker-yardstick.c, a plain C implementation of the same semantics built here with
// gcc -O2 (it is the yardstick, not part of the package). Each figure is the steady state:
// the time of the second million conversions (the first million's start-up and JIT warm-up
// drop out), the best of three rounds on each side. Both sides print a checksum of every result, which must match: the same work.
// Targets: at most 1.5× C on each workload; a one-page flip in a 1 TiB block within 10% of
// one in a 1 GiB block (same working set); whole-range conversions O(range / 32).

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { GranuleRange } from '../lib/common/byte-range';
import { RamBlockAttributes } from '../lib/tracker/ram-block-attributes';
import type { RamDiscardListener } from '../lib/tracker/ram-discard-listener';
import type { PageState } from '../lib/tracker/state-change-channel';

const PAGE = 4096;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const TiB = 2 ** 40;
const MILLION = Number(process.env.GUESTMEM_BENCH_MILLION ?? 1_000_000);
/** Each figure is the best of this many rounds, on both sides: the round least disturbed by other work. */
const ROUNDS = Number(process.env.GUESTMEM_BENCH_ROUNDS ?? 3);

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
 * xorshift32, as the C yardstick's next(), shifted down to 31 bits: V8 keeps a value of
 * 2^31 or more as a double, whose `%` is a call into C, which would charge the generator's
 * cost to the TypeScript side only. The state lives in a typed array, not a module-level
 * variable, whose int32 values past 2^30 V8 would box on every store.
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
 * The workloads, generated in the measuring loop itself (a switch, so the loop stays one
 * shape for V8, as the C side's is one loop calling one generator):
 * boot: 1..512-page flips (powers of two: mostly small) inside a 64 MiB bounce pool;
 * mixture: 1..512 pages anywhere in 256 MiB, either way;
 * top flip: one page in the top 256 MiB of a block, the same working set whatever its size.
 */
const enum Kind {
  Boot,
  Mixture,
  TopFlip,
}

/** The best round's ns per conversion, and the checksum (the same every round). */
async function measure(block: number, sharedAtBoot: number, kind: Kind, seed: number): Promise<{ ns: number; checksum: number }> {
  let best = { ns: Infinity, checksum: 0 };
  for (let round = 0; round < ROUNDS; round++) {
    const result = await measureRound(block, sharedAtBoot, kind, seed);
    if (result.ns < best.ns) best = result;
  }
  return best;
}

/** ns per conversion over the second million, and the checksum the C side prints too. */
async function measureRound(block: number, sharedAtBoot: number, kind: Kind, seed: number): Promise<{ ns: number; checksum: number }> {
  const attributes = new RamBlockAttributes(block);
  const listener = new CountingListener();
  await attributes.register(listener, { offset: 0, size: block });
  if (sharedAtBoot > 0) attributes.stateChangeSync(0, sharedAtBoot, 'shared');
  const blockPages = block / PAGE;
  rng[0] = seed;
  let checksum = 0;
  let middle = 0n;
  for (let i = 0; i < 2 * MILLION; i++) {
    if (i === MILLION) middle = process.hrtime.bigint();
    let offset: number;
    let size: number;
    let to: PageState;
    if (kind === Kind.Boot) {
      const pages = 1 << next() % 10;
      offset = (next() % (POOL_PAGES - pages + 1)) * PAGE;
      size = pages * PAGE;
      to = (next() & 1) === 1 ? 'shared' : 'private';
    } else if (kind === Kind.Mixture) {
      const pages = 1 + (next() % 512);
      offset = (next() % (WINDOW - pages)) * PAGE;
      size = pages * PAGE;
      to = (next() & 1) === 1 ? 'shared' : 'private';
    } else {
      offset = (blockPages - WINDOW + (next() % WINDOW)) * PAGE;
      size = PAGE;
      to = (i & 1) === 1 ? 'shared' : 'private';
    }
    const result = attributes.stateChangeSync(offset, size, to);
    checksum += result.changed + (result.from === 'private' ? 0 : result.from === 'shared' ? 1 : 2);
  }
  const ns = Number(process.hrtime.bigint() - middle) / MILLION;
  return { ns, checksum: checksum + listener.populated - listener.discarded };
}

/** Builds and runs the C yardstick: name → [ns, checksum]; null (with the reason) without gcc. */
function yardstick(): Map<string, [number, number]> | string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-yardstick-'));
  const binary = path.join(dir, 'tracker-yardstick');
  try {
    execFileSync('gcc', ['-O2', '-o', binary, path.join(__dirname, '..', '..', 'bench', 'tracker-yardstick.c')], { stdio: 'pipe' });
    const out = execFileSync(binary, [String(MILLION), String(ROUNDS)], { encoding: 'utf8' });
    return new Map(out.trim().split('\n').map((line) => {
      const [name, ns, checksum] = line.split(' ');
      return [name!, [Number(ns), Number(checksum)]];
    }));
  } catch (error) {
    return `the C yardstick did not build or run (${(error as Error).message.split('\n')[0]}): scripts/install-deps.sh installs gcc`;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  console.log(`guestmem tracker benchmark: ns per conversion at steady state (the second of 2 × ${MILLION} conversions, best of ${ROUNDS} rounds), one listener on the whole block`);
  const c = yardstick();
  const workloads: Array<[string, string, number, number, Kind, number]> = [
    ['boot', '16 GiB block, 64 MiB bounce pool shared at boot, 1..512-page flips', 16 * GiB, 64 * MiB, Kind.Boot, 1],
    ['mixture', '16 GiB block, random 1..512-page mixtures in 256 MiB', 16 * GiB, 0, Kind.Mixture, 2],
    ['flip-1GiB', '1 GiB block, one-page flips in its top 256 MiB', GiB, 0, Kind.TopFlip, 3],
    ['flip-1TiB', '1 TiB block, one-page flips in its top 256 MiB', TiB, 0, Kind.TopFlip, 3],
  ];
  console.log(`${'workload'.padEnd(70)} ${'TS ns'.padStart(8)} ${'C ns'.padStart(8)} ${'TS / C'.padStart(7)}`);
  const ts: Record<string, number> = {};
  let withinC = true;
  let sameWork = true;
  for (const [name, label, block, shared, workload, seed] of workloads) {
    const { ns, checksum } = await measure(block, shared, workload, seed);
    ts[name] = ns;
    const yard = typeof c === 'string' ? undefined : c.get(name);
    const ratio = yard ? ns / yard[0] : NaN;
    if (yard && yard[1] !== checksum) sameWork = false;
    if (yard && ratio > 1.5) withinC = false;
    console.log(`${label.padEnd(70)} ${ns.toFixed(1).padStart(8)} ${yard ? yard[0].toFixed(1).padStart(8) : 'n/a'.padStart(8)} ${yard ? ratio.toFixed(2).padStart(7) : ''}`);
  }
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
  if (typeof c === 'string') console.log(c);
  else console.log(`same work as C (checksums of every result): ${sameWork ? 'yes' : 'NO'}`);
  console.log(`target: at most 1.5× C on every workload: ${typeof c === 'string' ? 'not measured' : withinC ? 'PASS' : 'FAIL'}`);
  console.log(`target: one-page flip, 1 TiB vs 1 GiB block within 10%: ratio ${flat.toFixed(3)} ${Math.abs(flat - 1) <= 0.1 ? 'PASS' : 'FAIL'}`);
  console.log(`target: whole-range cost O(range/32): ${perPage[perPage.length - 1]!.toFixed(3)} ns/page at 2^20 pages (under 1 ns/page) ${linear ? 'PASS' : 'FAIL'}`);
  if (!sameWork || !withinC || Math.abs(flat - 1) > 0.1 || !linear) process.exitCode = 1;
}

void main();
