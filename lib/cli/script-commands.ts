// `guestmem simulate`, `guestmem run` and `guestmem replay`: a script or a QEMU trace, run
// through the tracker alone or against a real VM, then a report and a picture of the map.

import fs from 'node:fs';
import path from 'node:path';
import { approximateBytes } from '../common/byte-range';
import { blockGeometry, type RamBlockAttributes } from '../tracker/ram-block-attributes';
import { parseScript, type ScriptOp } from './conversion-script';
import { DEFAULT_GPA, TrackerHost, VmHost, backendOption, vfioOption } from './hosts';
import { DEFAULT_MAX_INPUT_BYTES, MAX_INPUT_LIMIT, readInputText } from './input-file';
import { mapLegend, mapStrip, mapSvg } from './map-picture';
import { checkGuestBlock } from './guest-block';
import { GUEST_PHYS_LIMIT, parseTrace, inferBlock, isConvertible, type ParsedTrace } from './qemu-trace';
import { parseCommand, type CommandSpec } from './command-spec';
import { failureJson, printJson, progressBar, type JsonFailure } from './output';
import { checkScript, runScript, type ScriptHost, type ScriptReport } from './script-runner';
import type { Bytes } from '../common/byte-range';
import { bytesOf } from '../common/byte-range';
import { formatBytes, parseSize, subtractBytes } from './sizes';
import { UsageError } from './usage-error';
import { parseVmTypeOption, VM_TYPE_OPTION } from './vm-type-option';

