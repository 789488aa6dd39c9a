// `guestmem bench`: conversions of 1, 16 and 512 pages on a real kernel, through KVM, the
// tracker and (where a vfio-pci edu device exists) a VFIO DMA listener: time per step, and
// how many times each conversion crossed into C++ (bounded, whatever the page count); then
// one page at the far end of an 8 GiB block against one at the far end of a 1 GiB block.
// Where the VM has KVM_CAP_PRE_FAULT_MEMORY, every size is measured twice: without and
// with the optional pre-fault after each conversion (on a vCPU of the VM, never run).

import { findEduDevice } from '../vfio/edu-device';
import os from 'node:os';
import { benchGuestLoop } from './guest-bench';
import { benchBareExits, type ExitBench } from './exit-bench';
import { capabilityFeature, probe } from '../host/probe';
import { nativeCalls } from '../common/native';
import { ConversionStats, type ConversionStep } from '../memory/conversion-stats';
import type { PageState } from '../tracker/page-state';
import { benchFarEnd, type FarEndResult } from './far-end-bench';
import { VmHost } from './hosts';
import { parseCommand, type CommandSpec } from './command-spec';
import { parseCount, parseCountList } from './counts';
import { printJson } from './output';
import { formatBytes } from './sizes';
import { runInVm } from './vm-command';
import { harnessReason, noVmRefusal, parseVmTypeOption, VM_TYPE_OPTION } from './vm-type-option';

const PAGE = 4096;
const STEPS: ConversionStep[] = ['kvmAttributes', 'listeners', 'discard', 'prefault'];

export interface BenchRow {
  /** Whether each conversion ended with KVM_PRE_FAULT_MEMORY over its range. */
  prefault: boolean;
  pages: number;
  to: PageState;
  conversions: number;
  meanNs: number;
  stepNs: Record<ConversionStep, number>;
  /** Mean time outside the timed steps (KVM attributes, listeners, discard, pre-fault): checks, queue, bookkeeping. */
  outsideNs: number;
  /** Crossings into C++ per conversion: the most seen. */
  nativeCalls: number;
  /** Pre-faults that failed (and were ignored). */
  failedPrefaults: number;
}

const BENCH_OPTIONS = {
  json: { type: 'boolean', help: 'print the rows as one JSON object' },
  iterations: { type: 'string', value: 'N', help: 'conversions timed per size and direction (default 20)' },
  pages: { type: 'string', value: 'LIST', help: 'the conversion sizes in pages, comma-separated (default 1,16,512)' },
  'guest-iterations': { type: 'string', value: 'N', help: 'rounds of the guest-driven loop against the C yardstick (default 1000; 0 skips it)' },
  'no-vfio': { type: 'boolean', help: 'leave the edu device\'s VFIO listener out' },
  'no-far-end': { type: 'boolean', help: 'skip the 8 GiB far-end comparison (it makes KVM mark 9 GiB private)' },
  'no-prefault': { type: 'boolean', help: 'skip the runs with KVM_PRE_FAULT_MEMORY' },
  exits: { type: 'string', value: 'N', help: 'bare exits timed per round, C against guestmem\'s vCPU threads and event loop (default 20000; 0 skips)' },
  'exits-only': { type: 'boolean', help: 'time only the bare exits: on this host where its KVM runs default-type VMs, no harness needed' },
  'no-vm': { type: 'boolean', help: 'fail on a host without SW-protected VMs, instead of running in the harness VM' },
  ...VM_TYPE_OPTION,
} as const;

export const BENCH: CommandSpec<typeof BENCH_OPTIONS> = {
  name: 'bench',
  summary: 'time conversions of 1, 16 and 512 pages on a real kernel, step by step',
  options: BENCH_OPTIONS,
  description: `Times conversions on a real kernel, split by step (KVM attributes, listeners, discard,
pre-fault), with the number of native calls per conversion; where KVM has
KVM_CAP_PRE_FAULT_MEMORY, once without and once with the optional pre-fault. Then one
page at the far end of an 8 GiB block against one at the far end of a 1 GiB block (same
VM, alternating), which should cost the same, and the guest-driven VMM loop (exits handled
on the event loop and on the vCPU's own thread) against the C
yardstick. Runs inside the harness VM when this host lacks SW-protected VMs.`,
  examples: ['guestmem bench', 'guestmem bench --json --iterations 100 --pages 1,512'],
};

