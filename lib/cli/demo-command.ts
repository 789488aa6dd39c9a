// `guestmem demo`: the whole story on a real kernel, with the guest in charge. A
// SW-protected VM with one RAM block and the edu device's VFIO listener; a vCPU runs the
// `secret` guest program, which converts a page private with the MAP_GPA_RANGE hypercall
// and hides a secret in it (neither the memfd nor the device's DMA can see it), then
// converts it shared and leaves a message that the device reads by DMA; last, it asks for
// the page to be unplugged (virtio-mem's request: the memfd gives it back, the device loses
// it) and plugged back (the device reaches it again). Each step is timed; exits 1 if any
// proof fails.

import { AssignedDevice } from '../vfio/assigned-device';
import { DmaProbe } from '../vmm/dma-probe';
import { findEduDevice } from '../vfio/edu-device';
import { GuestMemory } from '../memory/guest-memory';
import { Kvm } from '../kvm/kvm';
import type { RamBlock } from '../memory/ram-block';
import { VfioDmaListener } from '../vfio/vfio-dma-listener';
import { runGuestSession } from '../vmm/guest-session';
import type { ConversionEvent } from '../vmm/vmm-loop';
import { mapLegend, mapStrip } from './map-picture';
import { printJson } from './output';
import { formatBytes } from './sizes';
import { runInVm } from './vm-command';
import { harnessReason, noVmRefusal, parseVmTypeOption, resolveVmType, VM_TYPE_OPTION } from './vm-type-option';
import { vmTypeName } from '../kvm/vm-types';
import { parseCommand, type CommandSpec } from './command-spec';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK_GPA = 16 * MiB;
const BLOCK_SIZE = 4 * MiB;
const PAGE_GPA = BigInt(BLOCK_GPA + MiB);

interface Step {
  step: string;
  ok: boolean;
  ms: number;
  detail: string;
}

const CHECK_STEPS: Record<string, string> = {
  'memfd-hides-secret': 'memfd-blind',
  'device-blocked': 'dma-private',
  'memfd-shows-message': 'memfd-sees',
  'device-reads-message': 'dma-shared',
  'memfd-gives-back': 'memfd-freed',
  'device-loses-unplugged': 'dma-unplugged',
  'device-reaches-plugged': 'dma-plugged',
};

const DEMO_OPTIONS = {
  json: { type: 'boolean', help: 'print the steps and the final map as one JSON object' },
  'no-vm': { type: 'boolean', help: 'fail on a host that lacks what the demo needs, instead of running in the harness VM' },
  ...VM_TYPE_OPTION,
} as const;

export const DEMO: CommandSpec<typeof DEMO_OPTIONS> = {
  name: 'demo',
  summary: 'the whole story with proofs: a guest hides a page from the host and the device',
  options: DEMO_OPTIONS,
  description: `A SW-protected VM with one RAM block and a VFIO DMA listener on the edu device (iommufd
where present); a vCPU runs the secret guest program, which converts a page private with
KVM_HC_MAP_GPA_RANGE and hides a secret there, then shares it again. The host proves that
neither the memfd nor the device's DMA sees the secret, and that both see the message
once shared; then the guest unplugs the page (the memfd gives it back, the device loses
it) and plugs it back (the device reaches it again). Each step is timed, then the final map. Runs inside the harness VM when this
host lacks what it needs. Exits 1 if a proof fails.`,
  examples: ['guestmem demo', 'guestmem demo --json'],
};

