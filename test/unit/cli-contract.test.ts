// The command line's contract, command by command: --help written from the option table
// that parses (so the two cannot drift), --version, and under --json a failure as one
// {"error":{"code","message"}} object on stdout with the exit code it always had.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseCommand, helpText, synopsis, type CommandSpec } from '../../lib/cli/command-spec';
import { BENCH } from '../../lib/cli/bench-command';
import { CONVERT } from '../../lib/cli/convert-command';
import { DEMO } from '../../lib/cli/demo-command';
import { GUEST } from '../../lib/cli/guest-command';
import { PROBE } from '../../lib/cli/probe-command';
import { REPLAY, RUN, SIMULATE } from '../../lib/cli/script-commands';
import { VM } from '../../lib/cli/vm-command';
import { GUESTMEM, guestmem } from '../support/cli';

const SPECS: CommandSpec[] = [PROBE, CONVERT, SIMULATE, RUN, REPLAY, GUEST, BENCH, DEMO, VM];

/** No addon can load from here: a command that got as far as the kernel would say so (exit 1). */
const NO_ADDON = { GUESTMEM_PREBUILD: path.join(os.tmpdir(), 'guestmem-no-addon-here') };

function jsonError(result: { stdout: string }): { code: string; message: string } {
  const lines = result.stdout.trim().split('\n');
  assert.equal(lines.length, 1, `one JSON object on stdout, got: ${result.stdout}`);
  const parsed = JSON.parse(lines[0]!) as { error: { code: string; message: string } };
  assert.deepEqual(Object.keys(parsed), ['error']);
  assert.deepEqual(Object.keys(parsed.error), ['code', 'message']);
  assert.equal(typeof parsed.error.code, 'string');
  assert.ok(parsed.error.message.length > 0);
  return parsed.error;
}

