// One vocabulary in the command line (issue 26): the same situation gets the same code
// whichever command meets it, a file that cannot be read keeps its system error's code, a
// rejected conversion says why, and a mistyped command or option is answered with the
// nearest one, in one line.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { probe } from '../../lib/host/probe';
import { guestmem } from '../support/cli';

function jsonLine(stdout: string): Record<string, unknown> {
  const lines = stdout.trim().split('\n');
  assert.equal(lines.length, 1, `one JSON object on stdout, got: ${stdout}`);
  return JSON.parse(lines[0]!) as Record<string, unknown>;
}

describe('guestmem CLI: one vocabulary', () => {
  describe('a host without what a VM needs: ERR_GUESTMEM_UNSUPPORTED with a fix, from every command', () => {
    before(function () {
      // Where this host has SW-protected VMs, nothing is missing and there is nothing to refuse.
      if (probe().swProtectedVm.ok) this.skip();
    });

    const cases: string[][] = [
      ['guest', 'loop', '--no-vm', '--json'],
      ['demo', '--no-vm', '--json'],
      ['bench', '--no-vm', '--json'],
    ];
    for (const args of cases) {
      it(`${args.join(' ')}: the harness VM as the fix, with the command to run there`, () => {
        const result = guestmem(args);
        assert.equal(result.status, 1, result.stderr);
        const { error } = jsonLine(result.stdout) as { error: { code: string; message: string } };
        assert.equal(error.code, 'ERR_GUESTMEM_UNSUPPORTED');
        const again = args.filter((a) => a !== '--no-vm').join(' ');
        assert.match(error.message, /^not possible on this host: .+; fix: run the command inside the harness VM: guestmem vm -- /);
        assert.ok(error.message.includes(`guestmem vm -- ${again} `), error.message);
        // Each reason once: without /dev/kvm, KVM's reason alone, not once per KVM feature.
        const reasons = /^not possible on this host: (.*?); fix:/.exec(error.message)![1]!.split('; ');
        assert.deepEqual(reasons, [...new Set(reasons)]);
        assert.ok(reasons.filter((reason) => reason.includes('/dev/kvm')).length <= 1, error.message);
        assert.match(result.stderr, new RegExp(`^guestmem ${args[0]}: not possible on this host`));
      });
    }

    it('bench --exits-only --no-vm on a host without /dev/kvm refuses the same way (it needs only default VMs, so only there)', function () {
      if (fs.existsSync('/dev/kvm')) this.skip();
      const result = guestmem(['bench', '--exits-only', '--no-vm', '--json']);
      assert.equal(result.status, 1, result.stderr);
      const { error } = jsonLine(result.stdout) as { error: { code: string; message: string } };
      assert.equal(error.code, 'ERR_GUESTMEM_UNSUPPORTED');
      assert.match(error.message, /^not possible on this host: .+; fix: run the command inside the harness VM: guestmem vm -- bench --exits-only --json /);
    });

    it('convert on a host without /dev/kvm says the same code (the kernel\'s errno and syscall kept in the library error)', function () {
      if (fs.existsSync('/dev/kvm')) this.skip();
      const result = guestmem(['convert', '--size', '4M', '--gpa', '16M', '--range', '0+4K', '--to', 'shared', '--json']);
      assert.equal(result.status, 1, result.stderr);
      const { error } = jsonLine(result.stdout) as { error: { code: string; message: string } };
      assert.equal(error.code, 'ERR_GUESTMEM_UNSUPPORTED');
      assert.match(error.message, /ENOENT: no such file or directory, open '\/dev\/kvm'.*; fix: run the command inside the harness VM: guestmem vm -- convert /);
    });
  });

  describe('a script or trace that cannot be read keeps its system error\'s code (exit 2: the path is what to fix)', () => {
    const missing = path.join(os.tmpdir(), `guestmem-no-such-file-${process.pid}.txt`);
    for (const command of ['simulate', 'run', 'replay']) {
      it(`${command} of a file that does not exist: ENOENT, with the path`, () => {
        const result = guestmem([command, missing, '--json']);
        assert.equal(result.status, 2, result.stderr);
        const { error } = jsonLine(result.stdout) as { error: { code: string; message: string } };
        assert.equal(error.code, 'ENOENT');
        assert.ok(error.message.includes(`open '${missing}'`), error.message);
      });
    }

    it('simulate of a directory: EISDIR', () => {
      const result = guestmem(['simulate', os.tmpdir(), '--json']);
      assert.equal(result.status, 2, result.stderr);
      assert.equal((jsonLine(result.stdout) as { error: { code: string } }).error.code, 'EISDIR');
    });
  });

  describe('simulate --history says why a conversion was rejected', () => {
    const script = 'block 1M\nlisten d 0 1M\nconvert 3 4K shared\nconvert 0 4K shared\nconvert 2M 4K shared\n';

    it('under --json: each rejected record carries the error\'s code and message; a done one neither', () => {
      const result = guestmem(['simulate', '-', '--history', '--json'], script);
      assert.equal(result.status, 0, result.stderr);
      const { history } = jsonLine(result.stdout) as { history: unknown[] };
      assert.deepEqual(history, [
        { offset: 3, size: 4096, to: 'shared', outcome: 'rejected', code: 'ERR_OUT_OF_RANGE', reason: 'range offset 0x3 is not aligned to the granularity 4096' },
        { offset: 0, size: 4096, to: 'shared', outcome: 'done' },
        { offset: 2097152, size: 4096, to: 'shared', outcome: 'rejected', code: 'ERR_OUT_OF_RANGE', reason: 'range [0x200000, +0x1000) is outside the block of 0x100000 bytes' },
      ]);
    });

    it('as text: the reason after the outcome', () => {
      const result = guestmem(['simulate', '-', '--history'], script);
      assert.equal(result.status, 0, result.stderr);
      assert.deepEqual(result.stdout.split('\n').slice(0, 3), [
        'convert 0x3 0x1000 shared: rejected (ERR_OUT_OF_RANGE: range offset 0x3 is not aligned to the granularity 4096)',
        'convert 0x0 0x1000 shared: done',
        'convert 0x200000 0x1000 shared: rejected (ERR_OUT_OF_RANGE: range [0x200000, +0x1000) is outside the block of 0x100000 bytes)',
      ]);
    });
  });

  describe('mistyped commands and options', () => {
    it('an unknown command: exit 2, one line naming the nearest command, under --json the same message', () => {
      const result = guestmem(['simualte', 'x.txt']);
      assert.equal(result.status, 2);
      assert.equal(result.stdout, '');
      assert.equal(result.stderr, "guestmem: unknown command 'simualte'; did you mean 'simulate'?\n(guestmem --help lists the commands)\n");
      const json = guestmem(['simualte', '--json']);
      assert.deepEqual(jsonLine(json.stdout), { error: { code: 'ERR_GUESTMEM_USAGE', message: "unknown command 'simualte'; did you mean 'simulate'?" } });
    });

    it('an unknown command far from every one: no guess', () => {
      const result = guestmem(['frobnicate']);
      assert.equal(result.status, 2);
      assert.equal(result.stderr, "guestmem: unknown command 'frobnicate'\n(guestmem --help lists the commands)\n");
    });

    it('help for an unknown command is an unknown command (exit 2), not the overview', () => {
      const result = guestmem(['help', 'bogus']);
      assert.equal(result.status, 2);
      assert.equal(result.stdout, '');
      assert.match(result.stderr, /^guestmem: unknown command 'bogus'/);
      assert.equal(guestmem(['help', 'probe']).status, 0);
    });

    it('an unknown option near a known one: the nearest named, exit 2, the parser\'s code', () => {
      const result = guestmem(['simulate', '-', '--jsno'], 'block 1M\n');
      assert.equal(result.status, 2);
      assert.match(result.stderr, /^guestmem simulate: Unknown option '--jsno'.*; did you mean --json\?\n\(see guestmem simulate --help\)\n$/);
      const json = guestmem(['simulate', '-', '--histroy', '--json'], 'block 1M\n');
      const { error } = jsonLine(json.stdout) as { error: { code: string; message: string } };
      assert.equal(error.code, 'ERR_PARSE_ARGS_UNKNOWN_OPTION');
      assert.match(error.message, /; did you mean --history\?$/);
    });

    it('-v prints the version, as --version and -V do', () => {
      const result = guestmem(['-v']);
      assert.equal(result.status, 0);
      assert.equal(result.stdout, guestmem(['--version']).stdout);
    });
  });
});
