// What Kvm.createVm does after KVM_CREATE_VM for an SNP or a TDX VM, with a stand-in for the
// system calls (these types exist on no machine we test on): the calls and their order, the
// arguments from the kernel's documentation, the CPUID configuration, and that a failure is
// one line with the firmware's status and the fix, with nothing left open. The structs
// themselves are pinned by static_assert (native/uapi_coco.h) and compared with the kernels'
// own headers by scripts/vm/check-uapi.sh.

import assert from 'node:assert/strict';
import {
  CPUID_ENTRY_BYTES,
  initializeVm,
  tdxCpuidConfiguration,
  TDX_ATTR_SEPT_VE_DISABLE,
  type ConfidentialInitCalls,
  type TdxCapabilities,
} from '../../lib/kvm/vm-init';

function cpuid(entries: Array<[fn: number, index: number, flags: number, eax: number, ebx: number, ecx: number, edx: number]>): Buffer {
  const out = Buffer.alloc(entries.length * CPUID_ENTRY_BYTES);
  entries.forEach((values, i) => values.forEach((v, r) => out.writeUInt32LE(v >>> 0, i * CPUID_ENTRY_BYTES + r * 4)));
  return out;
}

function entries(buffer: Uint8Array): number[][] {
  const b = Buffer.from(buffer);
  const rows: number[][] = [];
  for (let at = 0; at < b.length; at += CPUID_ENTRY_BYTES) rows.push([0, 4, 8, 12, 16, 20, 24].map((o) => b.readUInt32LE(at + o)));
  return rows;
}

const KVM_FD = 10;
const VM_FD = 11;
const SEV_FD = 12;

/** Records every call; each may be told to fail. */
class StandIn implements ConfidentialInitCalls {
  log: string[] = [];
  fail = new Map<string, unknown>();
  caps: TdxCapabilities = {
    supportedAttributes: TDX_ATTR_SEPT_VE_DISABLE | 1n,
    supportedXfam: 0x2e7n,
    cpuid: cpuid([[1, 0, 0, 0xffffffff, 0, 0x00ff00ff, 0xffff0000], [7, 0, 1, 0, 0xffffffff, 0, 0], [7, 1, 1, 0xffffffff, 0, 0, 0], [0x40000000, 0, 0, 1, 1, 1, 1]]),
  };
  supported = cpuid([[1, 0, 0, 0x000806f8, 0x11, 0xf7fa3223, 0x078bfbff], [7, 0, 1, 0, 0xf1bf07ab, 0x1b405f4e, 0xbc000010], [7, 1, 1, 0x1c30, 0, 0, 0]]);

  private step(name: string): void {
    this.log.push(name);
    if (this.fail.has(name)) throw this.fail.get(name);
  }

  openSevDevice(): number {
    this.step('open /dev/sev');
    return SEV_FD;
  }

  closeFd(fd: number): void {
    this.step(`close ${fd}`);
  }

  sevInit2(vmFd: number, sevFd: number, vmsaFeatures: bigint, ghcbVersion: number): void {
    this.step(`KVM_SEV_INIT2 vm=${vmFd} sev_fd=${sevFd} vmsa_features=${vmsaFeatures} ghcb_version=${ghcbVersion}`);
  }

  tdxCapabilities(vmFd: number): TdxCapabilities {
    this.step(`KVM_TDX_CAPABILITIES vm=${vmFd}`);
    return this.caps;
  }

  supportedCpuid(kvmFd: number): Uint8Array {
    this.step(`KVM_GET_SUPPORTED_CPUID kvm=${kvmFd}`);
    return this.supported;
  }

  initVm?: { attributes: bigint; xfam: bigint; cpuid: Uint8Array };
  tdxInitVm(vmFd: number, attributes: bigint, xfam: bigint, config: Uint8Array): void {
    this.initVm = { attributes, xfam, cpuid: config };
    this.step(`KVM_TDX_INIT_VM vm=${vmFd} attributes=0x${attributes.toString(16)} xfam=0x${xfam.toString(16)} entries=${config.length / CPUID_ENTRY_BYTES}`);
  }
}

const errno = (code: string, n: number, syscall: string, extra: object = {}) =>
  Object.assign(new Error(`${code}: failed, ${syscall}`), { code, errno: -n, syscall, ...extra });

