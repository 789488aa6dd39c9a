// VM types on a real kernel (the harness VM has default and SW-protected VMs, never SNP or
// TDX): every command that makes a VM runs with --vm-type sw-protected; --vm-type snp and
// tdx end in one line that says why and what to do, exit 1, never a bare errno; the library
// refuses them the same way; probe --require passes for what the VM has and fails, naming
// it, for what it lacks. The SNP and TDX initialization itself awaits a real host (see
// docs/confidential-hosts.md); its calls are proven against a stand-in in test/unit/confidential-vm-init.test.ts.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Kvm } from '../../lib/kvm/kvm';
import { hostReport, requires } from '../support/requires';
import { findEdu } from '../support/edu';
import { guestmem } from '../support/cli';

/** Each command that makes a VM, with arguments that keep it short under emulation. */
function commands(dir: string, edu: string): Array<[string, string[]]> {
  const script = path.join(dir, 'script.txt');
  fs.writeFileSync(script, 'block 1M\nlisten dev 0 1M\nconvert 0 64K shared\nconvert 4K 4K private\n');
  const trace = path.join(dir, 'trace.log');
  fs.writeFileSync(trace, '1@1.000001:kvm_convert_memory start 0x1000000 size 0x10000 private_to_shared\n');
  return [
    ['convert', ['convert', '--size', '1M', '--gpa', '16M', '--range', '0+64K', '--to', 'shared', '--vfio', edu, '--json']],
    ['run', ['run', script, '--vfio', edu, '--json']],
    ['replay', ['replay', trace, '--gpa', '16M', '--size', '1M', '--json']],
    ['guest', ['guest', 'loop', '--iterations', '5', '--json']],
    ['bench', ['bench', '--iterations', '1', '--pages', '1', '--guest-iterations', '0', '--no-far-end', '--no-prefault', '--no-vfio', '--json']],
    ['demo', ['demo', '--json']],
  ];
}

describe('VM types: --vm-type on every command, on a kernel with SW-protected VMs only', function () {
  this.timeout(600_000);
  let dir: string;
  let edu: string;

  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device'));
  before(() => {
    edu = findEdu()!;
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-vm-types-'));
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the VM has SW-protected VMs and neither SNP nor TDX (what the rest of this file relies on)', () => {
    const report = hostReport();
    assert.equal(report.privateMemoryVm.best, 'sw-protected');
    assert.deepEqual(report.privateMemoryVm.types, ['sw-protected']);
    assert.equal(report.snpVm.ok, false);
    assert.equal(report.snpVm.vmTypeBit, false);
    assert.equal(report.tdxVm.ok, false);
    assert.equal(report.tdxVm.vmTypeBit, false);
    assert.match(report.snpVm.fix!, /sev_snp=1/);
    assert.match(report.tdxVm.fix!, /kvm_intel\.tdx=1/);
  });

  it('every command runs with --vm-type sw-protected (and convert says which type it made)', () => {
    for (const [name, args] of commands(dir, edu)) {
      const result = guestmem([...args, '--vm-type', 'sw-protected']);
      assert.equal(result.status, 0, `${name}: ${result.stderr}${result.stdout.slice(0, 2000)}`);
      const report = JSON.parse(result.stdout);
      if (name === 'convert') assert.equal(report.vmType, 'sw-protected');
      if (name === 'demo' || name === 'guest') assert.equal(report.ok, true, name);
    }
  });

  it('without --vm-type a command takes the best type the host has: here SW-protected', () => {
    const result = guestmem(['convert', '--size', '1M', '--gpa', '16M', '--range', '0+4K', '--to', 'shared', '--json']);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(JSON.parse(result.stdout).vmType, 'sw-protected');
    const byNumber = guestmem(['convert', '--size', '1M', '--gpa', '16M', '--range', '0+4K', '--to', 'shared', '--json', '--vm-type', '1']);
    assert.equal(byNumber.status, 0, byNumber.stderr);
    assert.equal(JSON.parse(byNumber.stdout).vmType, 'sw-protected');
  });

  for (const type of ['snp', 'tdx'] as const) {
    it(`every command with --vm-type ${type}: one line with the fix, exit 1 (and the coded error in JSON)`, () => {
      const fix = type === 'snp' ? /fix: an AMD EPYC host with SEV-SNP enabled .*sev_snp=1/ : /fix: an Intel Xeon host with TDX enabled .*kvm_intel\.tdx=1/;
      for (const [name, args] of commands(dir, edu)) {
        const result = guestmem([...args, '--vm-type', type]);
        assert.equal(result.status, 1, `${name}: ${result.stderr}`);
        // --json: the error as JSON on stdout as well (the CLI's contract), the same line on stderr.
        const json = JSON.parse(result.stdout) as { error: { code: string; message: string } };
        assert.equal(json.error.code, 'ERR_GUESTMEM_UNSUPPORTED', name);
        const lines = result.stderr.trimEnd().split('\n');
        assert.equal(lines.length, 1, `${name}: one line, got\n${result.stderr}`);
        assert.match(lines[0]!, new RegExp(`^guestmem ${name}: this host cannot create a ${type} VM \\(KVM_X86 type ${type === 'snp' ? 4 : 5}\\): KVM_CAP_VM_TYPES is 0x3 \\(default, sw-protected\\); `));
        assert.match(lines[0]!, fix);
      }
    });
  }

  it('a type number the host lacks, and a default VM (no private memory), are one line and exit 1 too', () => {
    const base = ['convert', '--size', '1M', '--gpa', '16M', '--range', '0+4K', '--to', 'shared'];
    const unknown = guestmem([...base, '--vm-type', '9']);
    assert.equal(unknown.status, 1);
    assert.match(unknown.stderr, /^guestmem convert: this host cannot create a 9 VM \(KVM_X86 type 9\): KVM_CAP_VM_TYPES is 0x3 .*; fix: a kernel whose KVM_CAP_VM_TYPES has that bit\n$/);
    const plain = guestmem([...base, '--vm-type', '0']);
    assert.equal(plain.status, 1);
    assert.match(plain.stderr, /^guestmem convert: this VM \(type 0\) has (no guest_memfd and )?no KVM_MEMORY_ATTRIBUTE_PRIVATE: create it as 'sw-protected' \(or 'snp', 'tdx'\).*\n$/);
  });

  it('the library refuses an SNP or TDX VM in one line with the fix, keeping the kernel\'s errno', () => {
    using kvm = Kvm.open();
    for (const [type, number] of [['snp', 4], ['tdx', 5]] as const) {
      assert.throws(() => kvm.createVm(type), (e: Error & { code?: string; errno?: number; syscall?: string }) => {
        assert.equal(e.code, 'ERR_GUESTMEM_UNSUPPORTED');
        assert.equal(e.errno, -22);
        assert.equal(e.syscall, 'ioctl(KVM_CREATE_VM)');
        assert.match(e.message, new RegExp(`^this host cannot create a ${type} VM \\(KVM_X86 type ${number}\\): .*; fix: .*EINVAL`));
        assert.ok(!e.message.includes('\n'));
        return true;
      });
    }
    // A type the host has: created, and nothing to initialize after KVM_CREATE_VM.
    using vm = kvm.createVm('sw-protected');
    assert.deepEqual(vm.initialization, { kind: 'none' });
  });
});

