// `guestmem guest PROGRAM`: runs one of the guest programs (guest/) on a real kernel. The
// guest converts its own memory through MAP_GPA_RANGE hypercalls; the VMM loop carries each
// request through the tracker, KVM, the VFIO listener (with --vfio) and the punch-hole,
// and the program's host side checks the memfd and the device's reach. Prints the guest's
// console, its conversions and the final map; exits 1 if any check fails.

import fs from 'node:fs';
import { DmaProbe } from '../vmm/dma-probe';
import { GUEST_PROGRAMS, type GuestProgramName } from '../vmm/guest-image';
import { runGuestSession, type GuestSessionReport } from '../vmm/guest-session';
import type { ConversionEvent } from '../vmm/vmm-loop';
import { VmHost, backendOption, vfioOption, DEFAULT_GPA } from './hosts';
import { mapLegend, mapStrip, mapSvg } from './map-picture';
import { parseCommand, type CommandSpec } from './command-spec';
import { failureJson, printJson } from './output';
import { checkOutputFile } from './script-commands';
import type { ConversionRecord } from './script-runner';
import { formatBytes } from './sizes';
import { parseCount } from './counts';
import { UsageError } from './usage-error';
import { runInVm } from './vm-command';
import { harnessReason, noVmRefusal, parseVmTypeOption, VM_TYPE_OPTION } from './vm-type-option';

const PAGE = 4096;
const MiB = 1 << 20;
const BLOCK_SIZE = 16 * MiB;
/** The data area starts 1 MiB into the block, past the boot region. */
const DATA_OFFSET = MiB;
const SHOWN_CONVERSIONS = 16;

function positiveInteger(text: string | undefined, fallback: number, what: string, max: number): number {
  return parseCount(text, fallback, what, 1, max);
}

const GUEST_OPTIONS = {
  vcpus: { type: 'string', value: 'N', help: 'vCPUs running the program, 1..8 (default 1)' },
  vfio: { type: 'string', value: 'BDF', help: 'attach the VFIO DMA listener of this device (bound to vfio-pci)' },
  backend: { type: 'string', value: 'auto|type1|iommufd', help: 'the DMA back end for --vfio (default auto: iommufd where present, else type1)' },
  iterations: { type: 'string', value: 'N', help: 'conversions for random and loop (default 20; loop 1000)' },
  seed: { type: 'string', value: 'N', help: 'the seed of random, or the misbehaviour of misbehave (default 1)' },
  pages: { type: 'string', value: 'N', help: 'pages of the data area random converts in (default 64)' },
  timeout: { type: 'string', value: 'S', help: 'stop the vCPUs after S seconds (default 600)' },
  threads: { type: 'boolean', help: 'run each vCPU on its own thread, handling its exits (conversions included) there, not on the event loop' },
  json: { type: 'boolean', help: 'print the report as one JSON object' },
  svg: { type: 'string', value: 'FILE', help: 'draw the map and the conversions over time' },
  'no-vm': { type: 'boolean', help: 'fail on a host that lacks what it needs, instead of running in the harness VM' },
  ...VM_TYPE_OPTION,
} as const;

export const GUEST: CommandSpec<typeof GUEST_OPTIONS> = {
  name: 'guest',
  summary: 'run a guest program whose own hypercalls convert its memory (vCPUs, VMM loop)',
  positionals: 'PROGRAM',
  options: GUEST_OPTIONS,
  description: `Runs a guest program (64-bit, assembled from guest/) on vCPUs of a VM with private memory (--vm-type; on SNP and TDX
only secret-snp and secret-tdx run, the others speak port I/O and VMMCALL). Its
KVM_HC_MAP_GPA_RANGE hypercalls convert its memory through the tracker, KVM's attributes,
the device's VFIO DMA listener (--vfio) and the punch-hole; the guest is answered 0, or
-22 (bad request) / -14 (failed and rolled back) and goes on. The host checks the memfd
and, with --vfio, the device's reach by DMA. Programs:
  secret     a private page hides a secret from the host and the device; a shared one carries messages
  random     --iterations random conversions (--seed), checked against a model after each; --vcpus 2 races them
  loop       --iterations x (private, shared) of one page
  plug       asks the VMM (PORT_PLUG) to unplug and plug back a shared page while converting
  misbehave  --seed 0 spins (stop it with --timeout), 1 triple-faults, 2 uses a stray port, 3 halts, 4 ud2
  secret-snp secret as an SEV-SNP guest (--vm-type snp): GHCB MSR protocol, PVALIDATE
  secret-tdx secret as a TD (--vm-type tdx): TDG.VP.VMCALL, TDG.MEM.PAGE.ACCEPT
Runs inside the harness VM when this host lacks what it needs (--no-vm: fail instead).
Exits 1 if a check fails or the guest does not exit 0.`,
  examples: ['guestmem guest secret --vfio 0000:00:01.0', 'guestmem guest random --vcpus 2 --iterations 50 --seed 7 --svg random.svg'],
};

