// `guestmem simulate`, `guestmem run` and `guestmem replay`: a script or a QEMU trace, run
// through the tracker alone or against a real VM, then a report and a picture of the map.

import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { approximateBytes } from '../common/byte-range';
import { blockGeometry, type RamBlockAttributes } from '../tracker/ram-block-attributes';
import { parseScript, type ScriptOp } from './conversion-script';
import { DEFAULT_GPA, TrackerHost, VmHost, backendOption } from './hosts';
import { DEFAULT_MAX_INPUT_BYTES, MAX_INPUT_LIMIT, readInputText } from './input-file';
import { mapLegend, mapStrip, mapSvg } from './map-picture';
import { GUEST_PHYS_LIMIT, parseTrace, inferBlock, type ParsedTrace } from './qemu-trace';
import { printJson, progressBar } from './output';
import { checkScript, runScript, type ScriptHost, type ScriptReport } from './script-runner';
import type { Bytes } from '../common/byte-range';
import { bytesOf } from '../common/byte-range';
import { formatBytes, parseSize, subtractBytes } from './sizes';
import { UsageError } from './usage-error';
import { parseVmTypeOption, VM_TYPE_OPTION } from './vm-type-option';

/** A file option: a name that is not empty, in a place this process can write. */
function checkOutputFile(file: string | undefined, option: string): string | undefined {
  if (file === undefined) return undefined;
  if (file === '') throw new UsageError(`${option} needs a file name`);
  try {
    if (fs.existsSync(file)) {
      if (fs.statSync(file).isDirectory()) throw new Error('it is a directory');
      fs.accessSync(file, fs.constants.W_OK);
    } else {
      fs.accessSync(path.dirname(path.resolve(file)), fs.constants.W_OK);
    }
  } catch (error) {
    throw new UsageError(`${option} '${file}': cannot write there (${(error as Error).message})`);
  }
  return file;
}

/**
 * Writes the SVG after the results are out, so that a failure here loses nothing: it is
 * reported, and the command exits 1.
 */
function writeSvg(file: string | undefined, attributes: RamBlockAttributes, report: ScriptReport, title: string): number {
  if (file === undefined) return 0;
  try {
    fs.writeFileSync(file, mapSvg(attributes, report.history, title));
    return 0;
  } catch (error) {
    console.error(`guestmem: the results above stand, but writing the --svg picture failed: ${(error as Error).message}`);
    return 1;
  }
}

/** --max-input: the cap on a script or trace file. */
function maxInput(text: string | undefined): number {
  if (text === undefined) return DEFAULT_MAX_INPUT_BYTES;
  const value = Number(parseSize(text, '--max-input'));
  if (value <= 0 || value > MAX_INPUT_LIMIT) throw new UsageError(`--max-input must be between 1 and ${MAX_INPUT_LIMIT} bytes, got '${text}'`);
  return value;
}

/** A block's guest address: a page-aligned 64-bit value (KVM maps memslots in pages). */
function parseGpa(text: string): ReturnType<typeof parseSize> {
  const gpa = parseSize(text, '--gpa');
  if (BigInt(gpa) % BigInt(PAGE) !== 0n) throw new UsageError(`--gpa must be a multiple of ${PAGE} (a page), got '${text}'`);
  return gpa;
}

function summary(report: ScriptReport, attributes: RamBlockAttributes, extra: string[] = []): string {
  const { strip, pagesPerCell } = mapStrip(attributes);
  const lines = [
    `block: ${report.pages} pages of ${report.granule} bytes (${formatBytes(bytesOf(report.pages, report.granule))})`,
    `shared: ${attributes.sharedGranules} pages in ${report.shared.length} run${report.shared.length === 1 ? '' : 's'}; private: ${attributes.privateGranules} pages`,
    `conversions: ${report.ops} (${report.rejected} rejected, ${report.failed} failed) in ${(report.elapsedNs / 1e6).toFixed(3)} ms` +
      (report.ops > 0 ? `, ${Math.round(report.elapsedNs / report.ops)} ns each` : ''),
  ];
  for (const [id, listener] of Object.entries(report.listeners)) {
    const pages = listener.mapped.reduce((sum, [, count]) => sum + count, 0);
    lines.push(`listener ${id}: ${pages} pages mapped in ${listener.mapped.length} runs, ${listener.errors} double map/unmap errors`);
  }
  lines.push(...extra, ...report.failures.map((f) => `failed: ${f}`), `[${strip}]`, mapLegend(pagesPerCell));
  return lines.join('\n');
}

/** The JSON object of `simulate` (and the core of `run` and `replay`). */
function reportJson(report: ScriptReport): Record<string, unknown> {
  return {
    granule: report.granule,
    pages: report.pages,
    shared: report.shared,
    listeners: report.listeners,
    rejected: report.rejected,
    ops: report.ops,
    elapsedNs: report.elapsedNs,
  };
}

