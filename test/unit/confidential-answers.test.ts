// What an SNP or TDX guest is answered, against a stand-in vCPU that completes each exit as
// Linux 7.2 does: a MAP_GPA_RANGE answer other than 0 or a positive EINVAL/EAGAIN makes the
// next KVM_RUN fail with EINVAL for these VM types (x86.h kvm_is_valid_map_gpa_range_ret,
// checked by sev.c snp_complete_psc_msr / snp_complete_one_psc and tdx.c
// tdx_complete_vmcall_map_gpa), while other types hand any value to the guest; KVM_EXIT_TDX
// (40) carries GetQuote, SetupEventNotifyInterrupt and GetTdVmCallInfo and takes a TDVMCALL
// status back; a TD's fatal error arrives with its 16 registers in data[0..15]. Exits are
// built in the exit view with the addon's own offsets, as the runner fills it.

import assert from 'node:assert/strict';
import { native } from '../../lib/common/native';
import { VM_TYPES } from '../../lib/kvm/kvm-constants';
import { ExitDecoder } from '../../lib/vmm/exit-decoder';
import { GuestProtocol, PORT_EXIT } from '../../lib/vmm/guest-ports';
import { EAGAIN, EINVAL, hypercallErrorAnswer } from '../../lib/vmm/hypercall-answer';
import { decodeTdxFatalError, describeTermination, KVM_SYSTEM_EVENT_TDX_FATAL } from '../../lib/vmm/system-event';
import { TDVMCALL, TDVMCALL_STATUS, tdvmcallAnswer } from '../../lib/vmm/tdvmcall';
import type { Registers } from '../../lib/vmm/vcpu';
import type { VcpuExit } from '../../lib/vmm/vcpu-exit';
import { VmmLoop, type ConversionEvent, type LoopMemory, type LoopVcpu } from '../../lib/vmm/vmm-loop';

const KVM_EXIT_TDX = 40;
const KVM_EXIT_SYSTEM_EVENT = 24;

function view(): { bytes: Uint8Array; dv: DataView } {
  const bytes = new Uint8Array(native().vcpuExitViewBytes);
  return { bytes, dv: new DataView(bytes.buffer) };
}

/** A KVM_EXIT_TDX as tdx.c fills it: nr, flags 0, KVM's default ret, the call's fields. */
function tdxExit(nr: bigint, ret: bigint, fields: bigint[] = []): VcpuExit {
  const at = native().kvmRunLayout;
  const { bytes, dv } = view();
  dv.setUint32(at.exitReason, KVM_EXIT_TDX, true);
  dv.setBigUint64(at.tdxNr, nr, true);
  dv.setBigUint64(at.tdxRet, ret, true);
  fields.forEach((value, i) => dv.setBigUint64(at.tdxData + 8 * i, value, true));
  return new ExitDecoder(bytes, at).decode();
}

/** KVM_SYSTEM_EVENT_TDX_FATAL as tdx_report_fatal_error fills it: 16 GPRs in KVM's order. */
function fatalExit(regs: Partial<Record<number, bigint>>): VcpuExit {
  const at = native().kvmRunLayout;
  const { bytes, dv } = view();
  dv.setUint32(at.exitReason, KVM_EXIT_SYSTEM_EVENT, true);
  dv.setUint32(at.internalSuberror, KVM_SYSTEM_EVENT_TDX_FATAL, true);
  dv.setUint32(at.internalNdata, 16, true);
  for (let i = 0; i < 16; i++) dv.setBigUint64(at.internalData + 8 * i, regs[i] ?? 0n, true);
  return new ExitDecoder(bytes, at).decode();
}

const mapGpaRange = (gpa: bigint, pages: bigint, attributes: bigint): VcpuExit => ({ reason: 'hypercall', exitReason: 3, nr: 12n, args: [gpa, pages, attributes, 0n, 0n, 0n], flags: 1n, longMode: true });
const exitPort: VcpuExit = { reason: 'io', exitReason: 2, direction: 'out', port: PORT_EXIT, size: 4, count: 1, data: Buffer.alloc(4) };

