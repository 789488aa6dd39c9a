// `npm run soak`: random conversions on a real kernel with failures injected at random and
// the device's reach sampled by DMA, checking after every step that KVM (as the blocks set
// it), the trackers and the DMA listeners agree, and that the trackers follow a model of
// what each conversion promised; after a conversion that failed and agreed, its report
// (`applied`) is checked page by page against KVM, the tracker, the listener and the
// device's reach. GUESTMEM_SOAK_STEPS steps (default 1000), half through
// iommufd and half through type1, from the seed GUESTMEM_SEED; a DMA probe pair every
// GUESTMEM_SOAK_PROBE_EVERY steps (default 20); GUESTMEM_SEEDS=13,777 soaks several seeds
// in one boot, one after the other. Prints steps, faults, probes and
// disagreements; exits 1 on any disagreement. Started by scripts/soak.js, which boots the
// harness VM where this host lacks what it needs and turns fault injection on.

import { AssignedDevice } from '../lib/vfio/assigned-device';
import type { DmaBackend } from '../lib/vfio/dma-mapper';
import { DmaProbe } from '../lib/vmm/dma-probe';
import { findEduDevice } from '../lib/vfio/edu-device';
import { faultCounts, injectFaults } from '../lib/common/fault-injection';
import { GuestMemory } from '../lib/memory/guest-memory';
import { Kvm } from '../lib/kvm/kvm';
import { PageBitmap, type Run } from '../lib/tracker/page-bitmap';
import type { RamBlock } from '../lib/memory/ram-block';
import type { PageState } from '../lib/tracker/state-change-channel';
import { VfioDmaListener } from '../lib/vfio/vfio-dma-listener';
import { prng } from '../test/support/prng';

const PAGE = 4096;
const MiB = 1 << 20;

function count(name: string, fallback: number): number {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) {
    console.error(`soak: ${name} must be a whole number, got '${text}'`);
    process.exit(2);
  }
  return value;
}

interface Totals {
  steps: number;
  armed: number;
  ok: number;
  failed: number;
  rollbackFailed: number;
  repaired: number;
  probes: number;
  disagreements: string[];
}

interface Party {
  block: RamBlock;
  listener: VfioDmaListener;
  /** What each conversion promised: 1 = shared. */
  model: PageBitmap;
}

function sameRuns(a: Run[], b: Run[]): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function faultSites(backend: DmaBackend): string[] {
  return [
    'ioctl:KVM_SET_MEMORY_ATTRIBUTES',
    'fallocate',
    backend === 'type1' ? 'ioctl:VFIO_IOMMU_MAP_DMA' : 'ioctl:IOMMU_IOAS_MAP',
    backend === 'type1' ? 'ioctl:VFIO_IOMMU_UNMAP_DMA' : 'ioctl:IOMMU_IOAS_UNMAP',
  ];
}