export async function guestCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(GUEST, args);
  // 'requests' is a program of the kernel tests only (bad requests on purpose), not the CLI's.
  const programs = GUEST_PROGRAMS.filter((p) => p !== 'requests');
  if (positionals.length !== 1) throw new UsageError(`give one program: ${programs.join(', ')}`);
  const program = positionals[0]! as GuestProgramName;
  if (!(programs as readonly string[]).includes(program)) throw new UsageError(`unknown program '${program}'; the programs are ${programs.join(', ')}`);
  const vcpus = positiveInteger(values.vcpus, 1, '--vcpus', 8);
  const iterations = positiveInteger(values.iterations, program === 'loop' ? 1000 : 20, '--iterations', 1_000_000);
  const dataPages = positiveInteger(values.pages, 64, '--pages', (BLOCK_SIZE - DATA_OFFSET) / PAGE);
  const timeout = positiveInteger(values.timeout, 600, '--timeout', 86_400);
  if (values.seed !== undefined && !/^(0x[0-9a-f]+|\d+)$/i.test(values.seed)) throw new UsageError(`--seed takes a number, got '${values.seed}'`);
  const seed = BigInt(values.seed ?? 1) & ((1n << 64n) - 1n);
  const backend = backendOption(values.backend);
  const vmType = parseVmTypeOption(values['vm-type']);
  vfioOption(values.vfio);
  checkOutputFile(values.svg, '--svg');

  const missing = harnessReason(vmType, ['memory-attributes', ...(values.vfio ? (['vfio-device'] as const) : [])]);
  if (missing) {
    if (values['no-vm']) throw noVmRefusal(missing, ['guest', ...args]);
    console.error(`guestmem guest: not possible on this host (${missing}); running it inside the harness VM (guestmem vm)`);
    return runInVm(['guest', ...args]);
  }

  const host = new VmHost({ gpa: DEFAULT_GPA, vfio: values.vfio, backend, vmType, commandLine: ['guest', ...args] });
  const events: ConversionEvent[] = [];
  let probe: DmaProbe | undefined;
  let report: GuestSessionReport;
  try {
    const attributes = host.openBlock(BLOCK_SIZE, PAGE);
    const block = host.block!;
    const listener = host.makeListener('vfio');
    if (listener) await block.register(listener);
    if (host.assigned) probe = new DmaProbe(host.assigned);
    if (!values.json) {
      console.log(`guestmem guest ${program}: ${PROGRAM_LINE[program]}`);
      console.log(`  ${vcpus} vCPU${vcpus > 1 ? 's' : ''}, block ${formatBytes(BLOCK_SIZE)} at 0x${DEFAULT_GPA.toString(16)}, data area ${dataPages} pages at +${formatBytes(DATA_OFFSET)}` +
        (host.assigned ? `, VFIO ${host.assigned.bdf} via ${host.assigned.backend}` : ', no device'));
    }
    report = await runGuestSession({
      kvm: host.kvm,
      memory: host.memory,
      program,
      dataGpa: BigInt(DEFAULT_GPA + DATA_OFFSET),
      dataPages,
      vcpus,
      seed,
      iterations,
      probe,
      listener: listener ?? undefined,
      timeoutMs: timeout * 1000,
      threads: values.threads === true,
      onConsole: values.json ? undefined : (text) => process.stdout.write(text.replace(/^(?=.)/gm, '  guest| ')),
      onConversion: (event) => {
        events.push(event);
        if (!values.json && events.length <= SHOWN_CONVERSIONS) console.log(`  ${describeConversion(event)}`);
        if (!values.json && events.length === SHOWN_CONVERSIONS + 1) console.log('  … (the rest are counted below)');
      },
    });
    const { strip, pagesPerCell } = mapStrip(attributes);
    const summary = {
      program,
      ok: report.ok,
      vcpus: report.run.vcpus,
      conversions: report.run.conversions,
      exits: report.run.exits,
      guestChecks: report.guestChecks,
      hostChecks: report.hostChecks,
      problems: report.problems,
      elapsedMs: report.elapsedMs,
      usPerConversion: events.length > 0 ? (report.elapsedMs * 1000) / events.length : null,
      vfio: host.assigned ? { bdf: host.assigned.bdf, backend: host.assigned.backend, mappings: listener?.mappings ?? 0 } : null,
      map: { sharedPages: attributes.sharedGranules, privatePages: attributes.privateGranules, shared: attributes.runs('shared'), strip },
    };
    if (values.svg) {
      const history: ConversionRecord[] = events.map((e) => ({
        offset: Number(e.gpa) - block.gpa,
        size: Number(e.size),
        to: e.to,
        outcome: e.outcome === 'converted' ? 'done' : e.outcome,
      }));
      fs.writeFileSync(values.svg, mapSvg(attributes, history, `guest ${program}`));
    }
    if (values.json) printJson({ ...summary, ...failureJson(report.ok ? [] : [{ code: 'ERR_GUESTMEM_GUEST_FAILED', message: report.problems.join('; ') }]) });
    else {
      const { converted, rejected, failed } = report.run.conversions;
      console.log(`  conversions: ${converted} done, ${rejected} rejected, ${failed} failed and rolled back; ${report.run.exits} exits in ${report.elapsedMs.toFixed(0)} ms`);
      console.log(`  checks: guest ${report.guestChecks.passed} passed, ${report.guestChecks.failed.length} failed; host ${report.hostChecks.filter((c) => c.ok).length} passed, ${report.hostChecks.filter((c) => !c.ok).length} failed`);
      for (const check of dedupe(report.hostChecks)) console.log(`  ${check.ok ? 'ok  ' : 'FAIL'} ${check.name}: ${check.detail}`);
      console.log(`final map [${strip}]\n${mapLegend(pagesPerCell)}`);
      console.log(report.ok ? `guest ${program}: every check held` : `guest ${program}: FAILED\n  ${report.problems.join('\n  ')}`);
    }
  } finally {
    try {
      probe?.close();
    } finally {
      await host.shutdown();
    }
  }
  return report.ok ? 0 : 1;
}