async function execute(ops: ScriptOp[], host: ScriptHost, label: string) {
  try {
    return await runScript(ops, host, progressBar(label, ops.length));
  } finally {
    await host.shutdown();
  }
}

const PAGE = 4096;
const OUTPUT_OPTIONS = { json: { type: 'boolean' }, svg: { type: 'string' }, 'max-input': { type: 'string' } } as const;
const VM_OPTIONS = { vfio: { type: 'string' }, backend: { type: 'string' }, gpa: { type: 'string' }, ...VM_TYPE_OPTION } as const;


export async function simulateCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: OUTPUT_OPTIONS, allowPositionals: true });
  if (positionals.length > 1) throw new UsageError(`give one script file, got ${positionals.length}`);
  const svg = checkOutputFile(values.svg, '--svg');
  const ops = parseScript(await readInputText(positionals[0] ?? '-', 'script', maxInput(values['max-input'])));
  const { report, attributes } = await execute(ops, new TrackerHost(), 'simulate');
  if (values.json) printJson(reportJson(report));
  else console.log(summary(report, attributes));
  return writeSvg(svg, attributes, report, 'guestmem simulate');
}

export async function runCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: { ...OUTPUT_OPTIONS, ...VM_OPTIONS }, allowPositionals: true });
  if (positionals.length > 1) throw new UsageError(`give one script file, got ${positionals.length}`);
  // Every usage error is found before the kernel is touched: options, the script, its block.
  const gpa = values.gpa !== undefined ? parseGpa(values.gpa) : DEFAULT_GPA;
  const backend = backendOption(values.backend);
  const vmType = parseVmTypeOption(values['vm-type']);
  const svg = checkOutputFile(values.svg, '--svg');
  const ops = parseScript(await readInputText(positionals[0], 'script', maxInput(values['max-input'])));
  checkScript(ops);
  const host = new VmHost({ gpa, vfio: values.vfio, backend, vmType, commandLine: ['run', ...args] });
  const { report, attributes } = await execute(ops, host, 'run');
  const stats = host.block?.stats.toJSON();
  if (values.json) printJson({ ...reportJson(report), failed: report.failed, failures: report.failures, vfio: values.vfio ?? null, stats });
  else console.log(summary(report, attributes, stats ? [`time by step (ns): ${JSON.stringify(stats.ns)}`] : []));
  return Math.max(report.failed > 0 ? 1 : 0, writeSvg(svg, attributes, report, 'guestmem run'));
}

/** Compares QEMU's recorded state changes with ours, conversion by conversion. */
function checkTrace(trace: ParsedTrace, results: Array<{ from: string; to: string } | null>, blockGpa: Bytes, offsetsKnown: boolean): string[] {
  const mismatches: string[] = [];
  trace.conversions.forEach((conversion, i) => {
    const ours = results[i];
    for (const check of conversion.checks) {
      const expectOffset = subtractBytes(conversion.gpa, blockGpa);
      const problems: string[] = [];
      if (!ours) problems.push('ours was rejected or failed');
      else {
        if (ours.from !== check.from) problems.push(`from ${check.from} in the trace, ${ours.from} here`);
        if (ours.to !== check.to) problems.push(`to ${check.to} in the trace, ${ours.to} here`);
      }
      if (BigInt(check.size) !== BigInt(conversion.size)) problems.push(`size 0x${check.size.toString(16)} vs 0x${conversion.size.toString(16)}`);
      if (offsetsKnown && BigInt(check.offset) !== BigInt(expectOffset)) problems.push(`offset 0x${check.offset.toString(16)} in the trace, 0x${expectOffset.toString(16)} here`);
      if (problems.length > 0) mismatches.push(`line ${check.line}: ${problems.join('; ')}`);
    }
  });
  return mismatches;
}

/** An inferred block above this size is refused when the trace touches little of it. */
const HUGE_INFERRED_BLOCK = 2 ** 40;

/**
 * Refuses an inferred block that is huge and sparse (two conversions far apart make a block
 * of everything between them, and its bitmap costs memory and time for nothing): the user
 * knows the block the trace is from.
 */
function checkInferredBlock(block: { gpa: number | bigint; size: number | bigint }, trace: ParsedTrace): void {
  const size = Number(block.size);
  if (size <= HUGE_INFERRED_BLOCK) return;
  let touched = 0;
  for (const c of trace.conversions) touched += Number(c.size);
  if (touched * 16 >= size) return;
  throw new UsageError(
    `the trace's conversions lie across ${approximateBytes(block.size)} from gpa 0x${block.gpa.toString(16)} but touch at most ${approximateBytes(touched)} of it; ` +
      'give the RAM block the trace is from with --gpa A --size S instead of inferring it',
  );
}

