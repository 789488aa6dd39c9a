// The guestmem command on the host: usage errors, help, exit codes and JSON shapes, with the
// commands that need no kernel (simulate, replay --dry-run, probe).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { guestmem } from '../support/cli';

const SCRIPT = `block 1M
# a VFIO-like listener on all of it, another on the upper half
listen a 0 1M
listen b 512K 512K
convert 0 64K shared
convert 1 4096 shared        # unaligned: rejected
convert 0 2M shared          # outside the block: rejected
convert 32K 600K private
unlisten b
convert 0x1000 0x1000 shared
`;

describe('guestmem CLI', () => {
  it('prints help and exits 0 without a command or with --help, 2 for an unknown command', () => {
    const bare = guestmem([]);
    assert.equal(bare.status, 0);
    assert.match(bare.stdout, /usage: guestmem <command>/);
    assert.equal(guestmem(['--help']).status, 0);
    const unknown = guestmem(['frobnicate']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /unknown command 'frobnicate'/);
  });

  describe('guest', () => {
    for (const [args, message] of [
      [['guest'], /give one program: secret, random, loop/],
      [['guest', 'nonsense'], /unknown program 'nonsense'/],
      [['guest', 'random', '--vcpus', '0'], /--vcpus takes an integer in 1\.\.8, got '0'/],
      [['guest', 'random', '--iterations', '1.5'], /--iterations takes an integer/],
      [['guest', 'random', '--seed', 'x'], /--seed takes a number/],
      [['guest', 'secret', '--backend', 'bogus'], /--backend must be auto, type1 or iommufd/],
      [['guest', 'secret', '--svg', ''], /--svg needs a file name/],
    ] as Array<[string[], RegExp]>) {
      it(`exits 2 before touching the kernel: ${args.join(' ')}`, () => {
        const result = guestmem(args);
        assert.equal(result.status, 2, result.stderr);
        assert.match(result.stderr, message);
      });
    }
  });

  describe('simulate', () => {
    it('prints exactly one JSON object of the documented shape', () => {
      const result = guestmem(['simulate', '-', '--json'], SCRIPT);
      assert.equal(result.status, 0, result.stderr);
      const lines = result.stdout.trim().split('\n');
      assert.equal(lines.length, 1);
      const report = JSON.parse(lines[0]!);
      assert.deepEqual(Object.keys(report), ['granule', 'pages', 'shared', 'unplugged', 'listeners', 'rejected', 'ops', 'plugs', 'elapsedNs']);
      const { elapsedNs, ...rest } = report;
      assert.ok(Number.isInteger(elapsedNs) && elapsedNs > 0);
      assert.deepEqual(rest, {
        granule: 4096,
        pages: 256,
        shared: [[0, 8]],
        unplugged: [],
        listeners: { a: { mapped: [[0, 8]], errors: 0 } },
        rejected: 2,
        ops: 5,
        plugs: 0,
      });
    });

    it('plugs and unplugs: the listener holds shared ∩ plugged, --json names the unplugged runs, the map draws them ×', () => {
      const script = 'block 64K 4K 16K\nlisten a 0 64K\nconvert 0 64K shared\nunplug 16K 32K\nplug 32K 16K\nunplug 4K 16K\nconvert 16K 16K private\n';
      const json = guestmem(['simulate', '-', '--json'], script);
      assert.equal(json.status, 0, json.stderr);
      const report = JSON.parse(json.stdout);
      assert.deepEqual([report.shared, report.unplugged, report.listeners.a, report.rejected, report.plugs], [
        [[0, 4], [8, 8]], [[4, 4]], { mapped: [[0, 4], [8, 8]], errors: 0 }, 1, 3,
      ]);
      const text = guestmem(['simulate', '-'], script);
      assert.match(text.stdout, /\[████××××████████\]/);
      assert.match(text.stdout, /× unplugged/);
    });

    it('reads a file, prints a human summary with the map strip, and writes an SVG', () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-cli-'));
      const script = path.join(dir, 'script.txt');
      const svg = path.join(dir, 'map.svg');
      fs.writeFileSync(script, SCRIPT);
      const result = guestmem(['simulate', script, '--svg', svg]);
      assert.equal(result.status, 0, result.stderr);
      assert.match(result.stdout, /shared: 8 pages in 1 run; private: 248 pages/);
      assert.match(result.stdout, /conversions: 5 \(2 rejected, 0 failed\)/);
      assert.match(result.stdout, /listener a: 8 pages mapped in 1 runs, 0 double map\/unmap errors/);
      assert.match(result.stdout, /\[██····/);
      const picture = fs.readFileSync(svg, 'utf8');
      assert.match(picture, /^<svg /);
      // Each conversion its own row here; grey marks the two rejected ones, and the legend's swatch.
      assert.equal((picture.match(/fill="#b0b0b0"/g) ?? []).length, 3, 'the two rejected conversions are grey');
      fs.rmSync(dir, { recursive: true });
    });

    it('exits 2 with the line number of a malformed line', () => {
      for (const [script, pattern] of [
        ['block 1M\nconvert 0 4K sideways\n', /line 2: convert target must be 'shared' or 'private'/],
        ['block 1M\n\nlisten a 0\n', /line 3: expected 'listen <id> <offset> <size>'/],
        ['convert 0 4K shared\n', /line 1: 'convert' before any 'block' line/],
        ['block lots\n', /line 1: block size: 'lots' is not a size/],
        ['block 1M\nunlisten ghost\n', /line 2: no listener 'ghost'/],
        ['block 1M\nlisten a 0 2M\n', /line 2: listen a: section .* is outside the block/],
        ['block 1M\nfly 0\n', /line 2: unknown keyword 'fly'/],
      ] as const) {
        const result = guestmem(['simulate', '-'], script);
        assert.equal(result.status, 2, script);
        assert.match(result.stderr, pattern);
      }
    });
  });

  describe('replay --dry-run', () => {
    const trace = [
      '12345@1700000000.000001:kvm_convert_memory start 0x100000 size 0x10000 private_to_shared',
      "12345@1700000000.000002:ram_block_attributes_state_change offset 0x100000 size 0x10000 from 'discarded' to 'populated'",
      'some_other_event foo=1',
      'kvm_convert_memory start 0x104000 size 0x8000 shared_to_private',
      "ram_block_attributes_state_change offset 0x104000 size 0x8000 from 'populated' to 'discarded'",
      'kvm_convert_memory start 0x100000 size 0x20000 private_to_shared',
      "ram_block_attributes_state_change offset 0x100000 size 0x20000 from 'mixture' to 'populated'",
      '',
    ].join('\n');

    it('replays by gpa and checks every state change against the tracker', () => {
      const result = guestmem(['replay', '-', '--dry-run', '--gpa', '0', '--size', '4M', '--json'], trace);
      assert.equal(result.status, 0, result.stderr + result.stdout);
      const report = JSON.parse(result.stdout);
      assert.deepEqual(report.shared, [[256, 32]]);
      assert.equal(report.checked, 3);
      assert.deepEqual(report.mismatches, []);
      assert.equal(report.skippedLines, 1);
      assert.equal(report.inferred, false);
      assert.deepEqual(report.listeners.recorder, { mapped: [[256, 32]], errors: 0 });
    });

    it('infers the block when not told, and says so', () => {
      const result = guestmem(['replay', '-', '--dry-run'], trace);
      assert.equal(result.status, 0, result.stderr);
      assert.match(result.stdout, /block inferred from the trace's addresses: gpa 0x0, size 2 MiB/);
    });

    it('exits 1 when the trace disagrees with the tracker', () => {
      const wrong = trace.replace("from 'mixture' to 'populated'", "from 'discarded' to 'populated'");
      const result = guestmem(['replay', '-', '--dry-run', '--gpa', '0', '--size', '4M', '--json'], wrong);
      assert.equal(result.status, 1);
      assert.deepEqual(JSON.parse(result.stdout).mismatches, ['line 7: from private in the trace, mixture here']);
    });

    it('exits 2 for a trace without conversions, or half a block', () => {
      assert.equal(guestmem(['replay', '-', '--dry-run'], 'nothing here\n').status, 2);
      const half = guestmem(['replay', '-', '--dry-run', '--gpa', '0'], trace);
      assert.equal(half.status, 2);
      assert.match(half.stderr, /give both --size and --gpa/);
    });
  });

  it('rejects bad options with exit 2 and a message saying what to fix', () => {
    const cases: Array<[string[], RegExp]> = [
      [['convert', '--gpa', '16M', '--range', '0+4K', '--to', 'shared'], /needs --size and --gpa/],
      [['convert', '--size', '4M', '--gpa', '16M', '--range', '0+4K', '--to', 'public'], /--to must be private or shared/],
      [['convert', '--size', '4M', '--gpa', '16M', '--range', '4K', '--to', 'shared'], /is not OFFSET\+LENGTH/],
      [['convert', '--size', '4M', '--gpa', '16M', '--bogus'], /Unknown option '--bogus'/],
      [['convert', '--size', '4M', '--gpa', '16M', '--range', '0+4K', '--to', 'shared', '--backend', 'vfio2'], /--backend must be auto, type1 or iommufd/],
      [['bench', '--iterations', '0'], /--iterations takes an integer in 1\.\./],
      [['vm'], /give the guestmem command to run in the VM/],
      [['vm', '--kernel', '6.1', '--', 'probe'], /--kernel must be one of 6\.12, 7\.2, got '6\.1'/],
      [['run'], /give the script file/],
    ];
    for (const [args, pattern] of cases) {
      const result = guestmem(args);
      assert.equal(result.status, 2, args.join(' '));
      assert.match(result.stderr, pattern);
    }
  });

  it('probes the host and answers for every feature, as JSON', () => {
    const result = guestmem(['probe', '--json']);
    assert.equal(result.status, 0);
    const report = JSON.parse(result.stdout);
    for (const key of ['nativeAddon', 'kvm', 'swProtectedVm', 'guestMemfd', 'userMemory2', 'memoryAttributes', 'guestMemfdFlags', 'preFaultMemory', 'iommuGroups', 'vfioDevices', 'type1', 'iommufd']) {
      assert.equal(typeof report[key].ok, 'boolean', key);
      if (!report[key].ok) assert.equal(typeof report[key].why, 'string', `${key} says why not`);
    }
  });
});
