// The launch of an SNP or a TDX VM against a stand-in for the system calls (neither type
// exists on any machine we test on): every step in the kernel documentation's order, every
// step out of order refused with ERR_GUESTMEM_LAUNCH_ORDER and no call made, regions checked
// (alignment, private memory) before any call, the kernel's refusals as one line that keeps
// errno, syscall and the firmware's or TDX module's status, and /dev/sev kept for the VM's
// life. The stand-in answers as Linux 7.2 does where it matters: SNP_LAUNCH_UPDATE stops
// early and says how far it got, and fails with EIO and no firmware status for anything
// before the firmware (a pending signal's EINTR included); FINALIZE_VM answers EBUSY while
// the TD is busy; vCPU sub-commands never return the TDX module's status. The structs are
// pinned by static_assert (native/uapi_coco.h) and scripts/vm/check-uapi.sh.

import assert from 'node:assert/strict';
import { SNP_DEFAULT_POLICY, SNP_UPDATE_ATTEMPTS, SnpLaunch } from '../../lib/kvm/snp-launch';
import { TDX_FINALIZE_ATTEMPTS, TdxLaunch } from '../../lib/kvm/tdx-launch';
import { SNP_PAGE_TYPES, type LaunchCalls, type PrivateMemoryCheck } from '../../lib/kvm/vm-launch';

const VM_FD = 20;
const SEV_FD = 30;
const PAGE = 4096n;