const PROGRAM_LINE: Record<GuestProgramName, string> = {
  secret: 'the guest hides a secret in a private page, then talks to the host and the device through a shared one',
  random: 'random conversions by the guest, each checked against the host\'s model',
  loop: 'one page converted private and back, N times',
  requests: 'a table of MAP_GPA_RANGE requests',
  misbehave: 'a guest that spins, crashes, halts or uses a stray port',
  plug: 'the guest converts its data area and asks the host to unplug and plug it; the device follows',
  'secret-snp': 'secret as an SEV-SNP guest: page state changes and PVALIDATE through the GHCB MSR protocol',
  'secret-tdx': 'secret as a TD: MapGPA and port I/O through TDG.VP.VMCALL, pages accepted',
};

function describeConversion(event: ConversionEvent): string {
  const pages = Number(event.size / 4096n);
  const what = `vCPU ${event.vcpu} ${event.source === 'hypercall' ? 'MAP_GPA_RANGE' : 'memory fault'} [0x${event.gpa.toString(16)}, +${pages} page${pages === 1 ? '' : 's'}) → ${event.to}`;
  if (event.outcome === 'converted') return `${what}: done in ${(event.ns / 1000).toFixed(0)} µs`;
  return `${what}: ${event.outcome} (answered ${event.result}): ${event.reason}`;
}

/** One line per check name: the first failure, or the last success. */
function dedupe(checks: GuestSessionReport['hostChecks']): GuestSessionReport['hostChecks'] {
  const byName = new Map<string, GuestSessionReport['hostChecks'][number] & { count: number }>();
  for (const check of checks) {
    const seen = byName.get(check.name);
    if (!seen || (seen.ok && !check.ok)) byName.set(check.name, { ...check, count: (seen?.count ?? 0) + 1 });
    else seen.count++;
  }
  return [...byName.values()].map((c) => ({ ...c, detail: c.count > 1 ? `${c.detail} (${c.count} checks)` : c.detail }));
}