export async function benchCommand(args: string[]): Promise<number> {
  const { values } = parseCommand(BENCH, args);
  const iterations = parseCount(values.iterations, 20, '--iterations', 1, 1_000_000);
  const sizes = parseCountList(values.pages, [1, 16, 512], '--pages', 'page counts', 1, 4096);
  const guestIterations = parseCount(values['guest-iterations'], 1000, '--guest-iterations', 0, 1_000_000_000);
  const exits = parseCount(values.exits, 20000, '--exits', 0, 1_000_000_000);
  if (values['exits-only']) return exitsOnly(exits, args, values.json === true, values['no-vm'] === true);
  const vmType = parseVmTypeOption(values['vm-type']);
  const missing = harnessReason(vmType, ['memory-attributes']);
  if (missing && values['no-vm']) throw noVmRefusal(missing, ['bench', ...args]);
  if (missing) {
    console.error(`guestmem bench: not possible on this host (${missing}); running it inside the harness VM (guestmem vm)`);
    return runInVm(['bench', ...args]);
  }

  const edu = values['no-vfio'] ? undefined : findEduDevice();
  const rows: BenchRow[] = [];
  let backend: string | null = null;
  let prefaultAvailable = false;
  let farEnd: FarEndResult | null = null;
  for (const prefault of [false, true]) {
    if (prefault && (values['no-prefault'] || !prefaultAvailable)) break;
    const host = new VmHost({ gpa: 16 * 1024 * 1024, vfio: edu?.bdf, prefault, vmType, commandLine: ['bench', ...args] });
    try {
      prefaultAvailable = host.memory.vm.supportsPreFault;
      backend = host.assigned?.backend ?? null;
      rows.push(...(await measure(host, sizes, iterations, prefault)));
      if (!prefault && !values['no-far-end']) farEnd = await benchFarEnd(host, iterations);
    } finally {
      await host.shutdown();
    }
  }
  const guestLoop = guestIterations > 0 ? await benchGuestLoop(guestIterations, edu?.bdf, vmType) : null;
  const bareExits = exits > 0 ? await benchBareExits(exits) : null;
  const prefaultNote = values['no-prefault'] ? 'not measured (--no-prefault)' : prefaultAvailable ? 'measured without and with' : 'not available (KVM_CAP_PRE_FAULT_MEMORY is 0)';
  if (values.json) printJson({ backend, iterations, prefault: prefaultAvailable && !values['no-prefault'], rows, farEnd, guestLoop, bareExits });
  else {
    console.log(`guestmem bench: ${iterations} conversions each way per size; VFIO listener: ${backend ? `${edu!.bdf} via ${backend}` : 'none'}; KVM_PRE_FAULT_MEMORY: ${prefaultNote}`);
    console.log('prefault  pages  to       mean µs   KVM attrs µs  listeners µs  discard µs   prefault µs  outside µs (%)  native calls');
    const us = (ns: number) => (ns / 1000).toFixed(1).padStart(12);
    for (const row of rows) {
      const share = `${us(row.outsideNs)} (${((100 * row.outsideNs) / row.meanNs).toFixed(0).padStart(2)}%)`;
      console.log(`${(row.prefault ? 'yes' : 'no').padEnd(8)}  ${String(row.pages).padStart(5)}  ${row.to.padEnd(7)} ${us(row.meanNs)} ${us(row.stepNs.kvmAttributes)}  ${us(row.stepNs.listeners)} ${us(row.stepNs.discard)}  ${us(row.stepNs.prefault)}  ${share}  ${String(row.nativeCalls).padStart(12)}`);
    }
    console.log('outside = mean minus the timed steps: the conversion path\'s own JavaScript (checks, queue, bookkeeping) outside the kernel steps; the listeners step also holds the tracker\'s own work');
    const failed = rows.reduce((sum, r) => sum + r.failedPrefaults, 0);
    if (failed > 0) console.log(`${failed} pre-faults failed (ignored, as QEMU ignores them)`);
    if (farEnd) {
      console.log(`one page at the far end of a block, end to end (${farEnd.rows[0]!.conversions} conversions each, alternating):`);
      for (const row of farEnd.rows) {
        console.log(`  ${formatBytes(row.blockSize).padStart(6)} block at 0x${row.gpa.toString(16)}, page 0x${row.offset.toString(16)}: median ${(row.medianNs / 1000).toFixed(1)} µs, mean ${(row.meanNs / 1000).toFixed(1)} µs`);
      }
      console.log(`  8 GiB / 1 GiB (medians): ${farEnd.ratio.toFixed(3)}${Math.abs(farEnd.ratio - 1) <= 0.1 ? ' (within 10%)' : ' (NOT within 10%)'}`);
    }
    if (guestLoop) {
      const us = (ns: number | null) => (ns === null ? 'n/a' : `${(ns / 1000).toFixed(1)} µs`);
      console.log(`\nguest-driven round trip (the loop guest: hypercall exit → tracker → KVM → listeners → punch-hole → resume), ${guestLoop.iterations} × (private, shared), medians of ${guestLoop.rounds} rounds taking turns:`);
      console.log(`  guestmem, event loop, no listener     ${us(guestLoop.guestmemNs)} per conversion`);
      if (guestLoop.guestmemVfioNs !== null) console.log(`  guestmem, event loop, VFIO listener   ${us(guestLoop.guestmemVfioNs)} per conversion`);
      console.log(`  guestmem, vCPU thread, no listener    ${us(guestLoop.threadNs)} per conversion`);
      if (guestLoop.threadVfioNs !== null) console.log(`  guestmem, vCPU thread, VFIO listener  ${us(guestLoop.threadVfioNs)} per conversion`);
      console.log(`  C VMM loop (yardstick)                ${us(guestLoop.cNs)} per conversion${guestLoop.note ? ` (${guestLoop.note})` : ''}`);
      if (guestLoop.ratio !== null) console.log(`  ratio guestmem / C, event loop        ${guestLoop.ratio.toFixed(2)}`);
      if (guestLoop.threadRatio !== null) console.log(`  ratio guestmem / C, vCPU thread       ${guestLoop.threadRatio.toFixed(2)} (rounds ${guestLoop.threadRatioRange![0].toFixed(2)}–${guestLoop.threadRatioRange![1].toFixed(2)}; target ≤ 1.5)`);
      console.log(`  of which a bare exit and re-entry (vCPU thread → event loop → vCPU thread): guestmem ${us(guestLoop.exitNs)}, C ${us(guestLoop.cExitNs)}`);
    }
    if (bareExits) printBareExits(bareExits);
  }
  return 0;
}