/** The block of a replay, checked like a script's block line, as an option's error. */
function checkReplayBlock(block: { size: number | bigint }, source: string): void {
  try {
    blockGeometry(block.size, { granularity: PAGE });
  } catch (error) {
    throw new UsageError(`${source}: ${(error as Error).message}`);
  }
}

export async function replayCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { ...OUTPUT_OPTIONS, ...VM_OPTIONS, size: { type: 'string' }, 'dry-run': { type: 'boolean' } },
    allowPositionals: true,
  });
  if (positionals.length > 1) throw new UsageError(`give one trace file, got ${positionals.length}`);
  // Every usage error is found before the kernel is touched (or the dry run starts).
  const backend = backendOption(values.backend);
  const vmType = parseVmTypeOption(values['vm-type']);
  if (values['dry-run'] && (values.vfio !== undefined || values.backend !== undefined || vmType !== undefined)) {
    const option = values.vfio !== undefined ? 'vfio' : values.backend !== undefined ? 'backend' : 'vm-type';
    throw new UsageError(`--${option} needs a real VM; --dry-run touches no kernel (drop one of them)`);
  }
  const svg = checkOutputFile(values.svg, '--svg');
  const trace = parseTrace(await readInputText(positionals[0], 'trace', maxInput(values['max-input'])));
  if (trace.conversions.length === 0) throw new UsageError(`no kvm_convert_memory events in the trace (${trace.skipped} other lines skipped)`);
  const notes: string[] = [];
  let block: { gpa: Bytes; size: Bytes };
  if (values.size !== undefined || values.gpa !== undefined) {
    if (values.size === undefined || values.gpa === undefined) throw new UsageError('give both --size and --gpa, or neither to infer the block from the trace');
    block = { gpa: parseGpa(values.gpa), size: parseSize(values.size, '--size') };
    checkReplayBlock(block, '--size');
  } else {
    // A real VM's block must lie below any guest's physical-address limit; a dry run's may be anywhere.
    block = inferBlock(trace, values['dry-run'] ? undefined : GUEST_PHYS_LIMIT)!;
    checkInferredBlock(block, trace);
    checkReplayBlock(block, 'the block inferred from the trace (give --gpa/--size)');
    notes.push(`block inferred from the trace's addresses: gpa 0x${block.gpa.toString(16)}, size ${formatBytes(block.size)} (give --gpa/--size to set it)`);
  }
  // A trace becomes a script: one block, a listener on all of it, a convert per event.
  const ops: ScriptOp[] = [{ op: 'block', line: 0, size: block.size, granule: 4096 }];
  if (values.vfio || values['dry-run']) ops.push({ op: 'listen', line: 0, id: values.vfio ? 'vfio' : 'recorder', offset: 0, size: block.size });
  for (const c of trace.conversions) ops.push({ op: 'convert', line: c.line, offset: subtractBytes(c.gpa, block.gpa), size: c.size, to: c.to });

  const results: Array<{ from: string; to: string } | null> = [];
  const host: ScriptHost = values['dry-run']
    ? new TrackerHost()
    : new VmHost({ gpa: block.gpa, vfio: values.vfio, backend, vmType, commandLine: ['replay', ...args] });
  const recordingHost: ScriptHost = {
    openBlock: (size, granule) => host.openBlock(size, granule),
    makeListener: (id, offset, size) => host.makeListener(id, offset, size),
    convert: async (offset, size, to) => {
      try {
        const result = (await host.convert(offset, size, to)) as { from: string; to: string };
        results.push(result);
        return result;
      } catch (error) {
        results.push(null);
        throw error;
      }
    },
    shutdown: () => host.shutdown(),
  };
  const { report, attributes } = await execute(ops, recordingHost, 'replay');
  const checked = trace.conversions.reduce((n, c) => n + c.checks.length, 0);
  const mismatches = checkTrace(trace, results, block.gpa, values.gpa !== undefined);
  if (values.json) {
    printJson({
      ...reportJson(report), failed: report.failed, failures: report.failures, block, inferred: values.gpa === undefined,
      skippedLines: trace.skipped, checked, mismatches, dryRun: values['dry-run'] ?? false,
    });
  } else {
    notes.push(`${trace.skipped} other trace lines skipped; ${checked} state changes checked against QEMU's, ${mismatches.length} mismatches`);
    console.log(summary(report, attributes, [...notes, ...mismatches.slice(0, 20).map((m) => `mismatch: ${m}`)]));
  }
  return Math.max(report.failed > 0 || mismatches.length > 0 ? 1 : 0, writeSvg(svg, attributes, report, 'guestmem replay'));
}