describe('SNP and TDX initialisation (stand-in system calls)', () => {
  it('SNP: opens /dev/sev, KVM_SEV_INIT2 with GHCB version 2 and no extra VMSA features, closes /dev/sev', () => {
    const calls = new StandIn();
    const done = initializeVm(4, { kvm: KVM_FD, vm: VM_FD }, calls);
    assert.deepEqual(calls.log, ['open /dev/sev', `KVM_SEV_INIT2 vm=${VM_FD} sev_fd=${SEV_FD} vmsa_features=0 ghcb_version=2`, `close ${SEV_FD}`]);
    assert.deepEqual(done, { kind: 'snp', ghcbVersion: 2, vmsaFeatures: 0n });
  });

  it('SNP: a failed KVM_SEV_INIT2 is one line with the firmware error and the fix; /dev/sev is closed all the same', () => {
    const calls = new StandIn();
    calls.fail.set(`KVM_SEV_INIT2 vm=${VM_FD} sev_fd=${SEV_FD} vmsa_features=0 ghcb_version=2`, errno('EIO', 5, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_INIT2)', { firmwareError: 7n }));
    assert.throws(() => initializeVm(4, { kvm: KVM_FD, vm: VM_FD }, calls), (e: Error & { code?: string; errno?: number; syscall?: string; firmwareError?: bigint }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_UNSUPPORTED');
      assert.match(e.message, /^KVM_SEV_INIT2 failed: EIO: .*, SEV firmware error 7; check that SEV-SNP is enabled/);
      assert.ok(!e.message.includes('\n'));
      assert.deepEqual([e.errno, e.syscall, e.firmwareError], [-5, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_INIT2)', 7n]);
      return true;
    });
    assert.equal(calls.log.at(-1), `close ${SEV_FD}`);
  });

  it('SNP: without /dev/sev, says so and makes no KVM call', () => {
    for (const [code, why] of [['ENOENT', /there is no \/dev\/sev/], ['EACCES', /no permission to open \/dev\/sev/]] as const) {
      const calls = new StandIn();
      calls.fail.set('open /dev/sev', errno(code, 2, 'open'));
      assert.throws(() => initializeVm(4, { kvm: KVM_FD, vm: VM_FD }, calls), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_UNSUPPORTED' && why.test(e.message) && /fix: load ccp/.test(e.message));
      assert.deepEqual(calls.log, ['open /dev/sev']);
    }
  });

  it('TDX: KVM_TDX_CAPABILITIES, then KVM_TDX_INIT_VM with the supported CPUID masked by the configurable bits', () => {
    const calls = new StandIn();
    const done = initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls);
    assert.deepEqual(calls.log, [
      `KVM_TDX_CAPABILITIES vm=${VM_FD}`,
      `KVM_GET_SUPPORTED_CPUID kvm=${KVM_FD}`,
      `KVM_TDX_INIT_VM vm=${VM_FD} attributes=0x10000000 xfam=0x3 entries=3`,
    ]);
    // Leaf 0x40000000 is configurable but KVM does not report it: left to the TDX module.
    assert.deepEqual(entries(calls.initVm!.cpuid), [
      [1, 0, 0, 0x000806f8, 0, 0xf7fa3223 & 0x00ff00ff, 0x078bfbff & 0xffff0000],
      [7, 0, 1, 0, 0xf1bf07ab, 0, 0],
      [7, 1, 1, 0x1c30, 0, 0, 0],
    ]);
    assert.deepEqual(done, { kind: 'tdx', attributes: TDX_ATTR_SEPT_VE_DISABLE, xfam: 3n, cpuidEntries: 3 });
  });

  it('TDX: asks for SEPT_VE_DISABLE only where the TDX module supports it', () => {
    const calls = new StandIn();
    calls.caps = { ...calls.caps, supportedAttributes: 1n };
    initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls);
    assert.equal(calls.initVm!.attributes, 0n);
  });

  it('TDX: a refused KVM_TDX_INIT_VM names the TDX module status; missing capabilities name the kernel and module', () => {
    const calls = new StandIn();
    calls.fail.set(`KVM_TDX_INIT_VM vm=${VM_FD} attributes=0x10000000 xfam=0x3 entries=3`, errno('EINVAL', 22, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_INIT_VM)', { hwError: 0xc000010000000000n }));
    assert.throws(() => initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls), /: KVM_TDX_INIT_VM failed: EINVAL: .*, TDX module status 0xc000010000000000; the TDX module refused/);
    const bare = new StandIn();
    bare.fail.set(`KVM_TDX_CAPABILITIES vm=${VM_FD}`, errno('ENOTTY', 25, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_CAPABILITIES)'));
    assert.throws(() => initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, bare), /: KVM_TDX_CAPABILITIES failed: ENOTTY: .*; a Linux 6\.16\+ kernel with kvm_intel tdx=Y/);
    assert.deepEqual(bare.log, [`KVM_TDX_CAPABILITIES vm=${VM_FD}`]);
  });

  it('other types need nothing after KVM_CREATE_VM', () => {
    for (const type of [0, 1, 2, 3, 6, 99]) {
      const calls = new StandIn();
      assert.deepEqual(initializeVm(type, { kvm: KVM_FD, vm: VM_FD }, calls), { kind: 'none' });
      assert.deepEqual(calls.log, []);
    }
  });

  it('the CPUID configuration matches an indexed leaf by index and an unindexed one by function alone', () => {
    const configurable = cpuid([[0xd, 1, 1, 0xf, 0, 0, 0], [0x80000008, 0, 0, 0xff, 0, 0, 0]]);
    const supported = cpuid([[0xd, 0, 1, 0xff, 0, 0, 0], [0xd, 1, 1, 0x1f, 0, 0, 0], [0x80000008, 7, 0, 0x3030, 0, 0, 0]]);
    assert.deepEqual(entries(tdxCpuidConfiguration(configurable, supported)), [[0xd, 1, 1, 0xf, 0, 0, 0], [0x80000008, 0, 0, 0x30, 0, 0, 0]]);
    assert.equal(tdxCpuidConfiguration(new Uint8Array(0), supported).length, 0);
  });
});