export async function demoCommand(args: string[]): Promise<number> {
  const { values } = parseCommand(DEMO, args);
  const vmType = parseVmTypeOption(values['vm-type']);
  const missing = harnessReason(vmType, ['memory-attributes', 'vfio-device']);
  if (missing && values['no-vm']) throw noVmRefusal(missing, ['demo', ...args]);
  if (missing) {
    console.error(`guestmem demo: not possible on this host (${missing}); running it inside the harness VM (guestmem vm)`);
    return runInVm(['demo', ...args]);
  }

  const steps: Step[] = [];
  let last = performance.now();
  const record = (step: string, ok: boolean, detail: string) => {
    const now = performance.now();
    const entry = { step, ok, ms: now - last, detail };
    last = now;
    steps.push(entry);
    if (!values.json) console.log(`${ok ? 'ok  ' : 'FAIL'} ${step.padEnd(16)} ${entry.ms.toFixed(2).padStart(8)} ms  ${detail}`);
    return ok;
  };

  const kvm = Kvm.open();
  let memory: GuestMemory;
  let typeName: string;
  try {
    const type = resolveVmType(kvm, vmType, ['demo', ...args]);
    typeName = vmTypeName(type);
    memory = new GuestMemory(kvm.createVm(type));
  } catch (error) {
    kvm.close();
    throw error;
  }
  const parts: { block?: RamBlock; assigned?: AssignedDevice; listener?: VfioDmaListener; probe?: DmaProbe } = {};
  const page = `[0x${PAGE_GPA.toString(16)}, +4 KiB)`;
  let guestConsole = '';
  try {
    parts.block = memory.addBlock({ gpa: BLOCK_GPA, size: BLOCK_SIZE, name: 'guest-ram' });
    parts.block.stats.timing = true;
    if (record('add-block', parts.block.privatePages === BLOCK_SIZE / 4096, `${typeName} VM, ${formatBytes(BLOCK_SIZE)} at 0x${BLOCK_GPA.toString(16)}: guest_memfd memslot, all private`)) {
      const edu = findEduDevice();
      if (!edu) record('attach-vfio', false, 'no edu device bound to vfio-pci');
      else {
        parts.assigned = AssignedDevice.open(edu.bdf);
        parts.listener = new VfioDmaListener(parts.assigned.dma, { sharedAddress: parts.block.shared.address, gpa: BigInt(BLOCK_GPA) });
        await parts.block.register(parts.listener);
        parts.probe = new DmaProbe(parts.assigned);
        record('attach-vfio', true, `edu ${edu.bdf} through ${parts.assigned.backend}; its DMA listener registered on the block`);
        const conversion = (event: ConversionEvent) => {
          const ok = event.outcome === 'converted';
          const mappings = parts.listener!.mappings;
          if (event.to === 'private') record('guest-private', ok, `the guest's MAP_GPA_RANGE turned ${page} private: KVM attributes set, DMA unmapped, memfd page freed (${mappings} mappings left)`);
          else record('guest-shared', ok, `the guest's MAP_GPA_RANGE turned ${page} shared again: DMA mapped, guest_memfd page freed (${mappings} mappings)`);
        };
        const report = await runGuestSession({
          kvm, memory, program: 'secret', dataGpa: PAGE_GPA, dataPages: 1, probe: parts.probe, listener: parts.listener, timeoutMs: 300_000,
          // Text arrives as the guest writes it (a byte per exit where KVM emulates string
          // I/O): the boot step is its first whole line.
          onConsole: (text) => {
            const before = guestConsole.indexOf('\n');
            guestConsole += text;
            const line = guestConsole.indexOf('\n');
            if (before < 0 && line >= 0) record('guest-boot', true, `a vCPU runs the secret program in long mode from a shared boot region; it says "${guestConsole.slice(0, line)}"`);
          },
          onConversion: conversion,
          onCheck: (check) => record(CHECK_STEPS[check.name] ?? check.name, check.ok, check.detail),
        });
        const guestOk = report.guestChecks.failed.length === 0 && report.run.vcpus.every((v) => 'status' in v && v.status === 0);
        record('guest-exit', guestOk, guestOk
          ? `the guest read its secret back while private and the host's note once shared, had the page unplugged and plugged back (${report.guestChecks.passed} guest checks), and exited 0`
          : `the guest: ${report.problems.join('; ')}`);
      }
    }
  } catch (error) {
    record('error', false, (error as Error).message);
  } finally {
    try {
      parts.probe?.close();
      await memory.shutdown();
    } finally {
      parts.assigned?.close();
      kvm.close();
    }
  }
  const block = parts.block;
  const expected = ['add-block', 'attach-vfio', 'guest-boot', 'guest-private', 'memfd-blind', 'dma-private', 'guest-shared', 'memfd-sees', 'dma-shared', 'memfd-freed', 'dma-unplugged', 'dma-plugged', 'guest-exit'];
  const ok = steps.every((s) => s.ok) && expected.every((name) => steps.some((s) => s.step === name));
  const report = {
    ok,
    backend: parts.assigned?.backend ?? null,
    steps,
    guestConsole,
    map: block ? { shared: block.attributes.runs('shared'), sharedPages: block.sharedPages, privatePages: block.privatePages, strip: mapStrip(block.attributes).strip } : null,
    stats: block?.stats.toJSON() ?? null,
  };
  if (values.json) printJson(report);
  else if (block) {
    const { strip, pagesPerCell } = mapStrip(block.attributes);
    console.log(`\nfinal map of guest-ram [${strip}]\n${mapLegend(pagesPerCell)}`);
    console.log(ok ? 'demo: every proof held' : 'demo: a proof FAILED');
  }
  return ok ? 0 : 1;
}
