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
  tdxXfam,
  TDX_ATTR_SEPT_VE_DISABLE,
  TDX_INIT_VM_ATTEMPTS,
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

const errno = (code: string, n: number, syscall: string, extra: object = {}) =>
  Object.assign(new Error(`${code}: failed, ${syscall}`), { code, errno: -n, syscall, ...extra });

const KVM_FD = 10;
const VM_FD = 11;
const EAGAIN_ERROR = () => Object.assign(new Error('EAGAIN: resource temporarily unavailable, ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_INIT_VM)'), { code: 'EAGAIN', errno: -11, syscall: 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_INIT_VM)' });

/**
 * Records every call; each may be told to fail. Its VM answers as Linux 7.2 does: a split
 * irqchip only before any vCPU (x86.c, KVM_CAP_SPLIT_IRQCHIP), the LAPIC bus cycle only with
 * an in-kernel LAPIC (ENXIO otherwise) and before any vCPU, and a TD vCPU only with a split
 * irqchip (tdx.c, tdx_vcpu_create: EINVAL).
 */
class StandIn implements ConfidentialInitCalls {
  log: string[] = [];
  fail = new Map<string, unknown>();
  /** KVM_TDX_INIT_VM answers EAGAIN this many times first (TDX_RND_NO_ENTROPY). */
  noEntropy = 0;
  irqchip: 'none' | 'split' = 'none';
  ioapicPins = 0;
  apicBusCycleNs = 1;
  createdVcpus = 0;
  // As td_init_cpuid_entry2 fills them: never any flags.
  caps: TdxCapabilities = {
    supportedAttributes: TDX_ATTR_SEPT_VE_DISABLE | 1n,
    supportedXfam: 0x2e7n,
    cpuid: cpuid([[1, 0, 0, 0xffffffff, 0, 0x00ff00ff, 0xffff0000], [7, 0, 0, 0, 0xffffffff, 0, 0], [7, 1, 0, 0xffffffff, 0, 0, 0], [0x40000000, 0, 0, 1, 1, 1, 1]]),
  };
  supported = cpuid([[1, 0, 0, 0x000806f8, 0x11, 0xf7fa3223, 0x078bfbff], [7, 0, 1, 0, 0xf1bf07ab, 0x1b405f4e, 0xbc000010], [7, 1, 1, 0x1c30, 0, 0, 0], [0xd, 0, 1, 0x7, 0, 0, 0]]);

  private step(name: string): void {
    this.log.push(name);
    if (this.fail.has(name)) throw this.fail.get(name);
  }

  sevInit2(vmFd: number, vmsaFeatures: bigint, ghcbVersion: number): void {
    this.step(`KVM_SEV_INIT2 vm=${vmFd} vmsa_features=${vmsaFeatures} ghcb_version=${ghcbVersion}`);
  }

  tdxCapabilities(vmFd: number): TdxCapabilities {
    this.step(`KVM_TDX_CAPABILITIES vm=${vmFd}`);
    return this.caps;
  }

  supportedCpuid(kvmFd: number): Uint8Array {
    this.step(`KVM_GET_SUPPORTED_CPUID kvm=${kvmFd}`);
    return this.supported;
  }

  checkExtension(vmFd: number, capability: number): number {
    this.step(`KVM_CHECK_EXTENSION vm=${vmFd} cap=${capability}`);
    return capability === 237 ? 1 : 0;
  }

  enableCap(vmFd: number, capability: number, arg0: bigint): void {
    this.step(`KVM_ENABLE_CAP vm=${vmFd} cap=${capability} args[0]=${arg0}`);
    const refuse = (code: string, n: number): never => {
      throw Object.assign(new Error(`${code}: refused, ioctl(KVM_ENABLE_CAP)`), { code, errno: -n, syscall: 'ioctl(KVM_ENABLE_CAP)' });
    };
    if (capability === 121) {
      if (this.irqchip !== 'none') refuse('EEXIST', 17);
      if (this.createdVcpus > 0) refuse('EEXIST', 17);
      this.irqchip = 'split';
      this.ioapicPins = Number(arg0);
    } else if (capability === 237) {
      if (this.irqchip === 'none') refuse('ENXIO', 6);
      if (this.createdVcpus > 0) refuse('EINVAL', 22);
      this.apicBusCycleNs = Number(arg0);
    } else {
      refuse('EINVAL', 22);
    }
  }

  /** KVM_CREATE_VCPU on the TD, as tdx_vcpu_create answers it. */
  createVcpu(): void {
    if (this.irqchip !== 'split') throw Object.assign(new Error('EINVAL: invalid argument, ioctl(KVM_CREATE_VCPU)'), { code: 'EINVAL' });
    this.createdVcpus++;
  }

  initVm?: { attributes: bigint; xfam: bigint; cpuid: Uint8Array };
  tdxInitVm(vmFd: number, attributes: bigint, xfam: bigint, config: Uint8Array): void {
    this.initVm = { attributes, xfam, cpuid: config };
    this.step(`KVM_TDX_INIT_VM vm=${vmFd} attributes=0x${attributes.toString(16)} xfam=0x${xfam.toString(16)} entries=${config.length / CPUID_ENTRY_BYTES}`);
    if (this.noEntropy > 0) {
      this.noEntropy--;
      throw EAGAIN_ERROR();
    }
  }
}

/**
 * What the TD sees for (fn, index) after KVM_TDX_INIT_VM: setup_tdparams_cpuids looks each
 * capability entry up in the configuration with kvm_find_cpuid_entry2 (cpuid.c), which
 * takes the first entry of the function unless that entry has
 * KVM_CPUID_FLAG_SIGNIFCANT_INDEX and another index.
 */
function kvmLookup(config: Uint8Array, fn: number, index: number): number[] | undefined {
  return entries(config).find(([f, i, flags]) => f === fn && ((flags! & 1) === 0 || i === index));
}

describe('SNP and TDX initialization (stand-in system calls)', () => {
  const TDX_STEPS = [
    `KVM_TDX_CAPABILITIES vm=${VM_FD}`,
    `KVM_ENABLE_CAP vm=${VM_FD} cap=121 args[0]=24`,
    `KVM_CHECK_EXTENSION vm=${VM_FD} cap=237`,
    `KVM_ENABLE_CAP vm=${VM_FD} cap=237 args[0]=40`,
    `KVM_GET_SUPPORTED_CPUID kvm=${KVM_FD}`,
  ];
  const INIT_VM = `KVM_TDX_INIT_VM vm=${VM_FD} attributes=0x10000000 xfam=0x7 entries=3`;

  it('SNP: KVM_SEV_INIT2 with GHCB version 2 and no extra VMSA features, and no /dev/sev (INIT2 never uses it)', () => {
    const calls = new StandIn();
    const done = initializeVm(4, { kvm: KVM_FD, vm: VM_FD }, calls);
    assert.deepEqual(calls.log, [`KVM_SEV_INIT2 vm=${VM_FD} vmsa_features=0 ghcb_version=2`]);
    assert.deepEqual(done, { kind: 'snp', ghcbVersion: 2, vmsaFeatures: 0n });
  });

  it('SNP: a failed KVM_SEV_INIT2 is one line with the firmware error and the fix', () => {
    const calls = new StandIn();
    calls.fail.set(`KVM_SEV_INIT2 vm=${VM_FD} vmsa_features=0 ghcb_version=2`, errno('EIO', 5, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_INIT2)', { firmwareError: 7n }));
    assert.throws(() => initializeVm(4, { kvm: KVM_FD, vm: VM_FD }, calls), (e: Error & { code?: string; errno?: number; syscall?: string; firmwareError?: bigint }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_UNSUPPORTED');
      assert.match(e.message, /^KVM_SEV_INIT2 failed: EIO: .*, SEV firmware error 7; check that SEV-SNP is enabled/);
      assert.ok(!e.message.includes('\n'));
      assert.deepEqual([e.errno, e.syscall, e.firmwareError], [-5, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_SEV_INIT2)', 7n]);
      return true;
    });
  });

  it('TDX: capabilities, a split irqchip of 24 pins and a 40 ns LAPIC bus cycle, then KVM_TDX_INIT_VM; the TD\'s vCPUs can then be created', () => {
    const calls = new StandIn();
    assert.throws(() => calls.createVcpu(), /EINVAL/, 'the stand-in refuses a TD vCPU without a split irqchip, as tdx.c does');
    const done = initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls);
    assert.deepEqual(calls.log, [...TDX_STEPS, INIT_VM]);
    assert.deepEqual([calls.irqchip, calls.ioapicPins, calls.apicBusCycleNs], ['split', 24, 40]);
    calls.createVcpu();
    assert.equal(calls.createdVcpus, 1);
    // Leaf 0x40000000 is configurable but KVM does not report it: left to the TDX module.
    assert.deepEqual(entries(calls.initVm!.cpuid), [
      [1, 0, 0, 0x000806f8, 0, 0xf7fa3223 & 0x00ff00ff, 0x078bfbff & 0xffff0000],
      [7, 0, 1, 0, 0xf1bf07ab & ~((1 << 16) | (1 << 17) | (1 << 21) | (1 << 28) | (1 << 30) | (1 << 31)) >>> 0, 0, 0],
      [7, 1, 1, 0x1c30 & ~(1 << 5), 0, 0, 0],
    ]);
    assert.deepEqual(done, { kind: 'tdx', attributes: TDX_ATTR_SEPT_VE_DISABLE, xfam: 7n, cpuidEntries: 3, ioapicPins: 24, apicBusCycleNs: 40, initVmAttempts: 1 });
  });

  it('TDX: a split irqchip the kernel refuses (vCPUs exist already) is one line, and INIT_VM is not called', () => {
    const calls = new StandIn();
    calls.irqchip = 'split';
    assert.throws(() => initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_UNSUPPORTED' && /^KVM_ENABLE_CAP\(KVM_CAP_SPLIT_IRQCHIP\) failed: EEXIST/.test(e.message));
    assert.ok(!calls.log.some((line) => line.startsWith('KVM_TDX_INIT_VM')));
  });

  it('TDX: each subleaf of the configuration is the TD\'s own after KVM\'s lookup (capability entries carry no flags)', () => {
    const calls = new StandIn();
    initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls);
    const config = calls.initVm!.cpuid;
    // As setup_tdparams_cpuids reads it: leaf 7 subleaf 1 must not come back as subleaf 0.
    assert.deepEqual(kvmLookup(config, 7, 1)?.slice(0, 4), [7, 1, 1, 0x1c30 & ~(1 << 5)]); // AVX512_BF16 goes: no AVX-512 state in XFAM
    assert.deepEqual(kvmLookup(config, 7, 0)?.slice(0, 2), [7, 0]);
    assert.deepEqual(kvmLookup(config, 1, 0)?.slice(0, 2), [1, 0]);
  });

  it('TDX: XFAM is what KVM\'s leaf 0xD announces within the supported XFAM, and nothing in the configuration needs more', () => {
    const calls = new StandIn();
    // KVM announces x87, SSE, AVX and AVX-512 state; the TDX module supports only x87, SSE and AVX.
    calls.supported = cpuid([[1, 0, 0, 0, 0, 1 << 28, 0], [7, 0, 1, 0, (1 << 5) | (1 << 16), 0, 0], [0xd, 0, 1, 0xe7, 0, 0, 0], [0xd, 1, 1, 0xf, 0, 0, 0]]);
    calls.caps = { ...calls.caps, supportedXfam: 0x7n, cpuid: cpuid([[1, 0, 0, 0, 0, 0xffffffff, 0], [7, 0, 0, 0, 0xffffffff, 0, 0], [0xd, 0, 0, 0xffffffff, 0, 0, 0], [0xd, 1, 0, 0xffffffff, 0, 0, 0]]) };
    initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls);
    assert.equal(calls.initVm!.xfam, 0x7n);
    assert.deepEqual(entries(calls.initVm!.cpuid), [
      [1, 0, 0, 0, 0, 1 << 28, 0], // AVX: its YMM state is in XFAM
      [7, 0, 1, 0, 1 << 5, 0, 0], // AVX2 stays, AVX512F goes with the AVX-512 state XFAM lacks
      [0xd, 0, 1, 0x7, 0, 0, 0],
      [0xd, 1, 1, 0xf, 0, 0, 0],
    ]);
    // Without YMM state in XFAM, no AVX either.
    assert.equal(tdxXfam(0x3n, calls.supported), 0x3n);
    assert.deepEqual(entries(tdxCpuidConfiguration(calls.caps.cpuid, calls.supported, 0x3n)).map((e) => e.slice(3)), [[0, 0, 0, 0], [0, 0, 0, 0], [0x3, 0, 0, 0], [0xf, 0, 0, 0]]);
  });

  it('TDX: asks for SEPT_VE_DISABLE only where the TDX module supports it', () => {
    const calls = new StandIn();
    calls.caps = { ...calls.caps, supportedAttributes: 1n };
    initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls);
    assert.equal(calls.initVm!.attributes, 0n);
  });

  it('TDX: KVM_TDX_INIT_VM is tried again while the TDX module has no entropy (EAGAIN), up to QEMU\'s 10,000 times', () => {
    const calls = new StandIn();
    calls.noEntropy = 3;
    const done = initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls);
    assert.equal(done.kind === 'tdx' && done.initVmAttempts, 4);
    assert.deepEqual(calls.log.slice(TDX_STEPS.length), [INIT_VM, INIT_VM, INIT_VM, INIT_VM]);

    const starved = new StandIn();
    starved.noEntropy = Infinity;
    assert.throws(() => initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, starved), (e: Error & { code?: string; errno?: number }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_UNSUPPORTED');
      assert.match(e.message, /^KVM_TDX_INIT_VM failed: EAGAIN: .*; the TDX module had no entropy in 10000 attempts/);
      assert.equal(e.errno, -11);
      return true;
    });
    assert.equal(starved.log.length, TDX_STEPS.length + TDX_INIT_VM_ATTEMPTS);
  });

  it('TDX: a refused KVM_TDX_INIT_VM names the TDX module status and is not retried; missing capabilities name the kernel and module', () => {
    const calls = new StandIn();
    calls.fail.set(INIT_VM, errno('EINVAL', 22, 'ioctl(KVM_MEMORY_ENCRYPT_OP, KVM_TDX_INIT_VM)', { hwError: 0xc000010000000000n }));
    assert.throws(() => initializeVm(5, { kvm: KVM_FD, vm: VM_FD }, calls), /: KVM_TDX_INIT_VM failed: EINVAL: .*, TDX module status 0xc000010000000000; the TDX module refused/);
    assert.equal(calls.log.filter((line) => line === INIT_VM).length, 1);
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

  it('the CPUID configuration matches (function, index) exactly and takes KVM\'s flags', () => {
    const configurable = cpuid([[0xd, 1, 0, 0xf, 0, 0, 0], [0x80000008, 0, 0, 0xff, 0, 0, 0]]);
    const supported = cpuid([[0xd, 0, 1, 0xff, 0, 0, 0], [0xd, 1, 1, 0x1f, 0, 0, 0], [0x80000008, 0, 0, 0x3030, 0, 0, 0]]);
    assert.deepEqual(entries(tdxCpuidConfiguration(configurable, supported)), [[0xd, 1, 1, 0xf, 0, 0, 0], [0x80000008, 0, 0, 0x30, 0, 0, 0]]);
    // A subleaf KVM does not report is left out, not filled from another subleaf.
    assert.deepEqual(entries(tdxCpuidConfiguration(cpuid([[0xd, 2, 0, 0xff, 0, 0, 0]]), supported)), []);
    assert.equal(tdxCpuidConfiguration(new Uint8Array(0), supported).length, 0);
  });
});
