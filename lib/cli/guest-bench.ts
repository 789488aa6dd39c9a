// The guest-driven round trip, timed: the `loop` guest program converts one page private
// and back N times, each conversion an exit → tracker → KVM attributes → listeners →
// punch-hole → resume. Measured in the same boot: guestmem with the exit handed to the
// event loop, guestmem on the vCPU's own thread (threads: the exit handled where KVM_RUN
// returned), each without and with the device's VFIO listener, and the yardstick:
// bench/c-vmm-loop.c, a minimal C VMM that runs the same guest and makes only the kernel
// calls. After a warm-up, rounds take turns (event loop, thread, C) so that a noisy moment
// of the host falls on all three; the ratios are each round's, reported as their range.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { guestProgram } from '../vmm/guest-image';
import type { PortHandler } from '../vmm/guest-ports';
import { runGuestSession } from '../vmm/guest-session';
import { GuestVm } from '../vmm/guest-vm';
import { VmHost, DEFAULT_GPA } from './hosts';
import type { VmTypeChoice } from '../kvm/vm-types';
import { PACKAGE_ROOT } from './vm-command';
import { buildYardstick, removeYardstick } from './c-yardstick';

const MiB = 1 << 20;

export interface GuestLoopBench {
  iterations: number;
  /** Alternating rounds measured after the warm-up; the figures below are medians of them. */
  rounds: number;
  /** A bare exit (an OUT that nothing handles but a counter) and re-entry: guestmem, then C. */
  exitNs: number;
  cExitNs: number | null;
  /** The exit handed to the event loop and back (the default VMM loop). */
  guestmemNs: number;
  guestmemVfioNs: number | null;
  /** The exit handled on the vCPU's own thread (GuestVm `threads: true`). */
  threadNs: number;
  threadVfioNs: number | null;
  cNs: number | null;
  /** guestmem (event loop, no listener) / C, median round: the part of a round trip that is ours. */
  ratio: number | null;
  /** guestmem (vCPU thread, no listener) / C, median round, and the range over rounds. */
  threadRatio: number | null;
  threadRatioRange: [number, number] | null;
  note?: string;
}

/**
 * ns per conversion at steady state: over the second half of the conversions the main
 * thread hears of. What a session costs once stays out (the VM's vCPUs made; with threads,
 * each vCPU's Worker started, its modules loaded, then stopped: seconds of emulated time
 * that vary by seconds), and so does the warm-up of a vCPU thread's JavaScript: each
 * session's Worker is a fresh isolate whose code V8 optimizes only after a few thousand
 * conversions, where the main thread's code stays warm from one session to the next. A VMM
 * that runs for hours sees the second half. Events arrive in turns (a vCPU thread's in
 * batches of EVENT_BATCH): the clock runs from the arrival of the turn that crosses half
 * way to the last one, over the conversions of the turns after it.
 */
async function timeGuestmem(iterations: number, vfio: string | undefined, vmType?: VmTypeChoice, threads = false): Promise<number> {
  const host = new VmHost({ gpa: DEFAULT_GPA, vfio, vmType });
  try {
    host.openBlock(16 * MiB, 4096);
    // A VMM's loop times nothing per step: the round trip is measured as it would run.
    host.block!.stats.timing = false;
    const listener = host.makeListener('vfio');
    if (listener) await host.block!.register(listener);
    // Each turn's arrival: when it came, and the conversions heard before it.
    const turns: Array<{ at: number; before: number }> = [];
    let heard = 0;
    let turnOpen = false;
    let lastHeardAt = 0;
    const report = await runGuestSession({
      kvm: host.kvm, memory: host.memory, program: 'loop', iterations,
      dataGpa: BigInt(DEFAULT_GPA + MiB), dataPages: 1, listener: listener ?? undefined, threads,
      onConversion: () => {
        lastHeardAt = performance.now();
        if (!turnOpen) {
          turnOpen = true;
          turns.push({ at: lastHeardAt, before: heard });
          // The rest of this turn's batch is delivered before any microtask runs.
          queueMicrotask(() => (turnOpen = false));
        }
        heard++;
      },
    });
    if (!report.ok) throw new Error(`the loop guest failed: ${report.problems.join('; ')}`);
    const converted = report.run.conversions.converted;
    const half = turns.findIndex((_turn, k) => (turns[k + 1]?.before ?? heard) >= heard / 2);
    const start = half >= 0 ? turns[half] : undefined;
    const timed = start ? heard - (turns[half + 1]?.before ?? heard) : 0;
    // Too few turns to time between (a test's 20 round trips): the whole session's average,
    // start-up included, an upper bound.
    if (!start || timed <= 0 || lastHeardAt <= start.at) return (report.elapsedMs * 1e6) / converted;
    return ((lastHeardAt - start.at) * 1e6) / timed;
  } finally {
    await host.shutdown();
  }
}

