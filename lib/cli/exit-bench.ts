// Bare exits, timed where a VMM handles them: a default-type VM (what the machines' own
// /dev/kvm runs on their real cores) whose vCPUs loop on `out 0x10, al; jmp back` in real
// mode, each OUT counted and the vCPU re-entered. Three ways in the same run, rounds taking
// turns so that the machine's slow spells fall on all alike: the C yardstick
// (bench/c-exit-loop.c), a bare synchronous KVM_RUN loop in JavaScript (the floor),
// guestmem's vCPU threads (the exit handled on the vCPU's own thread by a port module) and
// guestmem's event-loop vCPU (the exit handed to the main thread and back). Beside them: two vCPUs on threads against one (exits per second), and
// the main thread's worst timer lateness while the vCPU threads ran.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Kvm } from '../kvm/kvm';
import { EXIT_LOOP_PORT, exitLoopGuest } from '../vmm/exit-loop-guest';
import { VcpuThreads } from '../vmm/vcpu-threads';
import { VmmLoop, type LoopMemory } from '../vmm/vmm-loop';
import { exitCounter, type ExitCounterOptions, type ExitCounterResult } from '../vmm/exit-counter-port';
import { buildYardstick, removeYardstick } from './c-yardstick';

const PORT = EXIT_LOOP_PORT;
const ROUNDS = 3;

export interface ExitBench {
  exits: number;
  /** Best round of each, ns per exit. */
  cNs: number | null;
  /** KVM_RUN called synchronously from JavaScript, the exit decoded, nothing else: the floor of JavaScript's share. */
  floorNs: number;
  threadNs: number;
  eventLoopNs: number;
  /** floorNs, threadNs and eventLoopNs over cNs. */
  floorRatio: number | null;
  threadRatio: number | null;
  eventLoopRatio: number | null;
  /** Exits per second of two vCPU threads together over one alone (2 cores: the target is ≥ 1.6). */
  twoVcpuScaling: number;
  /** The main thread's worst timer lateness (ms) while vCPU threads ran. */
  worstTimerLatenessMs: number;
  note?: string;
}

const NO_MEMORY: LoopMemory = { covers: () => false, convert: () => { throw new Error('the exit loop converts nothing'); } };

/**
 * The vCPUs on threads of their own, each exit counted there. With `watchTimers`, a 1 ms
 * timer on the main thread records its worst lateness meanwhile (apart from the timed
 * rounds: on a machine with one CPU the timer's own wake-ups take turns with the vCPU).
 */
async function timeThreads(kvm: Kvm, count: number, options: ExitCounterOptions, watchTimers = false): Promise<{ ns: number[]; latenessMs: number }> {
  const guest = exitLoopGuest(kvm, count);
  const results: ExitCounterResult[] = [];
  let latenessMs = 0;
  let expected = performance.now() + 1;
  const timer = watchTimers
    ? setInterval(() => {
        const now = performance.now();
        latenessMs = Math.max(latenessMs, now - expected);
        expected = now + 1;
      }, 1)
    : undefined;
  try {
    const threads = new VcpuThreads(guest.vcpus, NO_MEMORY, {
      blocks: [],
      portModules: [{ module: path.join(__dirname, '..', 'vmm', 'exit-counter-port.js'), export: 'exitCounter', options }],
      onMessage: (message) => results.push(message as ExitCounterResult),
    });
    await threads.run();
  } finally {
    clearInterval(timer);
    guest.close();
  }
  return { ns: results.map((r) => r.nsPerExit), latenessMs };
}

/**
 * The floor of JavaScript's share: KVM_RUN called synchronously on this thread, the exit
 * decoded and counted, nothing else (no loop, no handler lookup). What the vCPU thread's
 * loop costs above this is the VMM loop's own.
 */
function timeSynchronousFloor(kvm: Kvm, options: ExitCounterOptions): number {
  const guest = exitLoopGuest(kvm, 1);
  const vcpu = guest.vcpus[0]!;
  try {
    let started = 0;
    for (let n = 0; n < options.warmup + options.exits; n++) {
      if (n === options.warmup) started = performance.now();
      const exit = vcpu.runSync();
      if (exit.reason !== 'io' || exit.port !== options.port) throw new Error(`the exit loop's guest left with ${exit.reason}`);
    }
    return ((performance.now() - started) * 1e6) / options.exits;
  } finally {
    guest.close();
  }
}

async function timeEventLoop(kvm: Kvm, options: ExitCounterOptions): Promise<number> {
  const guest = exitLoopGuest(kvm, 1);
  let ns = 0;
  try {
    await new VmmLoop(guest.vcpus, NO_MEMORY, { ports: exitCounter(options), post: (message) => (ns = (message as ExitCounterResult).nsPerExit) }).run();
  } finally {
    guest.close();
  }
  return ns;
}


function timeC(binary: string, options: ExitCounterOptions): number {
  const result = spawnSync(binary, [String(options.exits), String(options.warmup)], { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`the C yardstick failed: ${result.stderr.trim() || result.error?.message}`);
  return (JSON.parse(result.stdout) as { nsPer: number }).nsPer;
}

const ratio = (a: number, b: number | null): number | null => (b === null || b === 0 ? null : Math.round((a / b) * 100) / 100);

/** The three ways, ROUNDS rounds taking turns, best round of each; then two vCPU threads against one. */
export async function benchBareExits(exits: number): Promise<ExitBench> {
  const options: ExitCounterOptions = { port: PORT, warmup: Math.max(1000, exits / 10), exits };
  const yardstick = buildYardstick('c-exit-loop');
  const kvm = Kvm.open();
  const best = { c: Infinity, floor: Infinity, thread: Infinity, eventLoop: Infinity };
  try {
    for (let round = 0; round < ROUNDS; round++) {
      if ('binary' in yardstick) best.c = Math.min(best.c, timeC(yardstick.binary, options));
      best.floor = Math.min(best.floor, timeSynchronousFloor(kvm, options));
      best.thread = Math.min(best.thread, (await timeThreads(kvm, 1, options)).ns[0]!);
      best.eventLoop = Math.min(best.eventLoop, await timeEventLoop(kvm, options));
    }
    // Exits per second: each vCPU times its own exits, so two together give twice the exits
    // in the time of the slower one.
    const one = await timeThreads(kvm, 1, options);
    const two = await timeThreads(kvm, 2, options);
    const scaling = (2 * one.ns[0]!) / Math.max(...two.ns);
    const watched = await timeThreads(kvm, 1, options, true);
    const cNs = 'binary' in yardstick ? Math.round(best.c) : null;
    return {
      exits,
      cNs,
      floorNs: Math.round(best.floor),
      threadNs: Math.round(best.thread),
      eventLoopNs: Math.round(best.eventLoop),
      floorRatio: ratio(best.floor, cNs),
      threadRatio: ratio(best.thread, cNs),
      eventLoopRatio: ratio(best.eventLoop, cNs),
      twoVcpuScaling: Math.round(scaling * 100) / 100,
      worstTimerLatenessMs: Math.round(watched.latenessMs * 10) / 10,
      ...('note' in yardstick ? { note: yardstick.note } : {}),
    };
  } finally {
    kvm.close();
    removeYardstick(yardstick);
  }
}
