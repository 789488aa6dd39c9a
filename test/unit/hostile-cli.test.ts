// Hostile input at the command line: a corpus of scripts, traces and options that once
// crashed, hung, ate memory or were half accepted, each run as its own child process.
// Every case must end by itself with exit 0, 1 or 2 (never a signal), within its time and
// memory bounds, and a usage error (2) must name the line or the option to fix.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GUESTMEM } from '../support/cli';
import { CHILD_CONCURRENCY, inPool, runNodeIsolated, type IsolatedResult } from '../support/isolated';

interface CliCase {
  name: string;
  args: string[];
  input?: string | Buffer;
  stdinFile?: string;
  /** The exit statuses allowed; the first is the one expected today. */
  status: number[];
  /** What stderr must say (for exit 2: the line or the option). */
  stderr?: RegExp;
  check?: (result: IsolatedResult) => void;
  timeoutMs?: number;
  maxRssMiB?: number;
}

const DEFAULT_TIMEOUT_MS = 20_000;
const DEFAULT_MAX_RSS_MIB = 400;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-hostile-cli-'));
function file(name: string, text: string): string {
  const target = path.join(dir, name);
  fs.writeFileSync(target, text);
  return target;
}

const TRACE_FAR_APART = 'kvm_convert_memory start 0x0 size 0x1000 private_to_shared\nkvm_convert_memory start 0x1000000000000 size 0x1000 private_to_shared\n';
const TRACE_SMALL = 'kvm_convert_memory start 0x100000 size 0x10000 private_to_shared\n';
const SCRIPT_SMALL = 'block 1M\nlisten a 0 1M\nconvert 0 64K shared\n';

function json(result: IsolatedResult): Record<string, unknown> {
  return JSON.parse(result.stdout) as Record<string, unknown>;
}

function manyListens(count: number): string {
  const lines = ['block 1M'];
  for (let i = 0; i < count; i++) lines.push(`listen l${i} 0 4K`);
  lines.push('convert 0 4K shared', '');
  return lines.join('\n');
}