describe('probe --require: a gate for a hardware job', function () {
  this.timeout(120_000);
  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device', 'iommufd', 'vfio-type1'));

  const present = 'vm-type=sw-protected,vm-type=default,kvm,private-memory-vm,sw-protected-vm,guest-memfd,memory-attributes,pre-fault,iommu,vfio,vfio-type1,iommufd,vfio-device';

  it('passes (exit 0) when everything required is there', () => {
    const result = guestmem(['probe', '--require', present]);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /required: all present \(vm-type=sw-protected, vm-type=default, kvm, .*, vfio-device\)/);
    assert.equal(result.stderr, '');
    const json = guestmem(['probe', '--json', '--require', 'vm-type=1', '--require', 'vfio,iommufd']);
    assert.equal(json.status, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout).required, { ok: true, requirements: ['vm-type=1', 'vfio', 'iommufd'], missing: [] });
  });

  it('fails (exit 1) naming exactly what is missing, with why and the fix', () => {
    const result = guestmem(['probe', '--require', 'vm-type=snp,vfio,iommufd,tdx-vm']);
    assert.equal(result.status, 1);
    assert.match(result.stderr, /^guestmem probe: missing vm-type=snp, tdx-vm: vm-type=snp: KVM_CAP_VM_TYPES is 0x3 \(default, sw-protected\): no snp VMs \(fix: .*sev_snp=1.*\); tdx-vm: .*no KVM_X86_TDX_VM.*\(fix: .*kvm_intel\.tdx=1.*\)\n$/);
    const json = guestmem(['probe', '--json', '--require', 'vm-type=tdx,snp-vm,kvm']);
    assert.equal(json.status, 1);
    const required = JSON.parse(json.stdout).required;
    assert.equal(required.ok, false);
    assert.deepEqual(required.missing.map((m: { name: string }) => m.name), ['vm-type=tdx', 'snp-vm']);
    assert.ok(required.missing.every((m: { why?: string; fix?: string }) => m.why && m.fix));
  });

  it('refuses an unknown requirement as a usage error (exit 2)', () => {
    const result = guestmem(['probe', '--require', 'vm-type=snp,gpu']);
    assert.equal(result.status, 2);
    assert.match(result.stderr, /unknown requirement 'gpu'; known: vm-type=<type>, kvm, private-memory-vm/);
  });
});