/** A vCPU of a VM of `vmType` whose next KVM_RUN completes the last exit as Linux 7.2 does. */
class KernelVcpu implements LoopVcpu {
  readonly hypercallAnswers: Array<number | bigint> = [];
  readonly tdvmcallAnswers: bigint[] = [];
  private pendingHypercall: number | bigint | undefined;

  constructor(private readonly vmType: number, private readonly exits: VcpuExit[]) {}

  async run(): Promise<VcpuExit> {
    await new Promise((resolve) => setImmediate(resolve));
    const ret = this.pendingHypercall;
    this.pendingHypercall = undefined;
    if (ret !== undefined && (this.vmType === VM_TYPES.snp || this.vmType === VM_TYPES.tdx)) {
      const raw = BigInt.asUintN(64, BigInt(ret));
      if (raw !== 0n && raw !== 22n && raw !== 11n) throw Object.assign(new Error('EINVAL: invalid argument, ioctl(KVM_RUN)'), { code: 'EINVAL' });
    }
    const next = this.exits.shift();
    if (!next) throw new Error('ran past the script');
    return next;
  }

  stop(): void {}
  completeHypercall(ret: number | bigint): void {
    this.hypercallAnswers.push(ret);
    this.pendingHypercall = ret;
  }
  completeIo(): void {}
  completeMmio(): void {}
  completeTdvmcall(status: bigint): void {
    this.tdvmcallAnswers.push(status);
  }
  get registers(): Registers {
    return Object.fromEntries(['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'].map((r) => [r, 0n])) as Registers;
  }
}

const BLOCK = { gpa: 0x100000n, size: 0x100000n };
function memory(fail?: Error): LoopMemory {
  return {
    covers: (gpa, size) => BigInt(gpa) >= BLOCK.gpa && BigInt(gpa) + BigInt(size) <= BLOCK.gpa + BLOCK.size,
    convert: (_gpa, size, to) => {
      if (fail) throw fail;
      return { from: to === 'shared' ? 'private' : 'shared', to, changed: Number(BigInt(size) / 4096n), changedRuns: 1 };
    },
  };
}