async function soak(backend: DmaBackend, steps: number, random: (n: number) => number, probeEvery: number, totals: Totals): Promise<void> {
  const kvm = Kvm.open();
  const memory = new GuestMemory(kvm.createVm('sw-protected'));
  const assigned = AssignedDevice.open(findEduDevice()!.bdf, { backend });
  const probe = new DmaProbe(assigned);
  const baseline = assigned.dma.mappingsAvailable();
  const parties: Party[] = [];
  for (const spec of [{ gpa: 16 * MiB, size: 2 * MiB }, { gpa: 32 * MiB, size: MiB }]) {
    const block = memory.addBlock(spec);
    const listener = new VfioDmaListener(assigned.dma, { sharedAddress: block.shared.address, gpa: BigInt(block.gpa) });
    await block.register(listener);
    parties.push({ block, listener, model: new PageBitmap(block.size / PAGE) });
  }
  const sites = faultSites(backend);
  /**
   * A failed, agreed conversion's report against what every party shows over the pages it
   * set out to convert (`pending`): those in `applied` are in the target state in KVM (as
   * the block set it), the tracker and the listener, and the device reaches one of them iff
   * the target is shared; every other pending page is in the state it started in, everywhere.
   */
  const checkReport = async ({ block, listener }: Party, step: number, applied: Run[], pending: Run[], to: PageState) => {
    const stayed = new PageBitmap(block.size / PAGE);
    for (const [f, c] of applied) stayed.setRange(f, c);
    const views: Array<[string, Run[]]> = [
      ['KVM', block.kvmRuns('shared')],
      ['the tracker', block.attributes.runs('shared')],
      ['the listener', listener.heldRuns(0, block.size / PAGE)],
    ];
    for (const [who, runs] of views) {
      const shared = new PageBitmap(block.size / PAGE);
      for (const [a, n] of runs) shared.setRange(a, n);
      for (const [f, c] of pending) {
        for (let page = f; page < f + c; page++) {
          const converted = shared.isAllSet(page, 1) === (to === 'shared');
          if (converted !== stayed.isAllSet(page, 1)) {
            disagree(step, `${block.name}: page ${page} is ${converted ? '' : 'not '}${to} in ${who}, but the report's applied ${JSON.stringify(applied)} says ${converted ? 'not' : 'so'}`);
            return;
          }
        }
      }
    }
    const sample = async (runs: Run[], converted: boolean) => {
      if (runs.length === 0) return;
      const [f, c] = runs[random(runs.length)]!;
      const page = f + random(c);
      totals.probes++;
      const reached = await probe.canRead(block, page * PAGE, 1 + (step % 250));
      if (reached !== (converted === (to === 'shared'))) disagree(step, `the device ${reached ? 'reached' : 'did not reach'} page ${page} of ${block.name}, which the report calls ${converted ? to : 'unchanged'}`);
    };
    // The device's reach: always where the report names runs that stayed (the rare case
    // that matters), and at every fifth failure of the others (a probe costs a DMA round
    // trip, about as much as ten conversions under emulation).
    if (applied.length === 0 && ++failures % 5 !== 0) return;
    await sample(applied, true);
    await sample(pending.flatMap(([f, c]) => stayed.runs(f, c, false)), false);
  };
  let failures = 0;
  const disagree = (step: number, what: string) => {
    totals.disagreements.push(`${backend} step ${step}: ${what}`);
    console.log(`DISAGREEMENT ${backend} step ${step}: ${what}`);
  };
  try {
    for (let step = 0; step < steps; step++) {
      const party = parties[random(parties.length)]!;
      const { block, model } = party;
      const pages = block.size / PAGE;
      const whole = random(20) === 0;
      const first = whole ? 0 : random(pages);
      const length = whole ? pages : 1 + random(Math.min(64, pages - first));
      const to: PageState = random(2) === 0 ? 'shared' : 'private';
      let rules = '';
      if (random(3) === 0) {
        const n = 1 + random(2);
        rules = Array.from({ length: n }, () => `${sites[random(sites.length)]}:${1 + random(4)}${random(4) === 0 ? '+' : ''}:EIO`).join(',');
        totals.armed++;
      }
      const pending = block.attributes.runs(to === 'shared' ? 'private' : 'shared', { offset: first * PAGE, size: length * PAGE });
      injectFaults(rules);
      let outcome: 'ok' | 'failed' | 'rollback';
      try {
        await block.convert(block.gpa + first * PAGE, length * PAGE, to);
        outcome = 'ok';
        model.fillRange(first, length, to === 'shared');
      } catch (error) {
        const e = error as Error & { code?: string; applied?: Run[] };
        if (e.code === 'ERR_GUESTMEM_CONVERSION_FAILED') {
          outcome = 'failed';
          for (const [f, c] of e.applied ?? []) model.fillRange(f, c, to === 'shared');
          injectFaults('');
          await checkReport(party, step, e.applied ?? [], pending, to);
        } else if (e.code === 'ERR_GUESTMEM_ROLLBACK_FAILED') {
          outcome = 'rollback';
        } else {
          disagree(step, `unexpected error ${e.code}: ${e.message}`);
          outcome = 'failed';
        }
      }
      injectFaults('');
      totals.steps++;
      if (outcome === 'ok') totals.ok++;
      else if (outcome === 'failed') totals.failed++;
      else {
        totals.rollbackFailed++;
        await block.repair();
        totals.repaired++;
        // A named disagreement ends as the bitmap says: the model follows it.
        for (const [f, c] of block.attributes.runs('shared')) model.setRange(f, c);
        for (const [f, c] of block.attributes.runs('private')) model.clearRange(f, c);
      }
      for (const p of parties) {
        const left = p.block.disagreements();
        if (left.length > 0) disagree(step, `${p.block.name}: ${JSON.stringify(left)}`);
        const shared = p.block.attributes.runs('shared');
        if (!sameRuns(shared, p.model.runs(0, p.model.bits, true))) disagree(step, `${p.block.name}: tracker differs from the model`);
        if (!sameRuns(p.listener.heldRuns(0, p.model.bits), shared)) disagree(step, `${p.block.name}: listener mappings differ from the tracker`);
      }
      if (baseline !== null) {
        const held = parties.reduce((sum, p) => sum + p.listener.mappings, 0);
        if (assigned.dma.mappingsAvailable() !== baseline - held) disagree(step, `type1 holds ${baseline - assigned.dma.mappingsAvailable()!} mappings, listeners ${held}`);
      }
      if (probeEvery > 0 && step % probeEvery === 0) {
        for (const state of ['private', 'shared'] as const) {
          const runs = block.attributes.runs(state);
          if (runs.length === 0) continue;
          const [f, c] = runs[random(runs.length)]!;
          const page = f + random(c);
          totals.probes++;
          const reached = await probe.canRead(block, page * PAGE, 1 + (step % 250));
          if (reached !== (state === 'shared')) disagree(step, `the device ${reached ? 'reached' : 'did not reach'} ${state} page ${page} of ${block.name}`);
        }
      }
      if ((step + 1) % 1000 === 0) {
        console.log(`soak ${backend}: ${step + 1}/${steps} steps, ${totals.disagreements.length} disagreements so far`);
      }
    }
  } finally {
    injectFaults('');
    await memory.shutdown();
    probe.close();
    assigned.close();
    kvm.close();
  }
}

