// Bare exits, timed where a VMM handles them: a default-type VM (what the machines' own
// /dev/kvm runs on their real cores) whose vCPUs loop on `out 0x10, al; jmp back` in real
// mode, each OUT counted and the vCPU re-entered. Three ways in the same run, rounds taking
// turns so that the machine's slow spells fall on all alike: the C yardstick
// (bench/c-exit-loop.c), guestmem's vCPU threads (the exit handled on the vCPU's own
// thread by a port module) and guestmem's event-loop vCPU (the exit handed to the main
// thread and back). Beside them: two vCPUs on threads against one (exits per second), and
// the main thread's worst timer lateness while the vCPU threads ran.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Kvm, type Vm } from '../kvm/kvm';
import { SharedMemory } from '../kvm/shared-memory';
import { Vcpu } from '../vmm/vcpu';
import { VcpuThreads } from '../vmm/vcpu-threads';
import { VmmLoop, type LoopMemory } from '../vmm/vmm-loop';
import { exitCounter, type ExitCounterOptions, type ExitCounterResult } from '../vmm/exit-counter-port';
import { PACKAGE_ROOT } from './vm-command';

const CODE_GPA = 0x1000;
const SLOT_SIZE = 0x10000;
const PORT = 0x10;
/** out 0x10, al; jmp back. */
const CODE = [0xe6, 0x10, 0xeb, 0xfc];
const ROUNDS = 3;

export interface ExitBench {
  exits: number;
  /** Best round of each, ns per exit. */
  cNs: number | null;
  threadNs: number;
  eventLoopNs: number;
  /** threadNs / cNs and eventLoopNs / cNs. */
  threadRatio: number | null;
  eventLoopRatio: number | null;
  /** Exits per second of two vCPU threads together over one alone (2 cores: the target is ≥ 1.6). */
  twoVcpuScaling: number;
  /** The main thread's worst timer lateness (ms) while vCPU threads ran. */
  worstTimerLatenessMs: number;
  note?: string;
}

/** A VM running the exit loop on `count` vCPUs, and what to close afterwards. */
function exitGuest(kvm: Kvm, count: number): { vm: Vm; vcpus: Vcpu[]; memory: SharedMemory } {
  const vm = kvm.createVm('default');
  const memory = SharedMemory.create(SLOT_SIZE, 'guestmem-exit-bench');
  memory.view(CODE_GPA, CODE.length).set(CODE);
  vm.setUserMemoryRegion({ slot: 0, gpa: 0, size: SLOT_SIZE, userspaceAddress: memory.address });
  const vcpus: Vcpu[] = [];
  for (let id = 0; id < count; id++) {
    const vcpu = Vcpu.create(kvm, vm, id);
    const sregs = vcpu.specialRegisters;
    vcpu.specialRegisters = { ...sregs, cs: { ...sregs.cs, base: 0n, selector: 0 } };
    vcpu.registers = { ...vcpu.registers, rip: BigInt(CODE_GPA), rflags: 2n };
    vcpus.push(vcpu);
  }
  return { vm, vcpus, memory };
}

const NO_MEMORY: LoopMemory = { covers: () => false, convert: () => { throw new Error('the exit loop converts nothing'); } };

async function timeThreads(kvm: Kvm, count: number, options: ExitCounterOptions): Promise<{ ns: number[]; latenessMs: number }> {
  const { vm, vcpus, memory } = exitGuest(kvm, count);
  const results: ExitCounterResult[] = [];
  let latenessMs = 0;
  let expected = performance.now() + 1;
  const timer = setInterval(() => {
    const now = performance.now();
    latenessMs = Math.max(latenessMs, now - expected);
    expected = now + 1;
  }, 1);
  try {
    const threads = new VcpuThreads(vcpus, NO_MEMORY, {
      blocks: [],
      portModules: [{ module: path.join(__dirname, '..', 'vmm', 'exit-counter-port.js'), export: 'exitCounter', options }],
      onMessage: (message) => results.push(message as ExitCounterResult),
    });
    await threads.run();
  } finally {
    clearInterval(timer);
    vm.close();
    memory.close();
  }
  return { ns: results.map((r) => r.nsPerExit), latenessMs };
}

async function timeEventLoop(kvm: Kvm, options: ExitCounterOptions): Promise<number> {
  const { vm, vcpus, memory } = exitGuest(kvm, 1);
  let ns = 0;
  try {
    await new VmmLoop(vcpus, NO_MEMORY, { ports: exitCounter(options), post: (message) => (ns = (message as ExitCounterResult).nsPerExit) }).run();
  } finally {
    vm.close();
    memory.close();
  }
  return ns;
}

function buildYardstick(): { binary: string } | { note: string } {
  const source = path.join(PACKAGE_ROOT, 'bench', 'c-exit-loop.c');
  if (!fs.existsSync(source)) return { note: `no ${source} (the C yardstick ships with the repository, not the package)` };
  const binary = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-exit-bench-')), 'c-exit-loop');
  const result = spawnSync('cc', ['-O2', '-o', binary, source], { encoding: 'utf8' });
  if (result.status !== 0) return { note: `cannot compile the C yardstick: ${result.error?.message ?? result.stderr.trim()}` };
  return { binary };
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
  const yardstick = buildYardstick();
  const kvm = Kvm.open();
  const best = { c: Infinity, thread: Infinity, eventLoop: Infinity };
  let latenessMs = 0;
  try {
    for (let round = 0; round < ROUNDS; round++) {
      if ('binary' in yardstick) best.c = Math.min(best.c, timeC(yardstick.binary, options));
      const threads = await timeThreads(kvm, 1, options);
      best.thread = Math.min(best.thread, threads.ns[0]!);
      latenessMs = Math.max(latenessMs, threads.latenessMs);
      best.eventLoop = Math.min(best.eventLoop, await timeEventLoop(kvm, options));
    }
    // Exits per second: each vCPU times its own exits, so two together give twice the exits
    // in the time of the slower one.
    const one = await timeThreads(kvm, 1, options);
    const two = await timeThreads(kvm, 2, options);
    const scaling = (2 * one.ns[0]!) / Math.max(...two.ns);
    const cNs = 'binary' in yardstick ? Math.round(best.c) : null;
    return {
      exits,
      cNs,
      threadNs: Math.round(best.thread),
      eventLoopNs: Math.round(best.eventLoop),
      threadRatio: ratio(best.thread, cNs),
      eventLoopRatio: ratio(best.eventLoop, cNs),
      twoVcpuScaling: Math.round(scaling * 100) / 100,
      worstTimerLatenessMs: Math.round(Math.max(latenessMs, one.latenessMs, two.latenessMs) * 10) / 10,
      ...('note' in yardstick ? { note: yardstick.note } : {}),
    };
  } finally {
    kvm.close();
    if ('binary' in yardstick) fs.rmSync(path.dirname(yardstick.binary), { recursive: true, force: true });
  }
}