const eio = () => Object.assign(new Error('EIO: i/o error, ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_SNP_LAUNCH_UPDATE)'), { code: 'EIO', errno: -5, syscall: 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_SNP_LAUNCH_UPDATE)' });
const ebusy = () => Object.assign(new Error('EBUSY: resource busy, ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_FINALIZE_VM)'), { code: 'EBUSY', errno: -16, syscall: 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_FINALIZE_VM)' });
/** kvm_cpuid_entry2 records with just function and index. */
const leaves = (...fns: number[]): Uint8Array => {
  const out = Buffer.alloc(fns.length * 40);
  fns.forEach((fn, i) => out.writeUInt32LE(fn, i * 40));
  return out;
};

class StandIn implements LaunchCalls {
  log: string[] = [];
  fail = new Map<string, unknown>();
  /** Pages one SNP_LAUNCH_UPDATE does before it returns (kvm_gmem_populate stops at a signal or reschedule). */
  pagesPerUpdate = Infinity;
  /** SNP_LAUNCH_UPDATE calls that find a signal pending: -EINTR at page 0, reported as EIO. */
  signalsPending = 0;
  /** FINALIZE_VM answers EBUSY this many times first (TDX_OPERAND_BUSY). */
  busy = 0;
  /** What KVM_TDX_GET_CPUID returns: the TD's leaves 0 and 1. */
  tdCpuid = leaves(0, 1);
  lastCpuid?: Uint8Array;

  private step(line: string): void {
    this.log.push(line);
    const key = line.split(' ')[0]!;
    if (this.fail.has(key)) throw this.fail.get(key);
  }

  openSevDevice(): number {
    this.step('open');
    return SEV_FD;
  }
  closeFd(fd: number): void {
    this.step(`close ${fd}`);
  }
  snpLaunchStart(vmFd: number, sevFd: number, policy: bigint): void {
    this.step(`SNP_LAUNCH_START vm=${vmFd} sev=${sevFd} policy=0x${policy.toString(16)}`);
  }
  snpLaunchUpdate(vmFd: number, sevFd: number, gpa: bigint, source: bigint, size: bigint, type: number): { gpa: bigint; source: bigint; size: bigint } {
    this.step(`SNP_LAUNCH_UPDATE vm=${vmFd} sev=${sevFd} gpa=0x${gpa.toString(16)} source=0x${source.toString(16)} size=0x${size.toString(16)} type=${type}`);
    if (this.signalsPending > 0) {
      this.signalsPending--;
      throw eio();
    }
    const done = BigInt(Math.min(Number(size / PAGE), this.pagesPerUpdate)) * PAGE;
    return { gpa: gpa + done, source: type === SNP_PAGE_TYPES.zero ? source : source + done, size: size - done };
  }
  snpLaunchFinish(vmFd: number, sevFd: number): void {
    this.step(`SNP_LAUNCH_FINISH vm=${vmFd} sev=${sevFd}`);
  }
  setCpuid(vcpuFd: number, entries: Uint8Array): void {
    this.lastCpuid = entries;
    this.step(`SET_CPUID2 vcpu=${vcpuFd} entries=${entries.length / 40}`);
  }
  tdxGetCpuid(vcpuFd: number): Uint8Array {
    this.step(`TDX_GET_CPUID vcpu=${vcpuFd}`);
    return this.tdCpuid;
  }
  tdxInitVcpu(vcpuFd: number, rcx: bigint): void {
    this.step(`TDX_INIT_VCPU vcpu=${vcpuFd} rcx=0x${rcx.toString(16)}`);
  }
  tdxInitMemRegion(vcpuFd: number, source: bigint, gpa: bigint, pages: bigint, measure: boolean): void {
    this.step(`TDX_INIT_MEM_REGION vcpu=${vcpuFd} source=0x${source.toString(16)} gpa=0x${gpa.toString(16)} pages=${pages} measure=${measure}`);
  }
  tdxFinalizeVm(vmFd: number): void {
    this.step(`TDX_FINALIZE_VM vm=${vmFd}`);
    if (this.busy > 0) {
      this.busy--;
      throw ebusy();
    }
  }
}

const allPrivate: PrivateMemoryCheck = () => null;
const region = { gpa: 0x100000n, size: 3n * PAGE, source: 0x7f0000000000n };
// KVM's supported CPUID: leaf 0 (which the TD's replaces) and the hypervisor leaf KVM emulates.
const CPUID = leaves(0, 0x40000000);

function refusedInOrder(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (e: Error & { code?: string }) => {
    assert.equal(e.code, 'ERR_GUESTMEM_LAUNCH_ORDER');
    assert.match(e.message, message);
    return true;
  });
}

const kernelError = (code: string, errno: number, syscall: string, extra: object = {}) =>
  Object.assign(new Error(`${code}: failed, ${syscall}`), { code, errno: -errno, syscall, ...extra });

describe('SNP launch (stand-in system calls)', () => {
  function started(calls = new StandIn()): SnpLaunch {
    const launch = new SnpLaunch(VM_FD, calls);
    launch.start();
    return launch;
  }

  it('start → update → vCPUs ready → finish, each once, with /dev/sev named in every command', () => {
    const calls = new StandIn();
    const launch = started(calls);
    launch.measure(region, allPrivate);
    launch.measure({ gpa: 0x200000, size: 4096, source: 0, snpType: 'zero' }, allPrivate);
    launch.vcpuCreated(0, 40);
    launch.vcpuCreated(1, 41);
    launch.vcpuReady(0);
    launch.vcpuReady(1);
    assert.equal(launch.finished, false);
    launch.finish();
    assert.equal(launch.finished, true);
    assert.deepEqual(calls.log, [
      'open',
      `SNP_LAUNCH_START vm=${VM_FD} sev=${SEV_FD} policy=0x30000`,
      `SNP_LAUNCH_UPDATE vm=${VM_FD} sev=${SEV_FD} gpa=0x100000 source=0x7f0000000000 size=0x3000 type=${SNP_PAGE_TYPES.normal}`,
      `SNP_LAUNCH_UPDATE vm=${VM_FD} sev=${SEV_FD} gpa=0x200000 source=0x0 size=0x1000 type=${SNP_PAGE_TYPES.zero}`,
      `SNP_LAUNCH_FINISH vm=${VM_FD} sev=${SEV_FD}`,
    ]);
    assert.equal(launch.measuredBytes, 4n * PAGE);
    assert.equal(launch.runRefusal(0), null);
    launch.close();
    launch.close();
    assert.deepEqual(calls.log.slice(-1), [`close ${SEV_FD}`], '/dev/sev stays open until the VM closes, and closes once');
  });

  it('the default policy has the must-be-one bit 17 and SMT; a policy without bit 17 is refused before anything', () => {
    assert.equal(SNP_DEFAULT_POLICY, 0x30000n);
    const calls = new StandIn();
    assert.throws(() => new SnpLaunch(VM_FD, calls, 0x10000n), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => new SnpLaunch(VM_FD, calls, 1n << 64n), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => new SnpLaunch(VM_FD, calls, 0x30000 as never), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.deepEqual(calls.log, []);
  });

  it('refuses every step out of order, with no call', () => {
    const calls = new StandIn();
    const fresh = new SnpLaunch(VM_FD, calls);
    refusedInOrder(() => fresh.measure(region, allPrivate), /KVM_SEV_SNP_LAUNCH_UPDATE before the launch started/);
    refusedInOrder(() => fresh.finish(), /before the launch started/);
    assert.deepEqual(calls.log, []);

    const launch = started(calls);
    calls.log = [];
    refusedInOrder(() => launch.start(), /twice/);
    refusedInOrder(() => launch.finish(), /with no vCPU ready/);
    refusedInOrder(() => launch.vcpuReady(0), /vCPU 0 is no vCPU this launch knows/);
    launch.vcpuCreated(0, 40);
    launch.vcpuCreated(1, 41);
    refusedInOrder(() => launch.vcpuCreated(1, 42), /vCPU 1 is known to this launch already/);
    launch.vcpuReady(0);
    refusedInOrder(() => launch.vcpuReady(0), /ready already/);
    refusedInOrder(() => launch.finish(), /while 1 vCPU\(s\) are not ready \(ids 1\)/);
    assert.match(launch.runRefusal(0)?.message ?? '', /has not ended/);
    assert.equal(launch.runRefusal(0)?.code, 'ERR_GUESTMEM_LAUNCH_ORDER');
    launch.vcpuReady(1);
    launch.finish();
    refusedInOrder(() => launch.finish(), /after KVM_SEV_SNP_LAUNCH_FINISH/);
    refusedInOrder(() => launch.measure(region, allPrivate), /KVM_SEV_SNP_LAUNCH_UPDATE after KVM_SEV_SNP_LAUNCH_FINISH/);
    refusedInOrder(() => launch.vcpuCreated(2, 42), /can never run/);
    assert.deepEqual(calls.log, [`SNP_LAUNCH_FINISH vm=${VM_FD} sev=${SEV_FD}`]);
    assert.equal(launch.runRefusal(99)?.code, 'ERR_GUESTMEM_LAUNCH_ORDER', 'a vCPU outside the launch may not run');
  });

  it('checks a region before any call: types, page alignment, 64-bit bounds, private memory', () => {
    const calls = new StandIn();
    const launch = started(calls);
    calls.log = [];
    const bad: Array<[object, string]> = [
      [{ ...region, gpa: 0x100800n }, 'ERR_INVALID_ARG_VALUE'],
      [{ ...region, size: 100n }, 'ERR_INVALID_ARG_VALUE'],
      [{ ...region, source: 0x7f0000000010n }, 'ERR_INVALID_ARG_VALUE'],
      [{ ...region, size: 0n }, 'ERR_OUT_OF_RANGE'],
      [{ ...region, gpa: (1n << 64n) - PAGE }, 'ERR_OUT_OF_RANGE'],
      [{ ...region, gpa: -4096 }, 'ERR_OUT_OF_RANGE'],
      [{ ...region, gpa: '0x1000' }, 'ERR_INVALID_ARG_TYPE'],
      [{ ...region, snpType: 'vmsa' }, 'ERR_INVALID_ARG_VALUE'],
      [{ ...region, measure: 1 }, 'ERR_INVALID_ARG_TYPE'],
    ];
    for (const [r, code] of bad) assert.throws(() => launch.measure(r as never, allPrivate), (e: { code?: string }) => e.code === code, JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v)));
    assert.throws(() => launch.measure(null as never, allPrivate), { code: 'ERR_INVALID_ARG_TYPE' });
    refusedInOrder(() => launch.measure(region, () => '2 granule(s) of it are shared'), /\[0x100000, \+0x3000\) cannot be measured into private memory: 2 granule\(s\) of it are shared; convert it to private first/);
    assert.deepEqual(calls.log, []);
  });

  it('the kernel refusing a step is one line with the firmware status and errno; a failed start closes /dev/sev', () => {
    const calls = new StandIn();
    calls.fail.set('SNP_LAUNCH_START', kernelError('EIO', 5, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_SNP_LAUNCH_START)', { firmwareError: 7n }));
    const launch = new SnpLaunch(VM_FD, calls);
    assert.throws(() => launch.start(), (e: Error & { code?: string; errno?: number; syscall?: string; firmwareError?: bigint }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_LAUNCH_FAILED');
      assert.match(e.message, /^KVM_SEV_SNP_LAUNCH_START failed: EIO: .*, SEV firmware error 7; check the SEV firmware .*policy 0x30000/);
      assert.ok(!e.message.includes('\n'));
      assert.deepEqual([e.errno, e.syscall, e.firmwareError], [-5, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_SNP_LAUNCH_START)', 7n]);
      return true;
    });
    assert.deepEqual(calls.log.slice(-1), [`close ${SEV_FD}`]);
    refusedInOrder(() => launch.measure(region, allPrivate), /before the launch started/);

    const ok = started();
    const updates = ok as unknown as { calls: StandIn };
    updates.calls.fail.set('SNP_LAUNCH_UPDATE', kernelError('EINVAL', 22, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_SNP_LAUNCH_UPDATE)'));
    assert.throws(() => ok.measure(region, allPrivate), /^GuestmemError: KVM_SEV_SNP_LAUNCH_UPDATE failed: EINVAL: .*; .*the pages must be private/);
    assert.equal(ok.measuredBytes, 0n);
  });

  it('without /dev/sev the start says so, with the fix', () => {
    const calls = new StandIn();
    calls.fail.set('open', kernelError('ENOENT', 2, 'open'));
    assert.throws(() => new SnpLaunch(VM_FD, calls).start(), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_LAUNCH_FAILED' && /needs \/dev\/sev .*fix: load ccp/.test(e.message));
    assert.deepEqual(calls.log, ['open']);
  });
});

describe('TDX launch (stand-in system calls)', () => {
  it('each vCPU: SET_CPUID2 then INIT_VCPU; memory through an initialized vCPU; finalize once, after all', () => {
    const calls = new StandIn();
    const launch = new TdxLaunch(VM_FD, calls);
    launch.vcpuCreated(0, 50);
    launch.vcpuCreated(1, 51);
    launch.initVcpu(0, CPUID, 0x100000n);
    launch.measure(region, allPrivate);
    launch.measure({ gpa: 0x300000n, size: PAGE, source: 0x7f0000100000n, measure: false }, allPrivate);
    launch.initVcpu(1, CPUID);
    launch.finish();
    assert.deepEqual(calls.log, [
      'TDX_GET_CPUID vcpu=50',
      'SET_CPUID2 vcpu=50 entries=3',
      'TDX_INIT_VCPU vcpu=50 rcx=0x100000',
      'TDX_INIT_MEM_REGION vcpu=50 source=0x7f0000000000 gpa=0x100000 pages=3 measure=true',
      'TDX_INIT_MEM_REGION vcpu=50 source=0x7f0000100000 gpa=0x300000 pages=1 measure=false',
      'TDX_GET_CPUID vcpu=51',
      'SET_CPUID2 vcpu=51 entries=3',
      'TDX_INIT_VCPU vcpu=51 rcx=0x0',
      `TDX_FINALIZE_VM vm=${VM_FD}`,
    ]);
    assert.equal(launch.finished, true);
    assert.equal(launch.runRefusal(1), null);
  });

  it('refuses every step out of order, with no call', () => {
    const calls = new StandIn();
    const launch = new TdxLaunch(VM_FD, calls);
    refusedInOrder(() => launch.finish(), /KVM_TDX_FINALIZE_VM with no vCPU ready/);
    refusedInOrder(() => launch.initVcpu(0, CPUID), /vCPU 0 is no vCPU this launch knows/);
    launch.vcpuCreated(0, 50);
    refusedInOrder(() => launch.measure(region, allPrivate), /before any vCPU is initialized/);
    refusedInOrder(() => launch.finish(), /with no vCPU ready/);
    assert.equal(launch.runRefusal(0)?.code, 'ERR_GUESTMEM_LAUNCH_ORDER');
    launch.initVcpu(0, CPUID);
    refusedInOrder(() => launch.initVcpu(0, CPUID), /ready already/);
    launch.vcpuCreated(1, 51);
    refusedInOrder(() => launch.finish(), /ids 1/);
    assert.equal(calls.log.length, 3);
    launch.initVcpu(1, CPUID);
    launch.finish();
    calls.log = [];
    refusedInOrder(() => launch.finish(), /after KVM_TDX_FINALIZE_VM/);
    refusedInOrder(() => launch.measure(region, allPrivate), /KVM_TDX_INIT_MEM_REGION after KVM_TDX_FINALIZE_VM/);
    refusedInOrder(() => launch.vcpuCreated(2, 52), /can never run/);
    assert.deepEqual(calls.log, []);
  });

  it('checks CPUID and RCX before any call; a failed SET_CPUID2 or INIT_VCPU leaves the vCPU unready (no finalize)', () => {
    const calls = new StandIn();
    const launch = new TdxLaunch(VM_FD, calls);
    launch.vcpuCreated(0, 50);
    assert.throws(() => launch.initVcpu(0, new Uint8Array(41)), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => launch.initVcpu(0, 'cpuid' as never), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => launch.initVcpu(0, CPUID, -1n), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => launch.initVcpu(0, CPUID, 1n << 64n), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => launch.initVcpu(0, CPUID, 1 as never), { code: 'ERR_INVALID_ARG_TYPE' });
    assert.deepEqual(calls.log, []);
    // As the kernel answers a vCPU sub-command: an errno and no TDX module status.
    calls.fail.set('TDX_INIT_VCPU', kernelError('EIO', 5, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_INIT_VCPU)'));
    assert.throws(() => launch.initVcpu(0, CPUID), (e: Error & { code?: string; hwError?: bigint }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_LAUNCH_FAILED');
      assert.match(e.message, /^KVM_TDX_INIT_VCPU failed: EIO: .*\); KVM returns no TDX module status for vCPU sub-commands: the kernel log has it/);
      assert.doesNotMatch(e.message, /TDX module status 0x/);
      assert.equal(e.hwError, undefined);
      return true;
    });
    refusedInOrder(() => launch.finish(), /no vCPU ready/);
    calls.fail.clear();
    calls.fail.set('SET_CPUID2', kernelError('EINVAL', 22, 'ioctl(KVM_SET_CPUID2)'));
    assert.throws(() => launch.initVcpu(0, CPUID), /^GuestmemError: KVM_SET_CPUID2 on a TD vCPU failed: EINVAL/);
    assert.deepEqual(calls.log.slice(-1), ['SET_CPUID2 vcpu=50 entries=3'], 'INIT_VCPU is not tried after SET_CPUID2 failed');
  });

  it('refuses memory that is not private before any call; the kernel refusing finalize is one line', () => {
    const calls = new StandIn();
    const launch = new TdxLaunch(VM_FD, calls);
    launch.vcpuCreated(0, 50);
    launch.initVcpu(0, CPUID);
    calls.log = [];
    refusedInOrder(() => launch.measure(region, () => 'it is not inside one RAM block (no guest_memfd of this memory backs it)'), /no guest_memfd/);
    assert.deepEqual(calls.log, []);
    calls.fail.set('TDX_FINALIZE_VM', kernelError('EINVAL', 22, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_FINALIZE_VM)'));
    assert.throws(() => launch.finish(), (e: Error & { code?: string; errno?: number }) => e.code === 'ERR_GUESTMEM_LAUNCH_FAILED' && e.errno === -22 && /^KVM_TDX_FINALIZE_VM failed: EINVAL/.test(e.message));
    assert.equal(launch.finished, false);
  });
});

describe('SNP and TDX launch: what Linux 7.2 answers (stand-in)', () => {
  const fnsOf = (cpuid: Uint8Array | undefined): number[] => {
    const b = Buffer.from(cpuid ?? new Uint8Array(0));
    const out: number[] = [];
    for (let at = 0; at < b.length; at += 40) out.push(b.readUInt32LE(at));
    return out;
  };

  it('SNP_LAUNCH_UPDATE: called again with what the kernel left after stopping early', () => {
    const calls = new StandIn();
    calls.pagesPerUpdate = 1;
    const launch = new SnpLaunch(VM_FD, calls);
    launch.start();
    launch.measure(region, allPrivate);
    assert.deepEqual(calls.log.filter((l) => l.startsWith('SNP_LAUNCH_UPDATE')).map((l) => l.split(' ').slice(3, 6).join(' ')), [
      'gpa=0x100000 source=0x7f0000000000 size=0x3000',
      'gpa=0x101000 source=0x7f0000001000 size=0x2000',
      'gpa=0x102000 source=0x7f0000002000 size=0x1000',
    ]);
    assert.equal(launch.measuredBytes, 3n * PAGE);
  });

  it('SNP_LAUNCH_UPDATE: EIO with no firmware status (a pending signal\'s EINTR, as sev.c reports it) is tried again', () => {
    const calls = new StandIn();
    calls.signalsPending = 2;
    const launch = new SnpLaunch(VM_FD, calls);
    launch.start();
    launch.measure(region, allPrivate);
    assert.equal(calls.log.filter((l) => l.startsWith('SNP_LAUNCH_UPDATE')).length, 3);
    assert.equal(launch.measuredBytes, 3n * PAGE);
  });

  it('SNP_LAUNCH_UPDATE: EIO that lasts ends after a bounded number of calls, saying how far it got; a firmware refusal is not retried', () => {
    const calls = new StandIn();
    calls.pagesPerUpdate = 1;
    const launch = new SnpLaunch(VM_FD, calls);
    launch.start();
    let calls0 = 0;
    const update = calls.snpLaunchUpdate.bind(calls);
    calls.snpLaunchUpdate = (...args) => {
      if (++calls0 > 1) throw eio(); // the first page goes in, then nothing does
      return update(...args);
    };
    assert.throws(() => launch.measure(region, allPrivate), (e: Error & { code?: string; errno?: number }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_LAUNCH_FAILED');
      assert.match(e.message, new RegExp(`EIO with no firmware status ${SNP_UPDATE_ATTEMPTS} times in a row .*; \\[0x100000, \\+0x1000\\) was measured before it$`));
      assert.equal(e.errno, -5);
      return true;
    });
    assert.equal(calls0, 1 + SNP_UPDATE_ATTEMPTS);
    assert.equal(launch.measuredBytes, PAGE);

    const firmware = new StandIn();
    const refused = new SnpLaunch(VM_FD, firmware);
    refused.start();
    firmware.fail.set('SNP_LAUNCH_UPDATE', Object.assign(eio(), { firmwareError: 22n }));
    assert.throws(() => refused.measure(region, allPrivate), /SEV firmware error 22/);
    assert.equal(firmware.log.filter((l) => l.startsWith('SNP_LAUNCH_UPDATE')).length, 1);
  });

  it('TDX: FINALIZE_VM\'s EBUSY (TDX_OPERAND_BUSY) is tried again, up to a bound', () => {
    const calls = new StandIn();
    calls.busy = 5;
    const launch = new TdxLaunch(VM_FD, calls);
    launch.vcpuCreated(0, 50);
    launch.initVcpu(0, CPUID);
    launch.finish();
    assert.equal(launch.finished, true);
    assert.equal(calls.log.filter((l) => l.startsWith('TDX_FINALIZE_VM')).length, 6);

    const stuck = new StandIn();
    stuck.busy = Infinity;
    const never = new TdxLaunch(VM_FD, stuck);
    never.vcpuCreated(0, 50);
    never.initVcpu(0, CPUID);
    assert.throws(() => never.finish(), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_LAUNCH_FAILED' && /^KVM_TDX_FINALIZE_VM failed: EBUSY: .*stayed busy .* through 1000 attempts/.test(e.message));
    assert.equal(stuck.log.filter((l) => l.startsWith('TDX_FINALIZE_VM')).length, TDX_FINALIZE_ATTEMPTS);
    assert.equal(never.finished, false);
  });

  it('TDX: a vCPU\'s CPUID is the TD\'s (KVM_TDX_GET_CPUID), with KVM\'s entries only for the leaves the TD lacks', () => {
    const calls = new StandIn();
    const launch = new TdxLaunch(VM_FD, calls);
    launch.vcpuCreated(0, 50);
    launch.initVcpu(0, CPUID);
    assert.deepEqual(calls.log.slice(0, 2), ['TDX_GET_CPUID vcpu=50', 'SET_CPUID2 vcpu=50 entries=3']);
    assert.deepEqual(fnsOf(calls.lastCpuid), [0, 1, 0x40000000], 'the TD\'s leaves 0 and 1, then KVM\'s hypervisor leaf; KVM\'s leaf 0 is not used');
    const failing = new StandIn();
    failing.fail.set('TDX_GET_CPUID', kernelError('EINVAL', 22, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_GET_CPUID)'));
    const other = new TdxLaunch(VM_FD, failing);
    other.vcpuCreated(0, 50);
    assert.throws(() => other.initVcpu(0, CPUID), /^GuestmemError: KVM_TDX_GET_CPUID failed: EINVAL/);
    assert.deepEqual(failing.log, ['TDX_GET_CPUID vcpu=50'], 'nothing is set from KVM\'s CPUID alone');
  });

  for (const kind of ['snp', 'tdx'] as const) {
    it(`${kind}: a vCPU closed before it was ready (a failed GuestVm.create) does not hold the launch's end back, and its fd number cannot alias`, () => {
      const calls = new StandIn();
      const launch = kind === 'snp' ? new SnpLaunch(VM_FD, calls) : new TdxLaunch(VM_FD, calls);
      if (launch instanceof SnpLaunch) launch.start();
      const ready = (id: number): void => (launch instanceof SnpLaunch ? launch.vcpuReady(id) : launch.initVcpu(id, CPUID));
      // The first try: vCPUs 0 and 1 created, something fails, their fds close; KVM keeps them.
      launch.vcpuCreated(0, 40);
      launch.vcpuCreated(1, 41);
      launch.vcpuClosed(0);
      launch.vcpuClosed(1);
      assert.deepEqual(launch.abandonedVcpus, [0, 1]);
      refusedInOrder(() => ready(0), /vCPU 0's fd is closed/);
      // The second try gets fresh ids, and the kernel hands out the same fd numbers again.
      launch.vcpuCreated(2, 40);
      launch.vcpuCreated(3, 41);
      ready(2);
      ready(3);
      launch.finish();
      assert.equal(launch.finished, true);
      assert.equal(launch.runRefusal(2), null);
      assert.equal(launch.runRefusal(0)?.code, 'ERR_GUESTMEM_LAUNCH_ORDER', 'an abandoned vCPU never runs');
    });
  }
});
