// --vm-type and the VM-types bitmap, without a kernel: what each command accepts, which type
// is the default for a given KVM_CAP_VM_TYPES, and that a host lacking a type is told so in
// one line with the fix. The kernel suite (test/kernel/vm-types.test.ts) runs the commands.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bestPrivateMemoryVmType, maskHasVmType, missingVmTypeLine, vmTypeName, vmTypesInMask } from '../../lib/kvm/vm-types';
import { parseVmTypeOption } from '../../lib/cli/vm-type-option';
import { UsageError } from '../../lib/cli/usage-error';
import { guestmem } from '../support/cli';
import { hostReport } from '../support/requires';

describe('--vm-type', () => {
  it('takes the private-memory type names and KVM_CREATE_VM numbers', () => {
    assert.deepEqual(
      ['sw-protected', 'snp', 'tdx', '0', '1', '4', '5', '0x1f', '4294967295', undefined].map((v) => parseVmTypeOption(v)),
      ['sw-protected', 'snp', 'tdx', 0, 1, 4, 5, 31, 4294967295, undefined],
    );
  });

  it('refuses anything else as a usage error that names the choices', () => {
    for (const bad of ['', 'SNP', 'default', 'sev', '-1', '1.5', '4294967296', '0x100000000', '01', ' 1', 'snp,tdx', 'constructor']) {
      assert.throws(() => parseVmTypeOption(bad), (e: unknown) => e instanceof UsageError && /--vm-type takes snp, tdx, sw-protected or a KVM_CREATE_VM type number/.test((e as Error).message), bad);
    }
  });

  it('defaults to the best type the bitmap allows for private memory: SNP, then TDX, then SW-protected', () => {
    const bit = (...types: number[]) => types.reduce((mask, t) => mask | (1 << t), 0);
    assert.deepEqual(
      [0, bit(0), bit(0, 1), bit(0, 4), bit(0, 5), bit(0, 1, 4), bit(0, 1, 5), bit(0, 2, 3), bit(0, 1, 2, 3, 4, 5)].map(bestPrivateMemoryVmType),
      [null, null, 'sw-protected', 'snp', 'tdx', 'snp', 'tdx', null, 'snp'],
    );
  });

  it('reads the bitmap as KVM defines it (0 before KVM_CAP_VM_TYPES existed: default VMs only)', () => {
    assert.deepEqual(vmTypesInMask(0), ['default']);
    assert.deepEqual(vmTypesInMask(0x3), ['default', 'sw-protected']);
    assert.deepEqual(vmTypesInMask(0x3f), ['default', 'sw-protected', 'sev', 'sev-es', 'snp', 'tdx']);
    assert.equal(maskHasVmType(0, 0), true);
    assert.equal(maskHasVmType(0, 'sw-protected'), false);
    assert.equal(maskHasVmType(0x3, 40), false, 'a type past the bitmap is not there');
    assert.equal(vmTypeName(4), 'snp');
    assert.equal(vmTypeName(9), '9');
  });

  it('says what a host lacks in one line, with the fix for that type', () => {
    const cases: Array<[Parameters<typeof missingVmTypeLine>[0], RegExp]> = [
      ['snp', /^this host cannot create a snp VM \(KVM_X86 type 4\): KVM_CAP_VM_TYPES is 0x3 \(default, sw-protected\); fix: .*sev_snp=1.*\/dev\/sev/],
      ['tdx', /^this host cannot create a tdx VM \(KVM_X86 type 5\): .*; fix: .*Linux 6\.16\+.*kvm_intel\.tdx=1/],
      ['sw-protected', /CONFIG_KVM_SW_PROTECTED_VM.*guestmem vm -- <command>/],
      [9, /cannot create a 9 VM \(KVM_X86 type 9\)/],
    ];
    for (const [type, expected] of cases) {
      const line = missingVmTypeLine(type, 0x3);
      assert.match(line, expected);
      assert.ok(!line.includes('\n'), 'one line');
    }
  });

  it('is in the help of every command that makes a VM, and only there', () => {
    for (const command of ['convert', 'run', 'replay', 'guest', 'bench', 'demo', 'probe', 'simulate', 'vm']) {
      const help = guestmem([command, '--help']);
      assert.equal(help.status, 0);
      assert.equal(/--vm-type TYPE/.test(help.stdout), !['probe', 'simulate', 'vm'].includes(command), command);
    }
  });

  // A bad --vm-type is found before anything else: exit 2 whatever the host has.
  const commands: string[][] = [
    ['convert', '--size', '4M', '--gpa', '16M', '--range', '0+4K', '--to', 'shared'],
    ['run', '/dev/null'],
    ['replay', '/dev/null'],
    ['guest', 'secret'],
    ['bench'],
    ['demo'],
  ];
  for (const args of commands) {
    it(`guestmem ${args[0]} --vm-type bogus exits 2 naming the choices`, () => {
      const result = guestmem([...args, '--vm-type', 'bogus']);
      assert.equal(result.status, 2, result.stderr);
      assert.match(result.stderr, new RegExp(`^guestmem ${args[0]}: --vm-type takes snp, tdx, sw-protected or a KVM_CREATE_VM type number`));
    });
  }

  describe('on a host without SNP or TDX', () => {
    // On this host (no SNP, no TDX: with or without /dev/kvm), before any VM is made: one line
    // with the fix, exit 1. The harness VM is not offered: it has neither type.
    const script = path.join(os.tmpdir(), `guestmem-vm-type-${process.pid}.txt`);
    const trace = path.join(os.tmpdir(), `guestmem-vm-type-${process.pid}.log`);
    before(function () {
      // Pending on a host that has SNP or TDX: there these commands make the VM.
      const report = hostReport();
      if (report.snpVm.ok || report.tdxVm.ok) this.skip();
      fs.writeFileSync(script, 'block 1M\nconvert 0 4K shared\n');
      fs.writeFileSync(trace, '1@1.000001:kvm_convert_memory start 0x1000000 size 0x1000 private_to_shared\n');
    });
    after(() => {
      fs.rmSync(script, { force: true });
      fs.rmSync(trace, { force: true });
    });
    for (const command of commands) {
      it(`guestmem ${command[0]} --vm-type snp / tdx on a host without them: one line with the fix, exit 1`, () => {
        const args = command[0] === 'run' ? ['run', script] : command[0] === 'replay' ? ['replay', trace, '--gpa', '16M', '--size', '1M'] : command;
        for (const [type, fix] of [['snp', /sev_snp=1/], ['tdx', /kvm_intel\.tdx=1/]] as const) {
          const result = guestmem([...args, '--vm-type', type]);
          assert.equal(result.status, 1, result.stderr);
          assert.equal(result.stdout, '');
          const lines = result.stderr.trimEnd().split('\n');
          assert.equal(lines.length, 1, result.stderr);
          assert.match(lines[0]!, new RegExp(`^guestmem ${args[0]}: `));
          assert.match(lines[0]!, fix);
          assert.doesNotMatch(lines[0]!, /guestmem vm --/, 'the harness VM has no SNP or TDX: not offered');
        }
      });
    }
  });

  it('replay --dry-run refuses --vm-type: a dry run touches no kernel', () => {
    const result = guestmem(['replay', '/dev/null', '--dry-run', '--vm-type', 'snp']);
    assert.equal(result.status, 2);
    assert.match(result.stderr, /--vm-type needs a real VM; --dry-run touches no kernel/);
  });
});
