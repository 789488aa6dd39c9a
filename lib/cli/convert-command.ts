// `guestmem convert`: one VM, one block, optionally a device's VFIO listener; the requested
// conversions in order; the result of each and where the time went.

import { toGranuleRange, type Bytes } from '../common/byte-range';
import { isRejection } from '../common/errors';
import { nativeCalls } from '../common/native';
import { blockGeometry } from '../tracker/ram-block-attributes';
import type { PageState } from '../tracker/page-state';
import { VmHost, backendOption, vfioOption } from './hosts';
import { mapLegend, mapStrip } from './map-picture';
import { parseCommand, type CommandSpec } from './command-spec';
import { printJson } from './output';
import { formatBytes, parseRange, parseSize } from './sizes';
import { UsageError } from './usage-error';
import { parseVmTypeOption, VM_TYPE_OPTION } from './vm-type-option';
import { checkGuestBlock } from './guest-block';

const PAGE = 4096;

/**
 * The block and every range, checked as the tracker will check them, before the kernel is
 * touched: a zero, unaligned or too large --size, an unaligned --gpa, an empty range or one
 * outside the block is a usage error (exit 2), not a failed ioctl.
 */
function checkBlockOptions(size: number | bigint, gpa: number | bigint, ranges: Array<{ offset: number | bigint; size: number | bigint }>): void {
  let granules: number;
  try {
    granules = blockGeometry(size, { granularity: PAGE }).granules;
  } catch (error) {
    throw new UsageError(`--size: ${(error as Error).message}`);
  }
  if (BigInt(gpa) % BigInt(PAGE) !== 0n) throw new UsageError(`--gpa must be a multiple of ${PAGE} (a page), got 0x${gpa.toString(16)}`);
  checkGuestBlock(gpa, size, '--gpa/--size');
  for (const range of ranges) {
    try {
      toGranuleRange(range.offset, range.size, PAGE, granules, '--range');
    } catch (error) {
      throw new UsageError((error as Error).message);
    }
  }
}

const CONVERT_OPTIONS = {
  size: { type: 'string', required: true, value: 'S', help: 'the RAM block\'s size (required)' },
  gpa: { type: 'string', required: true, value: 'A', help: 'the block\'s guest physical address, page-aligned (required)' },
  range: { type: 'string', required: true, multiple: true, value: 'OFF+LEN', help: 'a range to convert, offsets within the block, page-aligned (one or more)' },
  to: { type: 'string', required: true, multiple: true, value: 'private|shared', help: 'the state to convert to: one for every --range, or one each' },
  vfio: { type: 'string', value: 'BDF', help: 'attach the VFIO DMA listener of this device (bound to vfio-pci)' },
  backend: { type: 'string', value: 'auto|type1|iommufd', help: 'the DMA back end for --vfio (default auto: iommufd where present, else type1)' },
  json: { type: 'boolean', help: 'print the results as one JSON object' },
  ...VM_TYPE_OPTION,
} as const;

export const CONVERT: CommandSpec<typeof CONVERT_OPTIONS> = {
  name: 'convert',
  summary: 'make a VM with one RAM block and convert ranges of it',
  options: CONVERT_OPTIONS,
  description: `Makes a VM with private memory (--vm-type) with one RAM block of S bytes at guest address A (all private, as
KVM starts it), optionally attaches the device's VFIO DMA listener, converts each range
(offsets within the block) in order, and prints each result with its timing.
Sizes: 4096, 0x1000, 64K, 16M, 2G. Every option is checked before the kernel is touched.
Exits 1 if a conversion fails or is rejected.`,
  examples: [
    'guestmem convert --size 64M --gpa 16M --range 1M+64K --to shared',
    'guestmem convert --size 64M --gpa 16M --vfio 0000:00:01.0 --range 0+2M --to shared --range 0+4K --to private',
  ],
};

export async function convertCommand(args: string[]): Promise<number> {
  // Each result reports the crossings into C++ its conversion made.
  nativeCalls.enabled = true;
  const { values } = parseCommand(CONVERT, args);
  if (!values.size || !values.gpa) throw new UsageError('convert needs --size and --gpa (example: --size 64M --gpa 16M)');
  const ranges = (values.range ?? []).map((r) => parseRange(r, '--range'));
  const targets = values.to ?? [];
  if (ranges.length === 0) throw new UsageError('give at least one --range OFF+LEN (offsets within the block)');
  if (targets.length !== 1 && targets.length !== ranges.length) throw new UsageError('give one --to for all ranges, or one per --range');
  for (const to of targets) if (to !== 'private' && to !== 'shared') throw new UsageError(`--to must be private or shared, got '${to}'`);
  const size = parseSize(values.size, '--size');
  const gpa = parseSize(values.gpa, '--gpa');
  const backend = backendOption(values.backend);
  const vmType = parseVmTypeOption(values['vm-type']);
  vfioOption(values.vfio);
  checkBlockOptions(size, gpa, ranges);

  const host = new VmHost({ gpa, vfio: values.vfio, backend, vmType, commandLine: ['convert', ...args] });
  const results: Array<Record<string, unknown>> = [];
  let failed = false;
  try {
    const attributes = host.openBlock(size, 4096);
    const listener = host.makeListener('vfio');
    if (listener) await host.block!.register(listener);
    for (const [i, range] of ranges.entries()) {
      const to = (targets[i] ?? targets[0]) as PageState;
      const calls = nativeCalls.count;
      const started = process.hrtime.bigint();
      try {
        const result = await host.convert(range.offset, range.size, to);
        results.push({ ...range, ok: true, ...result, ns: Number(process.hrtime.bigint() - started), nativeCalls: nativeCalls.count - calls });
      } catch (error) {
        failed = true;
        results.push({ ...range, to, ok: false, outcome: isRejection(error) ? 'rejected' : 'failed', code: (error as { code?: string }).code, error: (error as Error).message });
      }
    }
    const { strip, pagesPerCell } = mapStrip(attributes);
    const summary = {
      vmType: host.vmType,
      block: { gpa, size, sharedPages: attributes.sharedGranules, privatePages: attributes.privateGranules },
      vfio: host.assigned ? { bdf: host.assigned.bdf, backend: host.assigned.backend, mappings: listener?.mappings ?? 0 } : null,
      conversions: results,
      stats: host.block!.stats.toJSON(),
      map: { shared: attributes.runs('shared'), strip },
    };
    if (values.json) printJson(summary);
    else {
      console.log(`${host.vmType} VM, block at 0x${gpa.toString(16)}, ${formatBytes(size)}${host.assigned ? `, VFIO ${host.assigned.bdf} via ${host.assigned.backend}` : ''}`);
      for (const r of results) {
        console.log(r.ok
          ? `  ${r.to} [0x${(r.offset as Bytes).toString(16)}, +${formatBytes(r.size as Bytes)}): from ${r.from}, ${r.changed} pages changed in ${((r.ns as number) / 1000).toFixed(1)} µs, ${r.nativeCalls} native calls`
          : `  ${r.to} [0x${(r.offset as Bytes).toString(16)}, +${formatBytes(r.size as Bytes)}): ${r.outcome === 'rejected' ? 'REJECTED' : 'FAILED'}: ${r.error}`);
      }
      console.log(`shared ${attributes.sharedGranules} pages, private ${attributes.privateGranules}${listener ? `, ${listener.mappings} DMA mappings held` : ''}`);
      console.log(`time by step (ns): ${JSON.stringify(summary.stats.ns)}`);
      console.log(`[${strip}]\n${mapLegend(pagesPerCell)}`);
    }
  } finally {
    await host.shutdown();
  }
  return failed ? 1 : 0;
}
