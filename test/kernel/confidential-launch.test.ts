// The SEV-SNP and TDX launch calls on a real kernel that has neither type (the harness VM:
// SW-protected VMs only). What can be proven here: each new ioctl, given a SW-protected VM's
// fd (or one of its vCPUs'), comes back as the kernel's error (errno, code, syscall), never a
// crash, and guestmem turns it into one line (ERR_GUESTMEM_LAUNCH_FAILED); a vCPU of a
// launch that has not ended never reaches KVM_RUN; and GuestVm, on a VM whose launch is a
// recording stand-in, puts the boot region into private memory through the launch in the
// documented order and ends it before any vCPU runs. Every call succeeding, and a guest
// running, awaits a real SNP or TDX host (test/host/confidential-vm.test.ts).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Kvm, type Vm } from '../../lib/kvm/kvm';
import { SnpLaunch } from '../../lib/kvm/snp-launch';
import { TdxLaunch } from '../../lib/kvm/tdx-launch';
import { nativeLaunchCalls, type LaunchCalls } from '../../lib/kvm/vm-launch';
import { native } from '../../lib/common/native';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { GuestVm } from '../../lib/vmm/guest-vm';
import { supportedCpuid, Vcpu } from '../../lib/vmm/vcpu';
import { requires } from '../support/requires';

const MiB = 1 << 20;
const GPA = 16 * MiB;

type KernelError = Error & { code?: string; errno?: number; syscall?: string };

function kernelRefusal(fn: () => unknown, subcommand: string): KernelError {
  let caught: KernelError | undefined;
  try {
    fn();
  } catch (error) {
    caught = error as KernelError;
  }
  assert.ok(caught, `${subcommand} on a SW-protected VM succeeded`);
  assert.match(caught.code ?? '', /^E[A-Z0-9]+$/, `${subcommand}: ${caught.message}`);
  assert.ok(typeof caught.errno === 'number' && caught.errno < 0, `${subcommand}: errno ${caught.errno}`);
  assert.equal(caught.syscall, `ioctl(KVM_MEMORY_ENCRYPT_OP, ${subcommand})`);
  return caught;
}

/** Records each launch call; the vCPU's CPUID is really set (it is an ordinary ioctl). */
function recording(log: string[]): LaunchCalls {
  return {
    openSevDevice: () => fs.openSync('/dev/null', 'r'),
    closeFd: (fd) => fs.closeSync(fd),
    snpLaunchStart: () => log.push('SNP_LAUNCH_START'),
    snpLaunchUpdate: (_vm, _sev, gpa, source, size, type) => {
      log.push(`SNP_LAUNCH_UPDATE gpa=0x${gpa.toString(16)} size=0x${size.toString(16)} type=${type} source=${source % 4096n === 0n && source !== 0n ? 'page-aligned' : source}`);
      return { gpa: gpa + size, source: source + size, size: 0n };
    },
    snpLaunchFinish: () => log.push('SNP_LAUNCH_FINISH'),
    setCpuid: (fd, entries) => {
      native().kvmSetCpuid2(fd, entries);
      log.push('SET_CPUID2');
    },
    // The TD's CPUID comes back empty: KVM's supported one is then set whole.
    tdxGetCpuid: () => {
      log.push('TDX_GET_CPUID');
      return new Uint8Array(0);
    },
    tdxInitVcpu: (_fd, rcx) => log.push(`TDX_INIT_VCPU rcx=0x${rcx.toString(16)}`),
    tdxInitMemRegion: (_fd, source, gpa, pages, measure) => log.push(`TDX_INIT_MEM_REGION gpa=0x${gpa.toString(16)} pages=${pages} measure=${measure} source=${source % 4096n === 0n && source !== 0n ? 'page-aligned' : source}`),
    tdxFinalizeVm: () => log.push('TDX_FINALIZE_VM'),
  };
}