/** `--exits-only`: the bare-exit comparison alone, here where KVM runs default-type VMs. */
async function exitsOnly(exits: number, args: string[], json: boolean, noVm: boolean): Promise<number> {
  const kvm = capabilityFeature(probe(), 'kvm');
  if (!kvm.ok && process.env.GUESTMEM_IN_VM !== '1') {
    if (noVm) throw noVmRefusal(kvm.why ?? 'no usable /dev/kvm', ['bench', ...args]);
    console.error(`guestmem bench: no usable /dev/kvm here (${kvm.why}); running it inside the harness VM (guestmem vm)`);
    return runInVm(['bench', ...args]);
  }
  const result = await benchBareExits(exits || 20000);
  if (json) printJson({ bareExits: result });
  else printBareExits(result);
  return 0;
}

function printBareExits(result: ExitBench): void {
  const us = (ns: number | null) => (ns === null ? 'n/a' : `${(ns / 1000).toFixed(2)} µs`);
  const times = (r: number | null) => (r === null ? '' : ` (${r.toFixed(2)}× C)`);
  console.log(`
bare exits (out 0x10 in real mode on a default-type VM, counted, re-entered), best of 3 rounds taking turns, ${result.exits} timed each:`);
  console.log(`  C VMM loop (yardstick)                 ${us(result.cNs)}${result.note ? ` (${result.note})` : ''}`);
  console.log(`  JavaScript floor: KVM_RUN in a loop     ${us(result.floorNs)}${times(result.floorRatio)}`);
  console.log(`  guestmem, vCPU thread handles it       ${us(result.threadNs)}${times(result.threadRatio)} (target ≤ 1.2×)`);
  console.log(`  guestmem, exit handed to the event loop ${us(result.eventLoopNs)}${times(result.eventLoopRatio)}`);
  console.log(`  two vCPU threads / one, exits per second: ${result.twoVcpuScaling.toFixed(2)} (target ≥ 1.6 on 2 cores; ${os.cpus().length} CPU${os.cpus().length === 1 ? '' : 's'} here)`);
  console.log(`  main thread's worst timer lateness while vCPU threads ran: ${result.worstTimerLatenessMs} ms`);
}