describe('guestmem command-line contract', () => {
  it('lists every command in its overview, the same with and without --help', () => {
    const bare = guestmem([]);
    assert.equal(bare.status, 0);
    assert.equal(bare.stdout, guestmem(['--help']).stdout);
    for (const spec of SPECS) assert.match(bare.stdout, new RegExp(`\\n  ${spec.name} +${spec.summary.replace(/[()]/g, '\\$&')}\\n`));
  });

  it('lists every command in docs/cli.md (the CLI reference) as its option table has it', () => {
    const reference = fs.readFileSync(path.join(path.dirname(GUESTMEM), '..', 'docs', 'cli.md'), 'utf8');
    const block = /## Commands\n\n```\n([\s\S]*?)```/.exec(reference)?.[1];
    const expected = `${SPECS.map(synopsis).join('\n')}\nguestmem --version | --help\n`;
    assert.equal(block, expected, `docs/cli.md's command list should read:\n${expected}`);
  });

  it('prints the package version with --version', () => {
    const { version } = JSON.parse(fs.readFileSync(path.join(path.dirname(GUESTMEM), '..', 'package.json'), 'utf8'));
    const result = guestmem(['--version']);
    assert.equal(result.status, 0);
    assert.equal(result.stdout, `${version}\n`);
  });

  for (const spec of SPECS) {
    describe(spec.name, () => {
      it('has --help (and -h, and guestmem help NAME) listing every option its parser takes, with examples', () => {
        const result = guestmem([spec.name, '--help']);
        assert.equal(result.status, 0, result.stderr);
        assert.equal(result.stdout, `${helpText(spec)}\n`);
        assert.match(result.stdout, new RegExp(`^usage: guestmem ${spec.name}`));
        assert.match(result.stdout, /\nexamples?:\n {2}guestmem /);
        assert.equal(guestmem([spec.name, '-h']).stdout, result.stdout);
        assert.equal(guestmem(['help', spec.name]).stdout, result.stdout);
        for (const [name, option] of Object.entries(spec.options)) {
          assert.match(result.stdout, new RegExp(`\\n  --${name}\\b`), `--${name} in the options list`);
          const args = option.type === 'string' ? [`--${name}`, 'x'] : [`--${name}`];
          assert.doesNotThrow(() => parseCommand(spec, args), `the parser takes --${name}`);
        }
      });

      it('refuses an option its table lacks: exit 2, and under --json the parser\'s code on stdout', () => {
        const args = spec.name === 'vm' ? ['vm', '--frobnicate', '--', 'probe', '--json'] : [spec.name, '--frobnicate', '--json'];
        const result = guestmem(args, undefined, NO_ADDON);
        assert.equal(result.status, 2, result.stderr);
        assert.deepEqual(jsonError(result), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION', message: "Unknown option '--frobnicate'" });
        assert.match(result.stderr, new RegExp(`guestmem ${spec.name}: Unknown option '--frobnicate'\\n\\(see guestmem ${spec.name} --help\\)`));
      });
    });
  }

  describe('each command\'s own usage error under --json, found before any syscall', () => {
    // With no addon loadable, reaching the kernel would end in ERR_GUESTMEM_NATIVE_UNAVAILABLE
    // (exit 1): exit 2 proves the error was found first.
    const cases: Array<[string[], RegExp, string?]> = [
      [['probe', '--guest-size', 'banana', '--json'], /--guest-size/],
      [['convert', '--size', '64M', '--gpa', '16M', '--range', '12+3', '--to', 'shared', '--json'], /--range offset 0xc is not aligned to the granularity 4096/],
      [['simulate', '-', '--json'], /line 1: unknown keyword/, 'frobnicate 1M\n'],
      [['run', '--json'], /give the script file/],
      [['replay', '-', '--dry-run', '--vfio', '0000:00:01.0', '--json'], /--vfio needs a real VM/, ''],
      [['guest', 'nonsense', '--json'], /unknown program 'nonsense'/],
      [['bench', '--iterations', '0', '--json'], /--iterations takes an integer in 1\.\./],
      [['demo', 'now', '--json'], /takes no arguments besides options, got 'now'/],
      [['vm', '--edu', '99', '--', 'probe', '--json'], /--edu takes a count of edu devices/],
      // A malformed PCI address is bad usage wherever --vfio is taken, not a failed open.
      [['convert', '--size', '64M', '--gpa', '16M', '--range', '0+4K', '--to', 'shared', '--vfio', 'bogus', '--json'], /--vfio: 'bogus' is not a PCI address/],
      [['run', 'script.txt', '--vfio', '00:01', '--json'], /--vfio: '00:01' is not a PCI address/],
      [['replay', 'trace.log', '--vfio', 'x', '--json'], /--vfio: 'x' is not a PCI address/],
      [['guest', 'secret', '--vfio', '1:2:3', '--json'], /--vfio: '1:2:3' is not a PCI address/],
    ];
    for (const [args, message, input] of cases) {
      it(`${args.join(' ')}`, () => {
        const result = guestmem(args, input, NO_ADDON);
        assert.equal(result.status, 2, result.stderr);
        const error = jsonError(result);
        assert.equal(error.code, 'ERR_GUESTMEM_USAGE');
        assert.match(error.message, message);
      });
    }
  });

  it('reports a failed operation under --json as its coded error on stdout, exit 1', () => {
    const result = guestmem(['convert', '--size', '64M', '--gpa', '16M', '--range', '0+4K', '--to', 'shared', '--json'], undefined, NO_ADDON);
    assert.equal(result.status, 1, result.stderr);
    const error = jsonError(result);
    assert.equal(error.code, 'ERR_GUESTMEM_NATIVE_UNAVAILABLE');
    assert.match(error.message, /native addon could not be loaded: .*No native build was found/);
  });

  it('probe without the addon says why it is missing and how to build it', () => {
    const result = guestmem(['probe', '--json'], undefined, NO_ADDON);
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.nativeAddon.ok, false);
    assert.match(report.nativeAddon.why, /No native build was found for platform=linux arch=x64/);
    assert.match(report.nativeAddon.fix, /npm rebuild guestmem/);
  });

  describe('on a terminal', () => {
    // A pseudo-terminal on stdin, from util-linux's script(1); pending where it is absent.
    before(function () {
      if (spawnSync('script', ['--version']).status !== 0) this.skip();
    });

    it('simulate with no script file on a terminal says what it expects instead of waiting', () => {
      const result = spawnSync('script', ['-qec', `${process.execPath} ${GUESTMEM} simulate`, '/dev/null'], { encoding: 'utf8', timeout: 20_000, input: '' });
      assert.equal(result.status, 2, result.stdout);
      assert.match(result.stdout, /give a script FILE, or - to type one on the terminal \(end it with Ctrl-D\)/);
    });
  });
});
