// One guest program run end to end: a GuestVm on the caller's memory, the guest protocol's
// ports, the program's host checks, and a report that says whether every check held, the
// guest's and the host's. The CLI's `guestmem guest`, the demo and the kernel suites use it.

import type { DmaProbe } from './dma-probe';
import type { GuestMemory } from '../memory/guest-memory';
import type { Kvm } from '../kvm/kvm';
import type { VfioDmaListener } from '../vfio/vfio-dma-listener';
import type { MapRequest } from './boot-info';
import { guestProgram, type GuestProgramName } from './guest-image';
import { GuestProtocol, type GuestCheck } from './guest-ports';
import { checkSessionOptions } from './guest-options';
import { GuestVm } from './guest-vm';
import { GuestmemError } from '../common/errors';
import { VM_TYPES } from '../kvm/kvm-constants';
import type { HostCheck, ProgramContext } from './program-host';
import { PROGRAM_HOSTS } from './programs';
import type { ConversionEvent, VmmReport } from './vmm-loop';
import { outOfRange } from '../common/errors';

const PAGE = 4096;

/**
 * What {@link runGuestSession} runs: the program, its vCPUs and iterations, and the host's
 * observers.
 */
export interface GuestSessionOptions {
  kvm: Kvm;
  memory: GuestMemory;
  program: GuestProgramName;
  /** The data area the program converts; its block must hold it. */
  dataGpa: bigint;
  dataPages: number;
  /** Start of the boot region (default: the first block's start); must not overlap the data. */
  bootGpa?: bigint;
  vcpus?: number;
  seed?: bigint;
  iterations?: number;
  /** The requests program's table. */
  requests?: MapRequest[];
  probe?: DmaProbe;
  listener?: VfioDmaListener;
  /** Each vCPU on a thread of its own that handles its exits (GuestVmOptions.threads). */
  threads?: boolean;
  /** Stop the guest (and fail) after this many milliseconds. */
  timeoutMs?: number;
  /** Told of each piece of console text (port 0xe9), with the vCPU that wrote it. */
  onConsole?(text: string, vcpu: number): void;
  /** Told of each conversion the guest asked for, once it ended. */
  onConversion?(event: ConversionEvent): void;
  /** Told of each check the host made (memfd, device reach, model). */
  onCheck?(check: HostCheck): void;
}

/** How a guest session went: the loop's report, the guest's checks, the host's own checks. */
export interface GuestSessionReport {
  program: GuestProgramName;
  ok: boolean;
  run: VmmReport;
  guestChecks: { passed: number; failed: GuestCheck[] };
  hostChecks: HostCheck[];
  values: Array<{ vcpu: number; value: number }>;
  console: string;
  /** Why ok is false, one line per reason. */
  problems: string[];
  elapsedMs: number;
}

/**
 * Runs a guest program on vCPUs of the memory's VM, its hypercalls converting through
 * `memory`, with the host's checks after each step; resolves with the report.
 */
export async function runGuestSession(options: GuestSessionOptions): Promise<GuestSessionReport> {
  checkSessionOptions(options, PROGRAM_HOSTS);
  const host = PROGRAM_HOSTS[options.program];
  if (host.vmType && options.memory.vm.type !== VM_TYPES[host.vmType]) {
    throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `the ${options.program} program runs on ${host.vmType} VMs only (its guest speaks that type's protocol); this VM's type is ${options.memory.vm.type}`);
  }
  const dataBlock = options.memory.blocks.find((b) => b.contains(Number(options.dataGpa), options.dataPages * PAGE));
  if (!dataBlock) throw outOfRange(`the data area [0x${options.dataGpa.toString(16)}, +${options.dataPages} pages) is not inside one RAM block`);
  const hostChecks: HostCheck[] = [];
  const context: ProgramContext & { sharedOutsideData: number } = {
    block: dataBlock,
    dataGpa: options.dataGpa,
    dataPages: options.dataPages,
    vcpus: options.vcpus ?? 1,
    seed: options.seed ?? 1n,
    iterations: options.iterations ?? 16,
    probe: options.probe,
    listener: options.listener,
    sharedOutsideData: 0,
    check: (name, ok, detail) => {
      hostChecks.push({ name, ok, detail });
      options.onCheck?.({ name, ok, detail });
    },
  };
  const protocol = new GuestProtocol({
    onConsole: options.onConsole,
    onSync: (step, vcpu) => host.onSync?.(step, vcpu, context),
  });
  const boot = { ...host.boot(context), requests: options.requests };
  const guest = await GuestVm.create({
    kvm: options.kvm,
    memory: options.memory,
    image: guestProgram(options.program),
    boot,
    bootGpa: options.bootGpa,
    vcpus: context.vcpus,
    ports: new Map([...protocol.ports(), ...(host.ports?.(context) ?? [])]),
    threads: options.threads,
    onConversion: (event) => {
      host.onConversion?.(event, context);
      options.onConversion?.(event);
    },
  });
  // What the listener maps besides the data area: the boot region, and whatever else of
  // the block someone shared before.
  const dataOffset = Number(options.dataGpa) - dataBlock.gpa;
  context.sharedOutsideData = dataBlock.sharedPages - dataBlock.attributes.countShared({ offset: dataOffset, size: options.dataPages * PAGE });
  host.prepare?.(context);
  const started = performance.now();
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  try {
    if (options.timeoutMs !== undefined) {
      timer = setTimeout(() => {
        timedOut = true;
        guest.stop();
      }, options.timeoutMs);
    }
    const run = await guest.run();
    await host.finish?.(context);
    const problems: string[] = [];
    if (timedOut) problems.push(`the guest did not finish within ${options.timeoutMs} ms and was stopped`);
    for (const outcome of run.vcpus) {
      if ('terminated' in outcome) {
        const problem = host.termination ? host.termination(outcome.sev) : `the guest terminated itself (${outcome.terminated})`;
        if (problem !== null) problems.push(`vCPU ${outcome.vcpu}: ${problem}`);
      } else if (!('status' in outcome)) problems.push(`vCPU ${outcome.vcpu} ${'halted' in outcome ? 'halted' : 'was stopped'} before it exited`);
      else if (outcome.status !== 0) problems.push(`vCPU ${outcome.vcpu} exited with status ${outcome.status}`);
    }
    const failedGuest = protocol.failedChecks;
    for (const check of failedGuest) problems.push(`guest check ${check.id} failed on vCPU ${check.vcpu}`);
    for (const check of hostChecks) if (!check.ok) problems.push(`host check ${check.name}: ${check.detail}`);
    return {
      program: options.program,
      ok: problems.length === 0,
      run,
      guestChecks: { passed: protocol.checks.length - failedGuest.length, failed: failedGuest },
      hostChecks,
      values: protocol.values,
      console: protocol.console,
      problems,
      elapsedMs: performance.now() - started,
    };
  } finally {
    clearTimeout(timer);
    guest.close();
  }
}