/** A file option: a name that is not empty, in a place this process can write (every command checks its --svg so, up front). */
export function checkOutputFile(file: string | undefined, option: string): string | undefined {
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
 * Writes the --svg picture (before the report is printed, so that a --json report can carry
 * its failure); a failure is said on stderr too, and returned for the report's `error`.
 */
function writeSvg(file: string | undefined, attributes: RamBlockAttributes, report: ScriptReport, title: string): JsonFailure[] {
  if (file === undefined) return [];
  try {
    fs.writeFileSync(file, mapSvg(attributes, report.history, title));
    return [];
  } catch (error) {
    const message = `the results stand, but writing the --svg picture failed: ${(error as Error).message}`;
    console.error(`guestmem: ${message}`);
    const code = (error as { code?: unknown }).code;
    return [{ code: typeof code === 'string' ? code : 'ERR_GUESTMEM_FAILED', message }];
  }
}

/** The report's failed conversions as a --json failure (exit 1). */
function conversionFailures(report: ScriptReport): JsonFailure[] {
  return report.failed > 0 ? [{ code: 'ERR_GUESTMEM_CONVERSION_FAILED', message: `${report.failed} conversion(s) failed: ${report.failures.slice(0, 3).join('; ')}` }] : [];
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
  const { strip, pagesPerCell } = mapStrip(attributes, 64, report.unplugged);
  const unpluggedPages = report.unplugged.reduce((sum, [, count]) => sum + count, 0);
  const lines = [
    `block: ${report.pages} pages of ${report.granule} bytes (${formatBytes(bytesOf(report.pages, report.granule))})`,
    `shared: ${attributes.sharedGranules} pages in ${report.shared.length} run${report.shared.length === 1 ? '' : 's'}; private: ${attributes.privateGranules} pages`,
    `conversions: ${report.ops} (${report.rejected} rejected, ${report.failed} failed) in ${(report.elapsedNs / 1e6).toFixed(3)} ms` +
      (report.ops > 0 ? `, ${Math.round(report.elapsedNs / report.ops)} ns each` : ''),
  ];
  if (report.plugs > 0) lines.push(`plugs and unplugs: ${report.plugs}; unplugged: ${unpluggedPages} pages in ${report.unplugged.length} run${report.unplugged.length === 1 ? '' : 's'}`);
  for (const [id, listener] of Object.entries(report.listeners)) {
    const pages = listener.mapped.reduce((sum, [, count]) => sum + count, 0);
    lines.push(`listener ${id}: ${pages} pages mapped in ${listener.mapped.length} runs, ${listener.errors} double map/unmap errors`);
  }
  lines.push(...extra, ...report.failures.map((f) => `failed: ${f}`), `[${strip}]`, mapLegend(pagesPerCell, report.plugs > 0));
  return lines.join('\n');
}

/** The JSON object of `simulate` (and the core of `run` and `replay`). */
function reportJson(report: ScriptReport): Record<string, unknown> {
  return {
    granule: report.granule,
    pages: report.pages,
    shared: report.shared,
    unplugged: report.unplugged,
    listeners: report.listeners,
    rejected: report.rejected,
    ops: report.ops,
    plugs: report.plugs,
    elapsedNs: report.elapsedNs,
  };
}

async function execute(ops: ScriptOp[], host: ScriptHost, label: string, history: boolean) {
  try {
    return await runScript(ops, host, { onProgress: progressBar(label, ops.length), history });
  } finally {
    await host.shutdown();
  }
}

const PAGE = 4096;
const OUTPUT_OPTIONS = {
  json: { type: 'boolean', help: 'print the report as one JSON object' },
  svg: { type: 'string', value: 'FILE', help: 'draw the map and every conversion over time (checked before the run, written after)' },
  'max-input': { type: 'string', value: 'SIZE', help: 'the largest input read (default 64M)' },
  history: { type: 'boolean', help: 'list every conversion and its outcome (in --json: "history"); without it or --svg no record per conversion is kept' },
} as const;
const VM_OPTIONS = {
  vfio: { type: 'string', value: 'BDF', help: 'attach the VFIO DMA listener of this device on each listened section' },
  backend: { type: 'string', value: 'auto|type1|iommufd', help: 'the DMA back end for --vfio (default auto: iommufd where present, else type1)' },
  gpa: { type: 'string', value: 'A', help: 'the block\'s guest physical address (default 16M)' },
  ...VM_TYPE_OPTION,
} as const;

const SCRIPT_LINES = `Script lines:
  block <bytes> [granule] [plug-block]  one RAM block; granule defaults to 4096, the plug
                                   block (virtio-mem's block size) to the granule
  listen <id> <offset> <size>      register a listener on a section
  unlisten <id>
  convert <offset> <size> shared|private
  plug <offset> <size>             plug or unplug whole plug blocks: listeners hold what
  unplug <offset> <size>           is shared and plugged; unplugging punches both backings
Blank lines and # comments are ignored. A malformed line exits 2 with its line number;
an invalid conversion, plug or unplug is counted as rejected and the run goes on.`;

export const SIMULATE: CommandSpec<typeof OUTPUT_OPTIONS> = {
  name: 'simulate',
  summary: 'run a conversion script through the tracker only (no kernel)',
  positionals: '[FILE|-]',
  options: OUTPUT_OPTIONS,
  description: `Runs a conversion script through the tracker with recording listeners that model VFIO
(a double map or unmap counts as an error), touching no kernel. The script comes from FILE,
or from standard input with - (or with no FILE when input is piped).
${SCRIPT_LINES}
--json prints {"granule","pages","shared":[[firstPage,count]...],"unplugged":[[firstPage,count]...],
"listeners":{id:{"mapped","errors"}},"rejected","ops" (convert lines executed),"plugs" (plug and
unplug lines executed),"elapsedNs" (time inside convert lines only)}.`,
  examples: [
    'guestmem simulate script.txt --svg map.svg',
    "printf 'block 1M\\nlisten a 0 1M\\nconvert 0 64K shared\\n' | guestmem simulate - --json",
  ],
};

const RUN_OPTIONS = { ...VM_OPTIONS, ...OUTPUT_OPTIONS } as const;

export const RUN: CommandSpec<typeof RUN_OPTIONS> = {
  name: 'run',
  summary: 'run a conversion script against a real VM',
  positionals: 'SCRIPT',
  options: RUN_OPTIONS,
  description: `Executes a simulate script against a real VM with private memory (--vm-type): the block becomes a guest_memfd
memslot at --gpa; 'listen' attaches the VFIO DMA listener of the device named by --vfio on
its section (a recording listener without --vfio). Exits 1 if a conversion fails in the
kernel. A progress bar shows on long scripts when stderr is a terminal.
${SCRIPT_LINES}`,
  examples: ['guestmem run script.txt --vfio 0000:00:01.0 --svg map.svg'],
};

const REPLAY_OPTIONS = {
  size: { type: 'string', value: 'S', help: 'the block\'s size (with --gpa; default: inferred from the trace)' },
  ...VM_OPTIONS,
  'dry-run': { type: 'boolean', help: 'replay through the tracker only, touching no kernel' },
  ...OUTPUT_OPTIONS,
} as const;

export const REPLAY: CommandSpec<typeof REPLAY_OPTIONS> = {
  name: 'replay',
  summary: 'replay a QEMU trace of a guest\'s conversions',
  positionals: 'TRACE',
  options: REPLAY_OPTIONS,
  description: `Replays QEMU's kvm_convert_memory events (log trace backend, optionally '<pid>@<s>.<us>:'
prefixed) by guest address on a real VM (--dry-run: the tracker only), and checks each
ram_block_attributes_state_change event against the tracker's own view. Other lines are
skipped. Without --size/--gpa the block is inferred from the addresses (and it says so),
leaving out conversions past 2^64 (and, on a real VM, past 2^52: no guest has such
addresses); those are rejected and counted. Addresses and sizes go to 2^64 - 1. A huge
inferred block that the conversions barely touch is refused: give --gpa/--size.
Exits 1 on a failed conversion or a mismatch with QEMU's view.`,
  examples: ['guestmem replay qemu-trace.log --gpa 0 --size 4G --dry-run'],
};

/**
 * Where simulate reads its script. With no FILE on a terminal it would wait for typing that
 * nobody knows to do: a usage error says what it expects. `-` on a terminal reads what is
 * typed, after saying so.
 */
function scriptSource(file: string | undefined): string {
  if (!process.stdin.isTTY) return file ?? '-';
  if (file === undefined) throw new UsageError('give a script FILE, or - to type one on the terminal (end it with Ctrl-D); see the script lines in guestmem simulate --help');
  if (file === '-') process.stderr.write('guestmem simulate: reading a script from the terminal; end it with Ctrl-D\n');
  return file;
}

/** A record per conversion costs time and memory: kept for --history and the --svg timeline only. */
function wantsHistory(values: { history?: boolean; svg?: string }): boolean {
  return values.history === true || values.svg !== undefined;
}

/** --history: the JSON's `history` array, or one line per conversion before the summary. */
function historyJson(report: ScriptReport, values: { history?: boolean }): Record<string, unknown> {
  return values.history ? { history: report.history } : {};
}

function printHistory(report: ScriptReport, values: { history?: boolean }): void {
  if (!values.history) return;
  for (const r of report.history) console.log(`convert 0x${r.offset.toString(16)} 0x${r.size.toString(16)} ${r.to}: ${r.outcome}${r.reason === undefined ? '' : ` (${r.code}: ${r.reason})`}`);
}


export async function simulateCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(SIMULATE, args);
  const svg = checkOutputFile(values.svg, '--svg');
  const source = scriptSource(positionals[0]);
  const ops = parseScript(await readInputText(source, 'script', maxInput(values['max-input'])));
  const { report, attributes } = await execute(ops, new TrackerHost(), 'simulate', wantsHistory(values));
  const failures = writeSvg(svg, attributes, report, 'guestmem simulate');
  if (values.json) printJson({ ...reportJson(report), ...historyJson(report, values), ...failureJson(failures) });
  else {
    printHistory(report, values);
    console.log(summary(report, attributes));
  }
  return failures.length > 0 ? 1 : 0;
}