describe('SNP and TDX launch calls on a kernel with SW-protected VMs only', function () {
  this.timeout(120_000);
  let kvm: Kvm;
  let vm: Vm;

  before(requires('sw-protected-vm', 'memory-attributes'));
  beforeEach(() => {
    kvm = Kvm.open();
    vm = kvm.createVm('sw-protected');
  });
  afterEach(() => kvm?.close());

  it('each SNP launch ioctl on a SW-protected VM fd is the kernel\'s error, not a crash', () => {
    const sev = fs.openSync('/dev/null', 'r');
    try {
      kernelRefusal(() => native().kvmSevSnpLaunchStart(vm.fd, sev, 0x30000n, undefined, 0), 'KVM_SEV_SNP_LAUNCH_START');
      kernelRefusal(() => native().kvmSevSnpLaunchUpdate(vm.fd, sev, GPA, 0, 4096, 1), 'KVM_SEV_SNP_LAUNCH_UPDATE');
      kernelRefusal(() => native().kvmSevSnpLaunchFinish(vm.fd, sev, new Uint8Array(32)), 'KVM_SEV_SNP_LAUNCH_FINISH');
    } finally {
      fs.closeSync(sev);
    }
  });

  it('each TDX launch ioctl on a SW-protected VM (or its vCPU) fd is the kernel\'s error, not a crash', () => {
    const vcpu = Vcpu.create(kvm, vm, 0);
    kernelRefusal(() => native().kvmTdxInitVcpu(vcpu.fd, 0n), 'KVM_TDX_INIT_VCPU');
    kernelRefusal(() => native().kvmTdxGetCpuid(vcpu.fd), 'KVM_TDX_GET_CPUID');
    kernelRefusal(() => native().kvmTdxInitMemRegion(vcpu.fd, 0x7f0000000000n, GPA, 1, true), 'KVM_TDX_INIT_MEM_REGION');
    kernelRefusal(() => native().kvmTdxFinalizeVm(vm.fd), 'KVM_TDX_FINALIZE_VM');
  });

  it('guestmem turns the kernel\'s refusal into one line that names the step and keeps errno and syscall', () => {
    const snp = new SnpLaunch(vm.fd, { ...nativeLaunchCalls(), openSevDevice: () => fs.openSync('/dev/null', 'r') });
    assert.throws(() => snp.start(), (e: KernelError) => {
      assert.equal(e.code, 'ERR_GUESTMEM_LAUNCH_FAILED');
      assert.match(e.message, /^KVM_SEV_SNP_LAUNCH_START failed: E[A-Z]+: .*, ioctl\(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_SNP_LAUNCH_START\); check the SEV firmware/);
      assert.ok(!e.message.includes('\n'));
      assert.equal(e.syscall, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_SNP_LAUNCH_START)');
      assert.ok((e.errno ?? 0) < 0);
      return true;
    });

    const tdx = new TdxLaunch(vm.fd);
    vm.launch = tdx;
    const vcpu = Vcpu.create(kvm, vm, 0);
    assert.throws(() => tdx.initVcpu(vcpu.id, supportedCpuid(kvm)), (e: KernelError) => e.code === 'ERR_GUESTMEM_LAUNCH_FAILED' && /^KVM_TDX_GET_CPUID failed: E[A-Z]+: /.test(e.message) && e.syscall === 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_GET_CPUID)');
    assert.throws(() => tdx.finish(), { code: 'ERR_GUESTMEM_LAUNCH_ORDER' });
  });

  it('a vCPU of a launch that has not ended is refused before KVM_RUN', async () => {
    vm.launch = new TdxLaunch(vm.fd, recording([]));
    const vcpu = Vcpu.create(kvm, vm, 0);
    await assert.rejects(vcpu.run(), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_LAUNCH_ORDER' && /launch has not ended/.test(e.message));
  });

  for (const kind of ['snp', 'tdx'] as const) {
    it(`GuestVm on a ${kind} launch (recording stand-in): the boot region is measured into private memory, in order, and the launch ends before any run`, async () => {
      const log: string[] = [];
      const launch = kind === 'snp' ? new SnpLaunch(vm.fd, recording(log)) : new TdxLaunch(vm.fd, recording(log));
      if (launch instanceof SnpLaunch) launch.start();
      vm.launch = launch;
      const memory = new GuestMemory(vm);
      const block = memory.addBlock({ gpa: GPA, size: 4 * MiB, name: 'guest-ram' });
      // The harness's CPU has no SEV: the C-bit position is given (the guest never runs).
      const guest = await GuestVm.create({ kvm, memory, image: new Uint8Array(300).fill(0xf4), boot: { dataGpa: BigInt(GPA + MiB), dataPages: 4, seed: 1n, iterations: 1 } as never, vcpus: 2, snpEncryptionBit: 51 });
      try {
        const size = guest.layout.end - guest.layout.bootInfo;
        assert.equal(launch.finished, true);
        // A TD's reset page (tdx-reset-page.ts) is measured after the boot region.
        assert.equal(launch.measuredBytes, kind === 'tdx' ? size + 4096n : size);
        assert.equal(block.attributes.countShared({ offset: 0, size: Number(size) }), 0, 'the boot region is private');
        const regionPages = Number(size) / 4096; // the default granule is a page
        assert.deepEqual(block.kvmRuns('shared').filter(([first]) => first < regionPages), [], "and private in KVM's attributes");
        const region = `gpa=0x${GPA.toString(16)}`;
        if (kind === 'snp') {
          assert.deepEqual(log, ['SNP_LAUNCH_START', `SNP_LAUNCH_UPDATE ${region} size=0x${size.toString(16)} type=1 source=page-aligned`, 'SNP_LAUNCH_FINISH']);
        } else {
          const rcx = `rcx=0x${guest.layout.bootInfo.toString(16)}`;
          assert.deepEqual(log, ['TDX_GET_CPUID', 'SET_CPUID2', `TDX_INIT_VCPU ${rcx}`, 'TDX_GET_CPUID', 'SET_CPUID2', `TDX_INIT_VCPU ${rcx}`, `TDX_INIT_MEM_REGION ${region} pages=${size / 4096n} measure=true source=page-aligned`, 'TDX_INIT_MEM_REGION gpa=0xfffff000 pages=1 measure=true source=page-aligned', 'TDX_FINALIZE_VM']);
          assert.deepEqual(memory.blocks.map((b) => [b.name, b.gpa, b.size, b.privatePages]), [['guest-ram', GPA, 4 * MiB, 1024], ['tdx-reset', 0xfffff000, 4096, 1]], 'a block was added for the reset page, private');
        }
        await assert.rejects(GuestVm.create({ kvm, memory, image: new Uint8Array(1), boot: {} as never }), { code: 'ERR_GUESTMEM_LAUNCH_ORDER' });
      } finally {
        guest.close();
        memory.close();
      }
    });
  }
});
