// `guestmem demo`: the whole story on a real kernel, with proofs. A SW-protected VM with one
// RAM block, a VFIO listener on the edu device, a bounce-buffer window shared with it, DMA
// through the window, part of it converted private (DMA no longer reaches it), converted
// back (DMA reaches it again). Exits 1 if any proof fails.

import { parseArgs } from 'node:util';
import { AssignedDevice } from '../assigned-device';
import { DmaProbe } from '../dma-probe';
import { EDU_DEVICE, EDU_VENDOR } from '../edu-device';
import { GuestMemory } from '../guest-memory';
import { Kvm } from '../kvm';
import type { RamBlock } from '../ram-block';
import { VfioDmaListener } from '../vfio-dma-listener';
import { vfioPciDevices } from '../vfio-sysfs';
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
  const log = (step: Step) => {
    steps.push(step);
    if (!values.json) console.log(`${step.ok ? 'ok  ' : 'FAIL'} ${step.step.padEnd(16)} ${step.ms.toFixed(2).padStart(8)} ms  ${step.detail}`);
  };
  async function run(step: string, action: () => Promise<string | [boolean, string]> | string | [boolean, string]): Promise<boolean> {
    const started = performance.now();
    try {
      const outcome = await action();
      const [ok, detail] = typeof outcome === 'string' ? [true, outcome] : outcome;
      log({ step, ok, ms: performance.now() - started, detail });
      return ok;
    } catch (error) {
      log({ step, ok: false, ms: performance.now() - started, detail: (error as Error).message });
      return false;
    }
  }

  const kvm = Kvm.open();
  const memory = new GuestMemory(kvm.createVm('sw-protected'));
  let assigned: AssignedDevice | null = null;
  let probe: DmaProbe | null = null;
  let listener: VfioDmaListener | null = null;
  let block: RamBlock | null = null;
  const window = () => `[0x${(BLOCK_GPA + WINDOW.offset).toString(16)}, +${formatBytes(WINDOW.size)})`;
  const turned = `[0x${(BLOCK_GPA + TURNED.offset).toString(16)}, +${formatBytes(TURNED.size)})`;
  try {
    await run('add-block', () => {
      block = memory.addBlock({ gpa: BLOCK_GPA, size: BLOCK_SIZE, name: 'guest-ram' });
      return `SW-protected VM, ${formatBytes(BLOCK_SIZE)} at 0x${BLOCK_GPA.toString(16)}: guest_memfd memslot, all private`;
    }) &&
      (await run('attach-vfio', async () => {
        const edu = vfioPciDevices().find((d) => d.vendor === EDU_VENDOR && d.device === EDU_DEVICE);
        if (!edu) return [false, 'no edu device bound to vfio-pci'];
        assigned = AssignedDevice.open(edu.bdf);
        listener = new VfioDmaListener(assigned.dma, { sharedAddress: block!.shared.address, gpa: BigInt(BLOCK_GPA) });
        await block!.register(listener);
        probe = new DmaProbe(assigned);
        return `edu ${edu.bdf} through ${assigned.backend}; its DMA listener registered on the block`;
      })) &&
      (await run('share-window', async () => {
        const result = await block!.convert(BLOCK_GPA + WINDOW.offset, WINDOW.size, 'shared');
        return [listener!.mappings === WINDOW.size / 4096, `bounce buffer ${window()} shared: ${result.changed} pages, ${listener!.mappings} DMA mappings`];
      })) &&
      (await run('dma-shared', async () => {
        const reached = await probe!.canRead(block!, WINDOW.offset, 0x5a);
        return [reached, reached ? 'the device read the shared window by DMA' : 'the device could NOT read the shared window'];
      })) &&
      (await run('convert-private', async () => {
        const result = await block!.convert(BLOCK_GPA + TURNED.offset, TURNED.size, 'private');
        return `${turned} converted private: ${result.changed} pages unmapped, shared backing freed`;
      })) &&
      (await run('dma-private', async () => {
        const reached = await probe!.canRead(block!, TURNED.offset, 0xa5);
        const rest = await probe!.canRead(block!, TURNED.offset + TURNED.size, 0x3c);
        return [!reached && rest, `${reached ? 'the device STILL reads the private page' : 'the device no longer reaches the private page'}; ${rest ? 'the rest of the window is still reachable' : 'the rest of the window is NOT reachable'}`];
      })) &&
      (await run('convert-back', async () => {
        const result = await block!.convert(BLOCK_GPA + TURNED.offset, TURNED.size, 'shared');
        return `${turned} shared again: ${result.changed} pages mapped, guest_memfd backing freed`;
      })) &&
      (await run('dma-restored', async () => {
        const reached = await probe!.canRead(block!, TURNED.offset, 0x69);
        return [reached, reached ? 'the device reaches the page again' : 'the device does NOT reach the page again'];
      }));
  } finally {
    const finalBlock = block as RamBlock | null;
    const { strip, pagesPerCell } = finalBlock ? mapStrip(finalBlock.attributes) : { strip: '', pagesPerCell: 0 };
    const ok = steps.length === 8 && steps.every((s) => s.ok);
    const stats = finalBlock?.stats.toJSON() ?? null;
    const map = finalBlock ? { shared: finalBlock.attributes.runs('shared'), sharedPages: finalBlock.sharedPages, privatePages: finalBlock.privatePages, strip } : null;
    const backend = (assigned as AssignedDevice | null)?.backend ?? null;
    if (listener && finalBlock) await finalBlock.unregister(listener).catch(() => undefined);
    (probe as DmaProbe | null)?.close();
    memory.close();
    (assigned as AssignedDevice | null)?.close();
    kvm.close();
    if (values.json) printJson({ ok, backend, steps, map, stats });
    else {
      console.log(`\nfinal map of guest-ram [${strip}]\n${mapLegend(pagesPerCell)}`);
      console.log(ok ? 'demo: every proof held' : 'demo: a proof FAILED');
    }
    process.exitCode = ok ? 0 : 1;
  }
  return process.exitCode as number;
}
