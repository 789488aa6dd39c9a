// `guestmem demo`: the whole story on a real kernel, with proofs. A SW-protected VM with one
// RAM block, a VFIO listener on the edu device, a bounce-buffer window shared with it, DMA
// through the window, part of it converted private (DMA no longer reaches it), converted
// back (DMA reaches it again). Exits 1 if any proof fails.

import { parseArgs } from 'node:util';
import { AssignedDevice } from '../assigned-device';
import { DmaProbe } from '../dma-probe';
import { findEduDevice } from '../edu-device';
import { GuestMemory } from '../guest-memory';
import { Kvm } from '../kvm';
import type { RamBlock } from '../ram-block';
import { VfioDmaListener } from '../vfio-dma-listener';
import { mapLegend, mapStrip } from './map-picture';
import { printJson } from './output';
import { formatBytes } from './sizes';
import { needsVm, runInVm } from './vm-command';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK_GPA = 16 * MiB;
const BLOCK_SIZE = 4 * MiB;
const WINDOW = { offset: MiB, size: 64 * KiB };
const TURNED = { offset: MiB, size: 16 * KiB };

const PAGE = 4096;

interface Step {
  step: string;
  ok: boolean;
  ms: number;
  detail: string;
}

export async function demoCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: { json: { type: 'boolean' }, 'no-vm': { type: 'boolean' } } });
  const missing = needsVm(['sw-protected-vm', 'memory-attributes', 'vfio-device']);
  if (missing && !values['no-vm']) {
    console.error(`guestmem demo: not possible on this host (${missing}); running it inside the harness VM (guestmem vm)`);
    return runInVm(['demo', ...args]);
  }

  const steps: Step[] = [];
  const kvm = Kvm.open();
  const memory = new GuestMemory(kvm.createVm('sw-protected'));
  const parts: { block?: RamBlock; assigned?: AssignedDevice; listener?: VfioDmaListener; probe?: DmaProbe } = {};
  const window = `[0x${(BLOCK_GPA + WINDOW.offset).toString(16)}, +${formatBytes(WINDOW.size)})`;
  const turned = `[0x${(BLOCK_GPA + TURNED.offset).toString(16)}, +${formatBytes(TURNED.size)})`;

  // Each step returns [proof held, what happened]; the demo stops at the first that fails.
  const script: Array<[string, () => Promise<[boolean, string]>]> = [
    ['add-block', async () => {
      parts.block = memory.addBlock({ gpa: BLOCK_GPA, size: BLOCK_SIZE, name: 'guest-ram' });
      return [parts.block.privatePages === BLOCK_SIZE / PAGE, `SW-protected VM, ${formatBytes(BLOCK_SIZE)} at 0x${BLOCK_GPA.toString(16)}: guest_memfd memslot, all private`];
    }],
    ['attach-vfio', async () => {
      const edu = findEduDevice();
      if (!edu) return [false, 'no edu device bound to vfio-pci'];
      parts.assigned = AssignedDevice.open(edu.bdf);
      parts.listener = new VfioDmaListener(parts.assigned.dma, { sharedAddress: parts.block!.shared.address, gpa: BigInt(BLOCK_GPA) });
      await parts.block!.register(parts.listener);
      parts.probe = new DmaProbe(parts.assigned);
      return [true, `edu ${edu.bdf} through ${parts.assigned.backend}; its DMA listener registered on the block`];
    }],
    ['share-window', async () => {
      const result = await parts.block!.convert(BLOCK_GPA + WINDOW.offset, WINDOW.size, 'shared');
      return [parts.listener!.mappings === WINDOW.size / PAGE, `bounce buffer ${window} shared: ${result.changed} pages, ${parts.listener!.mappings} DMA mappings`];
    }],
    ['dma-shared', async () => {
      const reached = await parts.probe!.canRead(parts.block!, WINDOW.offset, 0x5a);
      return [reached, reached ? 'the device read the shared window by DMA' : 'the device could NOT read the shared window'];
    }],
    ['convert-private', async () => {
      const result = await parts.block!.convert(BLOCK_GPA + TURNED.offset, TURNED.size, 'private');
      return [true, `${turned} converted private: ${result.changed} pages unmapped, shared backing freed`];
    }],
    ['dma-private', async () => {
      const reached = await parts.probe!.canRead(parts.block!, TURNED.offset, 0xa5);
      const rest = await parts.probe!.canRead(parts.block!, TURNED.offset + TURNED.size, 0x3c);
      return [!reached && rest, `${reached ? 'the device STILL reads the private page' : 'the device no longer reaches the private page'}; ${rest ? 'the rest of the window is still reachable' : 'the rest of the window is NOT reachable'}`];
    }],
    ['convert-back', async () => {
      const result = await parts.block!.convert(BLOCK_GPA + TURNED.offset, TURNED.size, 'shared');
      return [true, `${turned} shared again: ${result.changed} pages mapped, guest_memfd backing freed`];
    }],
    ['dma-restored', async () => {
      const reached = await parts.probe!.canRead(parts.block!, TURNED.offset, 0x69);
      return [reached, reached ? 'the device reaches the page again' : 'the device does NOT reach the page again'];
    }],
  ];

  let report: Record<string, unknown>;
  try {
    for (const [name, action] of script) {
      const started = performance.now();
      let outcome: [boolean, string];
      try {
        outcome = await action();
      } catch (error) {
        outcome = [false, (error as Error).message];
      }
      const step = { step: name, ok: outcome[0], ms: performance.now() - started, detail: outcome[1] };
      steps.push(step);
      if (!values.json) console.log(`${step.ok ? 'ok  ' : 'FAIL'} ${step.step.padEnd(16)} ${step.ms.toFixed(2).padStart(8)} ms  ${step.detail}`);
      if (!step.ok) break;
    }
    const block = parts.block;
    report = {
      ok: steps.length === script.length && steps.every((s) => s.ok),
      backend: parts.assigned?.backend ?? null,
      steps,
      map: block ? { shared: block.attributes.runs('shared'), sharedPages: block.sharedPages, privatePages: block.privatePages, strip: mapStrip(block.attributes).strip } : null,
      stats: block?.stats.toJSON() ?? null,
    };
  } finally {
    try {
      await memory.shutdown();
      parts.probe?.close();
    } finally {
      parts.assigned?.close();
      kvm.close();
    }
  }
  if (values.json) printJson(report);
  else if (parts.block) {
    const { strip, pagesPerCell } = mapStrip(parts.block.attributes);
    console.log(`\nfinal map of guest-ram [${strip}]\n${mapLegend(pagesPerCell)}`);
    console.log(report.ok ? 'demo: every proof held' : 'demo: a proof FAILED');
  }
  return report.ok ? 0 : 1;
}