/** GUESTMEM_SEEDS (comma-separated, each a soak of its own in this one boot), else GUESTMEM_SEED. */
function seeds(): number[] {
  const list = process.env.GUESTMEM_SEEDS;
  if (list === undefined || list === '') return [count('GUESTMEM_SEED', 0x5eed)];
  return list.split(',').map((text) => {
    const value = Number(text.trim());
    if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(value)) {
      console.error(`soak: GUESTMEM_SEEDS must be whole numbers separated by commas, got '${list}'`);
      process.exit(2);
    }
    return value;
  });
}

async function main(): Promise<number> {
  if (!findEduDevice()) {
    console.error('soak: no edu device bound to vfio-pci here; run it through scripts/soak.js (npm run soak)');
    return 2;
  }
  let disagreements = 0;
  for (const seed of seeds()) disagreements += await soakSeed(seed);
  return disagreements === 0 ? 0 : 1;
}

/** One seed's soak; returns its number of disagreements. */
async function soakSeed(seed: number): Promise<number> {
  const steps = count('GUESTMEM_SOAK_STEPS', 1000);
  const probeEvery = count('GUESTMEM_SOAK_PROBE_EVERY', 20);
  const random = prng(seed);
  const totals: Totals = { steps: 0, armed: 0, ok: 0, failed: 0, rollbackFailed: 0, repaired: 0, probes: 0, disagreements: [] };
  const started = Date.now();
  const firedBefore = faultCounts().fired;
  const half = Math.ceil(steps / 2);
  await soak('iommufd', half, random, probeEvery, totals);
  await soak('type1', steps - half, random, probeEvery, totals);
  const fired = faultCounts().fired - firedBefore;
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  console.log(
    `soak: seed ${seed}, ${totals.steps} steps (iommufd ${half}, type1 ${steps - half}) in ${seconds} s; ` +
      `faults armed in ${totals.armed} steps, ${fired} fired; ${totals.ok} conversions succeeded, ${totals.failed} failed and agreed, ` +
      `${totals.rollbackFailed} named disagreements, ${totals.repaired} repaired; ${totals.probes} DMA probes; ` +
      `${totals.disagreements.length} disagreements`,
  );
  return totals.disagreements.length;
}

main().then(
  (status) => process.exit(status),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