describe('what SNP and TDX guests are answered (stand-in vCPUs completing as Linux 7.2)', () => {
  it('a refused or rolled-back MAP_GPA_RANGE: positive EINVAL / EAGAIN for SNP and TDX, -KVM_EINVAL / -KVM_EFAULT elsewhere', () => {
    for (const type of [VM_TYPES.snp, VM_TYPES.tdx]) {
      assert.deepEqual([hypercallErrorAnswer(type, 'rejected'), hypercallErrorAnswer(type, 'failed')], [EINVAL, EAGAIN]);
    }
    for (const type of [VM_TYPES.default, VM_TYPES['sw-protected'], undefined]) {
      assert.deepEqual([hypercallErrorAnswer(type, 'rejected'), hypercallErrorAnswer(type, 'failed')], [-22, -14]);
    }
  });

  for (const type of ['snp', 'tdx'] as const) {
    it(`${type}: a bad request and a rolled-back conversion are answered so that KVM_RUN goes on, and the guest with it`, async () => {
      const vcpu = new KernelVcpu(VM_TYPES[type], [mapGpaRange(0x100800n, 1n, 0n), mapGpaRange(0x100000n, 1n, 0x10n), exitPort]);
      const events: ConversionEvent[] = [];
      const rolledBack = Object.assign(new Error('DMA map failed; rolled back'), { code: 'ERR_GUESTMEM_CONVERSION_FAILED', applied: [] });
      const loop = new VmmLoop([vcpu], memory(rolledBack), { ports: new GuestProtocol().ports(), vmType: VM_TYPES[type], onConversion: (e) => events.push(e) });
      const report = await loop.run();
      assert.deepEqual(vcpu.hypercallAnswers, [EINVAL, EAGAIN]);
      assert.deepEqual(events.map((e) => [e.outcome, e.result]), [['rejected', EINVAL], ['failed', EAGAIN]]);
      assert.deepEqual(report.vcpus, [{ vcpu: 0, status: 0 }]);
    });
  }

  it('a SW-protected VM still hears the negative values, which its KVM passes on as they are', async () => {
    const vcpu = new KernelVcpu(VM_TYPES['sw-protected'], [mapGpaRange(0x100800n, 1n, 0n), exitPort]);
    await new VmmLoop([vcpu], memory(), { ports: new GuestProtocol().ports(), vmType: VM_TYPES['sw-protected'] }).run();
    assert.deepEqual(vcpu.hypercallAnswers, [-22]);
  });

  it('decodes KVM_EXIT_TDX from the exit view: nr, flags, KVM\'s default ret, the call\'s fields', () => {
    assert.deepEqual(tdxExit(TDVMCALL.getQuote, TDVMCALL_STATUS.subfuncUnsupported, [0x7000n, 0x1000n]), {
      exitReason: 40, reason: 'tdx', nr: 0x10002n, flags: 0n, ret: 0x8000000000000003n, data: [0x7000n, 0x1000n, 0n, 0n, 0n],
    });
  });

  it('answers GetQuote and SetupEventNotifyInterrupt "not supported", GetTdVmCallInfo success, and the TD goes on', async () => {
    const vcpu = new KernelVcpu(VM_TYPES.tdx, [
      tdxExit(TDVMCALL.getTdVmCallInfo, TDVMCALL_STATUS.success, [1n]),
      tdxExit(TDVMCALL.getQuote, TDVMCALL_STATUS.subfuncUnsupported, [0x7000n, 0x1000n]),
      tdxExit(TDVMCALL.setupEventNotifyInterrupt, TDVMCALL_STATUS.subfuncUnsupported, [0x40n]),
      tdxExit(0x10099n, 0n),
      exitPort,
    ]);
    const report = await new VmmLoop([vcpu], memory(), { ports: new GuestProtocol().ports(), vmType: VM_TYPES.tdx }).run();
    assert.deepEqual(vcpu.tdvmcallAnswers, [TDVMCALL_STATUS.success, TDVMCALL_STATUS.subfuncUnsupported, TDVMCALL_STATUS.subfuncUnsupported, TDVMCALL_STATUS.subfuncUnsupported]);
    assert.deepEqual(report.vcpus, [{ vcpu: 0, status: 0 }]);
    assert.equal(tdvmcallAnswer({ nr: 0x10099n }).call, 'TDVMCALL 0x10099');
  });

  it('a vCPU that cannot answer a TDVMCALL stops the VM with a clear error instead of hanging', async () => {
    const vcpu = new KernelVcpu(VM_TYPES.tdx, [tdxExit(TDVMCALL.getQuote, 0n)]);
    (vcpu as { completeTdvmcall?: unknown }).completeTdvmcall = undefined;
    await assert.rejects(new VmmLoop([vcpu], memory()).run(), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_VCPU_FAILED' && /a TDVMCALL, and this vCPU cannot answer one: exit tdx \(KVM exit 40\)/.test(e.message));
  });

  it('a TD\'s fatal error is read from R12 (data[12]) and R13 (data[13]), with its message registers', () => {
    // RAX, the TDVMCALL leaf, is in data[0]; it is not the error code.
    const message = Buffer.from('bad page\0');
    const regs = { 0: 0x10003n, 1: 1n << 14n, 12: (1n << 63n) | 0x2a0000n, 13: 0xfee00000n, 14: message.readBigUInt64LE(0) };
    assert.deepEqual(decodeTdxFatalError(KVM_SYSTEM_EVENT_TDX_FATAL, Array.from({ length: 16 }, (_, i) => (regs as Record<number, bigint>)[i] ?? 0n)), { errorCode: (1n << 63n) | 0x2a0000n, gpa: 0xfee00000n, message: 'bad page' });
    const exit = fatalExit(regs);
    assert.equal(exit.reason === 'system-event' && exit.termination, 'TDX fatal error reported by the TD, error code 0x80000000002a0000, GPA 0xfee00000: "bad page"');
    assert.equal(describeTermination(KVM_SYSTEM_EVENT_TDX_FATAL, Array.from({ length: 16 }, (_, i) => (i === 12 ? 0x50000n : 0n))), 'TDX fatal error reported by the TD, error code 0x50000');
    assert.equal(describeTermination(KVM_SYSTEM_EVENT_TDX_FATAL, [0x1234n]), 'TDX fatal error reported by the TD (1 registers, not the 16 KVM sends)');
  });
});