const CASES: CliCase[] = [
  // Inputs that are not scripts: stopped at once, not read to the end of memory.
  { name: 'simulate /dev/zero', args: ['simulate', '/dev/zero'], status: [2], stderr: /line 1 holds a NUL byte/ },
  { name: 'simulate - with /dev/zero on stdin', args: ['simulate', '-'], stdinFile: '/dev/zero', status: [2], stderr: /stdin: line 1 holds a NUL byte/ },
  { name: 'a script over --max-input', args: ['simulate', file('big.txt', `block 1M\n${'convert 0 4K shared\n'.repeat(200)}`), '--max-input', '1K'], status: [2], stderr: /larger than 1024 bytes .*--max-input/ },
  { name: 'a 100 KiB line', args: ['simulate', file('long-line.txt', `block 1M\n${'#'.repeat(100 * 1024)}\n`)], status: [2], stderr: /line 2 is longer than 64 KiB/ },
  { name: 'a missing file', args: ['simulate', path.join(dir, 'missing.txt')], status: [2], stderr: /cannot read script .*ENOENT/ },
  { name: 'a directory as the script', args: ['simulate', dir], status: [2], stderr: /cannot read script .*EISDIR/ },
  { name: 'an empty file name', args: ['simulate', ''], status: [2], stderr: /file name is empty/ },
  { name: '--max-input 0', args: ['simulate', file('small.txt', SCRIPT_SMALL), '--max-input', '0'], status: [2], stderr: /--max-input must be between/ },
  { name: 'two script files', args: ['simulate', file('small.txt', SCRIPT_SMALL), file('small.txt', SCRIPT_SMALL)], status: [2], stderr: /takes at most 1 argument \(\[FILE\|-\]\), got 2/ },
  { name: 'an empty script', args: ['simulate', '-'], input: '', status: [2], stderr: /no 'block' line/ },
  { name: 'invalid UTF-8 as a keyword', args: ['simulate', '-'], input: Buffer.from([...Buffer.from('block 1M\n'), 0xff, 0xfe, 0x0a]), status: [2], stderr: /line 2: unknown keyword/ },
  { name: 'CRLF line ends', args: ['simulate', '-', '--json'], input: SCRIPT_SMALL.replace(/\n/g, '\r\n'), status: [0] },

  // Listener ids are plain data.
  ...['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'].map((id): CliCase => ({
    name: `listen ${id}`,
    args: ['simulate', '-', '--json'],
    input: `block 1M\nlisten ${id} 0 1M\nlisten other 0 4K\nconvert 0 8K shared\n`,
    status: [0],
    check: (result) => {
      const listeners = json(result).listeners as Record<string, unknown>;
      assert.deepEqual(Object.keys(listeners).sort(), [id, 'other'].sort());
      assert.deepEqual(Object.getOwnPropertyDescriptor(listeners, id)?.value, { mapped: [[0, 2]], errors: 0 });
    },
  })),
  { name: 'listen __proto__ in the text summary', args: ['simulate', '-'], input: 'block 1M\nlisten __proto__ 0 1M\nconvert 0 4K shared\n', status: [0], check: (r) => assert.match(r.stdout, /listener __proto__: 1 pages mapped/) },
  // 100k listeners: registration is O(1), so this is seconds, not minutes.
  {
    name: '100k listen lines',
    args: ['simulate', file('listens.txt', manyListens(100_000))],
    status: [0],
    timeoutMs: 40_000,
    maxRssMiB: 600,
    check: (r) => assert.match(r.stdout, /^block: 256 pages .*\nshared: 1 pages in 1 run; .*\nconversions: 1 \(0 rejected, 0 failed\).*\nlistener l0: 1 pages mapped/),
  },
  { name: 'a listener twice', args: ['simulate', '-'], input: 'block 1M\nlisten a 0 4K\nlisten a 0 4K\n', status: [2], stderr: /line 3: listener 'a' is already listening/ },
  { name: 'unlisten of no listener', args: ['simulate', '-'], input: 'block 1M\nunlisten ghost\n', status: [2], stderr: /line 2: no listener 'ghost'/ },
  { name: 'a section past the block', args: ['simulate', '-'], input: 'block 1M\nlisten a 1M 4K\n', status: [2], stderr: /line 2: listen a: section .* is outside the block/ },

  // Block geometry: a power of two by bit test, suffixes as documented, a bitmap within its bound.
  { name: 'granule 2^51 + 1', args: ['simulate', '-'], input: 'block 2251799813685249 2251799813685249\n', status: [2], stderr: /line 1: granularity must be a power of two up to 2\^63, got 2251799813685249/ },
  { name: 'granule 2^52 - 1', args: ['simulate', '-'], input: 'block 4503599627370495 4503599627370495\n', status: [2], stderr: /line 1: granularity must be a power of two/ },
  { name: 'granule 0', args: ['simulate', '-'], input: 'block 1M 0\n', status: [2], stderr: /line 1: granularity must be a power of two/ },
  { name: 'granule larger than the block', args: ['simulate', '-'], input: 'block 1M 2M\n', status: [2], stderr: /line 1: block size .* is not a multiple of the granularity/ },
  { name: 'block 4096ib', args: ['simulate', '-'], input: 'block 4096ib\n', status: [2], stderr: /line 1: block size: '4096ib' is not a size/ },
  { name: 'block 0', args: ['simulate', '-'], input: 'block 0\n', status: [2], stderr: /line 1: block size must be greater than zero/ },
  { name: 'BLOCK 1M', args: ['simulate', '-'], input: 'BLOCK 1M\n', status: [2], stderr: /line 1: unknown keyword 'BLOCK' .*lowercase: 'block'/ },
  { name: 'block 1P', args: ['simulate', '-'], input: 'block 1P\n', status: [2], stderr: /line 1: a block of 1 PiB .* bitmap, above the bound of 256 MiB/ },
  { name: 'block 64T', args: ['simulate', '-'], input: 'block 64T\n', status: [2], stderr: /line 1: a block of 64 TiB .*2 GiB bitmap.*use a granularity of 32768 or more/ },
  { name: 'block 64T in 2M granules', args: ['simulate', '-', '--json'], input: 'block 64T 2M\nlisten a 0 64T\nconvert 0 2M shared\n', status: [0] },
  { name: 'recording listeners past their bound', args: ['simulate', '-'], input: `block 8T\n${[1, 2, 3, 4, 5].map((i) => `listen l${i} 0 8T`).join('\n')}\n`, status: [2], stderr: /line 6: listen l5: 5 listeners at once would record/ },
  { name: 'a number past 2^64 in a convert', args: ['simulate', '-', '--json'], input: 'block 1M\nconvert 99999999999999999999999 4K shared\n', status: [0], check: (r) => assert.equal(json(r).rejected, 1) },
  { name: 'a malformed number', args: ['simulate', '-'], input: 'block 1M\nconvert 0x 4K shared\n', status: [2], stderr: /line 2: offset: '0x' is not a size/ },
  { name: 'NaN as a size', args: ['simulate', '-'], input: 'block 1M\nconvert NaN 4K shared\n', status: [2], stderr: /line 2: offset: 'NaN' is not a size/ },

  // Output files: refused up front when they cannot be written; results kept when a write fails late.
  { name: "--svg ''", args: ['simulate', file('small.txt', SCRIPT_SMALL), '--svg', ''], status: [2], stderr: /--svg needs a file name/ },
  { name: '--svg in a missing directory', args: ['simulate', file('small.txt', SCRIPT_SMALL), '--svg', path.join(dir, 'no', 'such', 'map.svg')], status: [2], stderr: /--svg '.*': cannot write there/ },
  { name: '--svg a directory', args: ['simulate', file('small.txt', SCRIPT_SMALL), '--svg', dir], status: [2], stderr: /--svg '.*': cannot write there \(it is a directory\)/ },
  {
    name: '--svg /dev/full keeps the results',
    args: ['simulate', file('small.txt', SCRIPT_SMALL), '--json', '--svg', '/dev/full'],
    status: [1],
    stderr: /the results stand, but writing the --svg picture failed: ENOSPC/,
    check: (r) => {
      assert.deepEqual(json(r).shared, [[0, 16]]);
      // Exit 1 under --json: the report stands, and carries the documented error member.
      assert.equal((json(r).error as { code?: unknown } | undefined)?.code, 'ENOSPC');
    },
  },

  // replay: a block inferred from two far addresses, options that a dry run would ignore.
  { name: 'replay infers 256 TiB from two addresses', args: ['replay', file('far.log', TRACE_FAR_APART), '--dry-run'], status: [2], stderr: /256 TiB .* touch at most 8 KiB .*--gpa A --size S/ },
  { name: 'replay of the same with --gpa/--size', args: ['replay', file('far.log', TRACE_FAR_APART), '--dry-run', '--gpa', '0', '--size', '1M', '--json'], status: [0], check: (r) => assert.equal(json(r).rejected, 1) },
  { name: 'replay --gpa 1', args: ['replay', file('small.log', TRACE_SMALL), '--dry-run', '--gpa', '1', '--size', '4M'], status: [2], stderr: /--gpa must be a multiple of 4096/ },
  { name: 'replay --backend bogus --dry-run', args: ['replay', file('small.log', TRACE_SMALL), '--dry-run', '--backend', 'bogus'], status: [2], stderr: /--backend must be auto, type1 or iommufd/ },
  { name: 'replay --backend type1 --dry-run', args: ['replay', file('small.log', TRACE_SMALL), '--dry-run', '--backend', 'type1'], status: [2], stderr: /--backend needs a real VM/ },
  { name: 'replay --vfio with --dry-run', args: ['replay', file('small.log', TRACE_SMALL), '--dry-run', '--vfio', '0000:00:01.0'], status: [2], stderr: /--vfio needs a real VM/ },
  { name: "replay --svg ''", args: ['replay', file('small.log', TRACE_SMALL), '--dry-run', '--svg', ''], status: [2], stderr: /--svg needs a file name/ },
  { name: 'replay --size 64T', args: ['replay', file('small.log', TRACE_SMALL), '--dry-run', '--gpa', '0', '--size', '64T'], status: [2], stderr: /--size: a block of 64 TiB .*bitmap/ },
  { name: 'replay --size 0', args: ['replay', file('small.log', TRACE_SMALL), '--dry-run', '--gpa', '0', '--size', '0'], status: [2], stderr: /--size: block size must be greater than zero/ },
  {
    name: 'replay of an address past 2^64',
    args: ['replay', '-', '--dry-run', '--json'],
    input: 'kvm_convert_memory start 0xffffffffffffffff size 0x1000 private_to_shared\n',
    status: [0],
    check: (r) => assert.equal(json(r).rejected, 1),
  },
  { name: 'replay of a malformed address', args: ['replay', '-', '--dry-run'], input: 'kvm_convert_memory start 0x size 0x1000 private_to_shared\n', status: [2], stderr: /no kvm_convert_memory events .*1 other lines skipped/ },
  { name: 'replay of /dev/zero', args: ['replay', '/dev/zero', '--dry-run'], status: [2], stderr: /line 1 holds a NUL byte/ },
  { name: 'replay of a trace without conversions', args: ['replay', '-', '--dry-run'], input: 'x\n'.repeat(10_000), status: [2], stderr: /no kvm_convert_memory events .*10000 other lines/ },

  // Usage errors in commands that touch the kernel are found before they do.
  { name: 'convert --size 0', args: ['convert', '--size', '0', '--gpa', '16M', '--range', '0+4K', '--to', 'shared'], status: [2], stderr: /--size: block size must be greater than zero/ },
  { name: 'convert --range 0+0', args: ['convert', '--size', '4M', '--gpa', '16M', '--range', '0+0', '--to', 'shared'], status: [2], stderr: /--range size must be greater than zero/ },
  { name: 'convert --range past the block', args: ['convert', '--size', '4M', '--gpa', '16M', '--range', '4M+4K', '--to', 'shared'], status: [2], stderr: /--range .* is outside the block/ },
  { name: 'convert --range unaligned', args: ['convert', '--size', '4M', '--gpa', '16M', '--range', '1+4K', '--to', 'shared'], status: [2], stderr: /--range offset 0x1 is not aligned/ },
  { name: 'convert --gpa 1', args: ['convert', '--size', '4M', '--gpa', '1', '--range', '0+4K', '--to', 'shared'], status: [2], stderr: /--gpa must be a multiple of 4096/ },
  { name: 'convert --size 64T', args: ['convert', '--size', '64T', '--gpa', '0', '--range', '0+4K', '--to', 'shared'], status: [2], stderr: /--size: a block of 64 TiB/ },
  { name: 'run with block 0', args: ['run', file('block0.txt', 'block 0\n')], status: [2], stderr: /line 1: block size must be greater than zero/ },
  { name: 'run with a section past the block', args: ['run', file('far-section.txt', 'block 1M\nlisten a 0 2M\n')], status: [2], stderr: /line 2: listen a: section/ },
  { name: 'run --gpa 1', args: ['run', file('small.txt', SCRIPT_SMALL), '--gpa', '1'], status: [2], stderr: /--gpa must be a multiple of 4096/ },
  { name: 'run --backend bogus', args: ['run', file('small.txt', SCRIPT_SMALL), '--backend', 'bogus'], status: [2], stderr: /--backend must be auto/ },
  { name: 'bench --no-vm --pages 0', args: ['bench', '--no-vm', '--pages', '0'], status: [2], stderr: /--pages takes page counts/ },
  { name: 'bench --no-vm --iterations NaN', args: ['bench', '--no-vm', '--iterations', 'NaN'], status: [2], stderr: /--iterations takes an integer in 1\.\./ },
  { name: 'bench --no-vm --pages 1,,2', args: ['bench', '--no-vm', '--pages', '1,,2'], status: [2], stderr: /--pages takes page counts/ },

  // Issue 25: patterns linear in their input, inferred blocks from conversions that can run,
  // impossible blocks refused before any syscall, one parser for counts, one failure shape.
  {
    name: 'replay of a trace with 60,000-space lines',
    // Lines that match no pattern: a failing match is where backtracking shows.
    args: ['replay', file('spaces.log', `kvm_convert_memory start 0x0 size 0x1000 private_to_shared\n${`${' '.repeat(60_000)}x\n`.repeat(20)}`), '--dry-run', '--json'],
    status: [0],
    check: (r) => assert.equal(json(r).skippedLines, 20),
  },
  {
    name: 'replay: a rejected huge conversion does not make a sparse trace dense',
    args: ['replay', file('sparse.log', 'kvm_convert_memory start 0x0 size 0x1000 private_to_shared\nkvm_convert_memory start 0x7fffffff000 size 0x1000 private_to_shared\nkvm_convert_memory start 0x1 size 0x7ffffffe000 private_to_shared\n'), '--dry-run'],
    status: [2],
    stderr: /across 8 TiB .* touch at most 8 KiB/,
  },
  { name: 'run --gpa wrapping past 2^64', args: ['run', file('small.txt', SCRIPT_SMALL), '--gpa', '0xfffffffffff80000'], status: [2], stderr: /ends at 0x10000000000080000, past 2\^52 .*wraps past 2\^64/ },
  { name: 'convert --size 8T wrapping past 2^64', args: ['convert', '--size', '8T', '--gpa', '0xfffffffff0000000', '--range', '0+4K', '--to', 'shared'], status: [2], stderr: /--gpa\/--size: a block of 8 TiB .*past 2\^52/ },
  { name: 'run with an 8 EiB block', args: ['run', file('8e.txt', 'block 8E 4G\nconvert 0 4G shared\n')], status: [2], stderr: /line 1: .*a block of 8 EiB .*past 2\^52/ },
  { name: 'block 8E 4E (a 2^62 granule)', args: ['simulate', '-', '--json'], input: 'block 8E 4E\nlisten a 0 8E\nconvert 0 4E shared\n', status: [0], check: (r) => assert.equal(json(r).pages, 2) },
  { name: "bench --guest-iterations ''", args: ['bench', '--no-vm', '--guest-iterations', ''], status: [2], stderr: /--guest-iterations takes an integer in 0\.\./ },
  { name: 'bench --iterations 0x10', args: ['bench', '--no-vm', '--iterations', '0x10'], status: [2], stderr: /--iterations takes an integer in 1\.\..*got '0x10'/ },
  { name: "bench --pages ' 1, 2'", args: ['bench', '--no-vm', '--pages', ' 1, 2'], status: [2], stderr: /--pages takes page counts/ },
  { name: 'guest --no-vm --svg in a missing directory', args: ['guest', 'random', '--no-vm', '--svg', path.join(dir, 'no', 'such', 'x.svg')], status: [2], stderr: /--svg '.*': cannot write there/ },
  {
    name: 'replay --json with a mismatch: the report and the error',
    args: ['replay', '-', '--dry-run', '--json'],
    input: "kvm_convert_memory start 0x0 size 0x1000 private_to_shared\nram_block_attributes_state_change offset 0x0 size 0x1000 from 'populated' to 'populated'\n",
    status: [1],
    check: (r) => {
      assert.equal((json(r).mismatches as unknown[]).length, 1);
      assert.equal((json(r).error as { code?: unknown }).code, 'ERR_GUESTMEM_TRACE_MISMATCH');
    },
  },
  {
    name: 'probe --require vm-type=snp --json: the report and the error',
    args: ['probe', '--require', 'vm-type=snp', '--json'],
    status: [1, 0],
    check: (r) => {
      const report = json(r);
      if (r.status === 1) assert.equal((report.error as { code?: unknown }).code, 'ERR_GUESTMEM_REQUIREMENT_MISSING');
      else assert.equal(report.error, undefined);
    },
  },

  { name: 'vm --memory 0', args: ['vm', '--memory', '0', '--', 'probe'], status: [2], stderr: /--memory takes a size/ },
  { name: 'vm --edu x', args: ['vm', '--edu', 'x', '--', 'probe'], status: [2], stderr: /--edu takes a count/ },

  // Commands and help topics are own keys, not Object.prototype's.
  { name: 'command constructor', args: ['constructor'], status: [2], stderr: /unknown command 'constructor'/ },
  { name: 'command __proto__', args: ['__proto__'], status: [2], stderr: /unknown command '__proto__'/ },
  // help of what is not a command is an unknown command (issue 26), never the prototype's help.
  { name: 'help __proto__', args: ['help', '__proto__'], status: [2], stderr: /unknown command '__proto__'/ },
];