/** Conversions of each size both ways on one block, after a warm-up. */
async function measure(host: VmHost, sizes: number[], iterations: number, prefault: boolean): Promise<BenchRow[]> {
  // Each row reports the crossings into C++ a conversion makes.
  nativeCalls.enabled = true;
  const rows: BenchRow[] = [];
  host.openBlock(Math.max(...sizes) * PAGE * 2, PAGE);
  const block = host.block!;
  const listener = host.makeListener('vfio');
  if (listener) await block.register(listener);
  // Warm up the JIT and the kernel's paths first, so the first size measured is not the slowest.
  for (let i = 0; i < 5; i++) {
    for (const pages of sizes) {
      await block.convert(block.gpa, pages * PAGE, 'shared');
      await block.convert(block.gpa, pages * PAGE, 'private');
    }
  }
  for (const pages of sizes) {
    for (const to of ['shared', 'private'] as const) {
      rows.push({ prefault, pages, to, conversions: 0, meanNs: 0, stepNs: { kvmAttributes: 0, listeners: 0, discard: 0, prefault: 0 }, outsideNs: 0, nativeCalls: 0, failedPrefaults: 0 });
    }
    const [toShared, toPrivate] = rows.slice(-2) as [BenchRow, BenchRow];
    for (let i = 0; i < iterations; i++) {
      for (const row of [toShared, toPrivate]) {
        const before = { ...block.stats.ns };
        const failedBefore = block.stats.prefaultFailed;
        const calls = nativeCalls.count;
        // The steps' own clock, read as cheaply; the path a VMM loop takes: synchronous
        // where every listener is (the VFIO one is).
        const started = ConversionStats.now();
        if (block.canConvertSync) block.convertSync(block.gpa, pages * PAGE, row.to);
        else await block.convert(block.gpa, pages * PAGE, row.to);
        row.meanNs += (ConversionStats.now() - started) * 1e6;
        row.nativeCalls = Math.max(row.nativeCalls, nativeCalls.count - calls);
        row.failedPrefaults += block.stats.prefaultFailed - failedBefore;
        for (const step of STEPS) row.stepNs[step] += Number(block.stats.ns[step] - before[step]);
        row.conversions++;
      }
    }
    for (const row of [toShared, toPrivate]) {
      row.meanNs = Math.round(row.meanNs / row.conversions);
      for (const step of STEPS) row.stepNs[step] = Math.round(row.stepNs[step] / row.conversions);
      row.outsideNs = Math.max(0, row.meanNs - STEPS.reduce((sum, step) => sum + row.stepNs[step], 0));
    }
  }
  return rows;
}