/** Bare exits: the misbehave guest's stray-port mode, each OUT counted and resumed. */
async function timeGuestmemExits(exits: number, vmType?: VmTypeChoice): Promise<number> {
  const host = new VmHost({ gpa: DEFAULT_GPA, vmType });
  try {
    host.openBlock(16 * MiB, 4096);
    let seen = 0;
    let started = 0;
    const ports = new Map<number, PortHandler>([[0x80, () => {
      if (seen === 0) started = performance.now();
      if (++seen === exits + 1) guest.stop();
    }]]);
    const guest = await GuestVm.create({
      kvm: host.kvm, memory: host.memory, image: guestProgram('misbehave'), ports,
      boot: { dataGpa: BigInt(DEFAULT_GPA + MiB), dataPages: 1, seed: 2n },
    });
    try {
      await guest.run();
    } finally {
      guest.close();
    }
    return ((performance.now() - started) * 1e6) / exits;
  } finally {
    await host.shutdown();
  }
}


function timeC(binary: string, iterations: number, exits = false): number {
  const image = path.join(PACKAGE_ROOT, 'dist', 'guest', exits ? 'misbehave.bin' : 'loop.bin');
  const result = spawnSync(binary, [image, String(iterations), ...(exits ? ['exits'] : [])], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`the C yardstick failed: ${result.stderr.trim() || result.error?.message}`);
  return (JSON.parse(result.stdout) as { nsPer: number }).nsPer;
}

const MAX_WARM_UP_SESSIONS = 8;

async function steadyState(measure: () => Promise<number>): Promise<number> {
  let previous = await measure();
  for (let session = 1; session < MAX_WARM_UP_SESSIONS; session++) {
    const now = await measure();
    if (Math.abs(now - previous) <= 0.1 * previous) return now;
    previous = now;
  }
  return previous;
}

const ROUNDS = 3;

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const hundredths = (value: number): number => Math.round(value * 100) / 100;

export async function benchGuestLoop(iterations: number, vfio: string | undefined, vmType?: VmTypeChoice): Promise<GuestLoopBench> {
  const yardstick = buildYardstick('c-vmm-loop');
  const binary = 'binary' in yardstick ? yardstick.binary : null;
  // Steady state, as a VMM that runs for hours sees it: under emulation V8's optimized code
  // settles only after a few thousand round trips (the first two thousand cost four times
  // the rest, and its compiler thread shares the one emulated CPU), so event-loop sessions
  // repeat until one is within 10% of the one before. Not the vCPU-thread path: each of its
  // sessions starts a fresh Worker, as cold as the first, so its warm-up is left out inside
  // the session (timeGuestmem times the second half).
  if (binary) timeC(binary, Math.min(100, iterations));
  await steadyState(() => timeGuestmem(iterations, undefined, vmType));
  const eventLoop: number[] = [];
  const thread: number[] = [];
  const c: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    eventLoop.push(await timeGuestmem(iterations, undefined, vmType));
    thread.push(await timeGuestmem(iterations, undefined, vmType, true));
    if (binary) c.push(timeC(binary, iterations));
  }
  const guestmemVfioNs = vfio ? await timeGuestmem(iterations, vfio, vmType) : null;
  const threadVfioNs = vfio ? await timeGuestmem(iterations, vfio, vmType, true) : null;
  const exitNs = await steadyState(() => timeGuestmemExits(iterations * 2, vmType));
  const cExitNs = binary ? timeC(binary, iterations * 2, true) : null;
  removeYardstick(yardstick);
  const threadRatios = binary ? thread.map((ns, round) => ns / c[round]!) : null;
  const cNs = binary ? median(c) : null;
  return {
    iterations,
    rounds: ROUNDS,
    exitNs: Math.round(exitNs),
    cExitNs: cExitNs === null ? null : Math.round(cExitNs),
    guestmemNs: Math.round(median(eventLoop)),
    guestmemVfioNs: guestmemVfioNs === null ? null : Math.round(guestmemVfioNs),
    threadNs: Math.round(median(thread)),
    threadVfioNs: threadVfioNs === null ? null : Math.round(threadVfioNs),
    cNs: cNs === null ? null : Math.round(cNs),
    ratio: cNs === null ? null : hundredths(median(eventLoop.map((ns, round) => ns / c[round]!))),
    threadRatio: threadRatios === null ? null : hundredths(median(threadRatios)),
    threadRatioRange: threadRatios === null ? null : [hundredths(Math.min(...threadRatios)), hundredths(Math.max(...threadRatios))],
    ...('note' in yardstick ? { note: yardstick.note } : {}),
  };
}