export async function runCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseCommand(RUN, args);
  // Every usage error is found before the kernel is touched: options, the script, its block.
  const gpa = values.gpa !== undefined ? parseGpa(values.gpa) : DEFAULT_GPA;
  const backend = backendOption(values.backend);
  const vmType = parseVmTypeOption(values['vm-type']);
  vfioOption(values.vfio);
  const svg = checkOutputFile(values.svg, '--svg');
  const ops = parseScript(await readInputText(positionals[0], 'script', maxInput(values['max-input'])));
  checkScript(ops);
  const block = ops[0]!;
  checkGuestBlock(gpa, block.op === 'block' ? block.size : 0, `line ${block.line}: block at --gpa 0x${gpa.toString(16)}`);
  const host = new VmHost({ gpa, vfio: values.vfio, backend, vmType, commandLine: ['run', ...args] });
  const { report, attributes } = await execute(ops, host, 'run', wantsHistory(values));
  const stats = host.block?.stats.toJSON();
  const failures = [...conversionFailures(report), ...writeSvg(svg, attributes, report, 'guestmem run')];
  if (values.json) {
    printJson({ ...reportJson(report), failed: report.failed, failures: report.failures, vfio: values.vfio ?? null, stats, ...historyJson(report, values), ...failureJson(failures) });
  } else {
    printHistory(report, values);
    console.log(summary(report, attributes, stats ? [`time by step (ns): ${JSON.stringify(stats.ns)}`] : []));
  }
  return failures.length > 0 ? 1 : 0;
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
function checkInferredBlock(block: { gpa: number | bigint; size: number | bigint }, trace: ParsedTrace, limit: bigint | undefined): void {
  const size = Number(block.size);
  if (size <= HUGE_INFERRED_BLOCK) return;
  let touched = 0;
  // A conversion the replay will reject touches nothing: one huge rejected size must not
  // make a sparse trace look dense (it made an 8 TiB block pass).
  for (const c of trace.conversions) if (isConvertible(c, limit)) touched += Number(c.size);
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
  const { values, positionals } = parseCommand(REPLAY, args);
  // Every usage error is found before the kernel is touched (or the dry run starts).
  const backend = backendOption(values.backend);
  const vmType = parseVmTypeOption(values['vm-type']);
  vfioOption(values.vfio);
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
    if (!values['dry-run']) checkGuestBlock(block.gpa, block.size, '--gpa/--size');
  } else {
    // A real VM's block must lie below any guest's physical-address limit; a dry run's may be anywhere.
    const limit = values['dry-run'] ? undefined : GUEST_PHYS_LIMIT;
    block = inferBlock(trace, limit)!;
    checkInferredBlock(block, trace, limit);
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
    plugSource: () => host.plugSource(),
    plug: (offset, size, to) => host.plug(offset, size, to),
    makeListener: (id, offset, size) => host.makeListener(id, offset, size),
    convert: (offset, size, to) => host.convert(offset, size, to).then(
      (result) => {
        results.push(result as { from: string; to: string });
        return result;
      },
      (error: unknown) => {
        results.push(null);
        throw error;
      },
    ),
    canConvertSync: () => host.canConvertSync?.() ?? false,
    convertSync: (offset, size, to) => {
      try {
        const result = host.convertSync!(offset, size, to);
        results.push(result);
        return result;
      } catch (error) {
        results.push(null);
        throw error;
      }
    },
    shutdown: () => host.shutdown(),
  };
  const { report, attributes } = await execute(ops, recordingHost, 'replay', wantsHistory(values));
  const checked = trace.conversions.reduce((n, c) => n + c.checks.length, 0);
  const mismatches = checkTrace(trace, results, block.gpa, values.gpa !== undefined);
  const failures = [
    ...conversionFailures(report),
    ...(mismatches.length > 0 ? [{ code: 'ERR_GUESTMEM_TRACE_MISMATCH', message: `${mismatches.length} state change(s) differ from QEMU's: ${mismatches.slice(0, 3).join('; ')}` }] : []),
    ...writeSvg(svg, attributes, report, 'guestmem replay'),
  ];
  if (values.json) {
    printJson({
      ...reportJson(report), failed: report.failed, failures: report.failures, block, inferred: values.gpa === undefined,
      skippedLines: trace.skipped, checked, mismatches, dryRun: values['dry-run'] ?? false, ...historyJson(report, values), ...failureJson(failures),
    });
  } else {
    printHistory(report, values);
    notes.push(`${trace.skipped} other trace lines skipped; ${checked} state changes checked against QEMU's, ${mismatches.length} mismatches`);
    console.log(summary(report, attributes, [...notes, ...mismatches.slice(0, 20).map((m) => `mismatch: ${m}`)]));
  }
  return failures.length > 0 ? 1 : 0;
}