describe('hostile input: the command line, each case in its own process', function () {
  this.timeout(180_000);
  const results = new Map<string, IsolatedResult>();

  before(async () => {
    const names = new Set<string>();
    for (const c of CASES) {
      assert.ok(!names.has(c.name), `case names are unique: ${c.name}`);
      names.add(c.name);
    }
    const outcomes = await inPool(CASES, CHILD_CONCURRENCY, (c) =>
      runNodeIsolated(GUESTMEM, c.args, { input: c.input, stdinFile: c.stdinFile, timeoutMs: c.timeoutMs ?? DEFAULT_TIMEOUT_MS }),
    );
    CASES.forEach((c, i) => results.set(c.name, outcomes[i]!));
  });

  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const c of CASES) {
    it(c.name, () => {
      const result = results.get(c.name)!;
      const context = `guestmem ${c.args.join(' ')}\nstderr: ${result.stderr.slice(0, 2000)}\nstdout: ${result.stdout.slice(0, 500)}`;
      assert.equal(result.timedOut, false, `did not end within ${c.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms: ${context}`);
      assert.equal(result.signal, null, `killed by ${result.signal}: ${context}`);
      assert.ok(c.status.includes(result.status!), `exit ${result.status}, expected ${c.status.join(' or ')}: ${context}`);
      assert.ok(result.maxRssKiB !== null, `reported its memory: ${context}`);
      assert.ok(result.maxRssKiB <= (c.maxRssMiB ?? DEFAULT_MAX_RSS_MIB) * 1024, `peak memory ${Math.round(result.maxRssKiB / 1024)} MiB: ${context}`);
      if (c.stderr) assert.match(result.stderr, c.stderr, context);
      if (result.status === 2) assert.match(result.stderr, /line \d+|--[a-z]|file|command|script|trace/, `a usage error says what to fix: ${context}`);
      assert.doesNotMatch(result.stderr, /\n\s+at .*\(.*:\d+:\d+\)/, `no stack trace: ${context}`);
      c.check?.(result);
    });
  }
});

describe('hostile input: a reader that stops reading', function () {
  this.timeout(60_000);

  it('guestmem … --json --history | head -c 20 ends quietly, without a stack trace', () => {
    // Its own file: the suite above removes its directory when it ends.
    const script = path.join(os.tmpdir(), `guestmem-epipe-${process.pid}.txt`);
    fs.writeFileSync(script, `block 1M\n${'convert 0 4K shared\nconvert 0 4K private\n'.repeat(20_000)}`);
    // pipefail: the status is guestmem's, not head's.
    const result = spawnSync('bash', ['-c', `set -o pipefail; "${process.execPath}" "${GUESTMEM}" simulate "${script}" --json --history | head -c 20 >/dev/null`], { encoding: 'utf8', timeout: 30_000 });
    fs.rmSync(script, { force: true });
    assert.equal(result.status, 0, result.stderr);
    assert.doesNotMatch(result.stderr, /EPIPE|Unhandled 'error' event|\n\s+at /, result.stderr);
  });
});
