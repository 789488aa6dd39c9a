// A confidential guest's measured pages are not turned shared behind its back: a memory fault
// asking for shared (as KVM raises it on SNP for an access without the C-bit, on TDX through
// the shared alias) stops the VM with the reason instead of discarding the measured contents;
// the guest's own MAP_GPA_RANGE request converts them, after which they are its to share.
// The loop runs against stand-in vCPUs and a stand-in memory that records conversions.

import assert from 'node:assert/strict';
import type { Bytes } from '../../lib/common/byte-range';
import type { StateChangeResult } from '../../lib/tracker/ram-block-attributes';
import type { PageState } from '../../lib/tracker/state-change-channel';
import { GuestProtocol, PORT_EXIT } from '../../lib/vmm/guest-ports';
import { MeasuredPages } from '../../lib/vmm/measured-pages';
import type { Registers } from '../../lib/vmm/vcpu';
import type { VcpuExit } from '../../lib/vmm/vcpu-exit';
import { VmmLoop, type LoopMemory, type LoopVcpu } from '../../lib/vmm/vmm-loop';

const MEASURED = 0x100000n;
const fault = (gpa: bigint, size: bigint, privateAccess: boolean): VcpuExit => ({ reason: 'memory-fault', exitReason: 39, flags: privateAccess ? 8n : 0n, gpa, size });
const mapGpaRange = (gpa: bigint, pages: bigint, attributes: bigint): VcpuExit => ({ reason: 'hypercall', exitReason: 3, nr: 12n, args: [gpa, pages, attributes, 0n, 0n, 0n], flags: 1n, longMode: true });
const exitPort: VcpuExit = { reason: 'io', exitReason: 2, direction: 'out', port: PORT_EXIT, size: 4, count: 1, data: Buffer.alloc(4) };

class Scripted implements LoopVcpu {
  readonly answers: Array<number | bigint> = [];
  constructor(private readonly exits: VcpuExit[]) {}
  async run(): Promise<VcpuExit> {
    await new Promise((resolve) => setImmediate(resolve));
    const next = this.exits.shift();
    if (!next) throw new Error('ran past the script');
    return next;
  }
  stop(): void {}
  completeHypercall(ret: number | bigint): void {
    this.answers.push(ret);
  }
  completeIo(): void {}
  completeMmio(): void {}
  get registers(): Registers {
    return Object.fromEntries(['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'].map((r) => [r, 0n])) as Registers;
  }
}

/** Records conversions; with `measured`, as GuestVm's loopMemory wires it. */
function recording(measured: MeasuredPages): LoopMemory & { conversions: string[] } {
  const conversions: string[] = [];
  return {
    conversions,
    covers: () => true,
    convert: (gpa: Bytes, size: Bytes, to: PageState): StateChangeResult => {
      conversions.push(`0x${BigInt(gpa).toString(16)}+0x${BigInt(size).toString(16)} ${to}`);
      if (to === 'shared') measured.releasedByGuest(BigInt(gpa), BigInt(size));
      return { from: to === 'shared' ? 'private' : 'shared', to, changed: 1, changedRuns: 1 };
    },
    faultRefusal: (gpa, size, to) => measured.faultRefusal(gpa, size, to),
  };
}

describe('measured pages are not shared behind the guest\'s back', () => {
  it('MeasuredPages: a shared fault overlapping a measured span is refused, a private one is not; a guest request releases exactly its pages', () => {
    const measured = new MeasuredPages();
    measured.add(MEASURED, 0x4000n);
    assert.match(measured.faultRefusal(MEASURED + 0x1000n, 0x1000n, 'shared') ?? '', /^a shared access to \[0x101000, 0x102000\), which the launch measured/);
    assert.equal(measured.faultRefusal(MEASURED, 0x1000n, 'private'), null);
    assert.equal(measured.faultRefusal(MEASURED + 0x4000n, 0x1000n, 'shared'), null, 'outside the measured span');
    measured.releasedByGuest(MEASURED + 0x1000n, 0x1000n);
    assert.deepEqual(measured.spans, [[MEASURED, MEASURED + 0x1000n], [MEASURED + 0x2000n, MEASURED + 0x4000n]]);
    assert.equal(measured.faultRefusal(MEASURED + 0x1000n, 0x1000n, 'shared'), null);
  });

  it('the VMM loop stops the VM on a shared fault on a measured page, and converts nothing', async () => {
    const measured = new MeasuredPages();
    measured.add(MEASURED, 0x4000n);
    const memory = recording(measured);
    const loop = new VmmLoop([new Scripted([fault(MEASURED, 0x1000n, false)])], memory, { ports: new GuestProtocol().ports() });
    await assert.rejects(loop.run(), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_VCPU_FAILED' && /a memory fault refused: a shared access to \[0x100000, 0x101000\)/.test(e.message));
    assert.deepEqual(memory.conversions, []);
  });

  it('after the guest asks for a measured page shared (MAP_GPA_RANGE), its faults convert as any', async () => {
    const measured = new MeasuredPages();
    measured.add(MEASURED, 0x4000n);
    const memory = recording(measured);
    const vcpu = new Scripted([mapGpaRange(MEASURED, 1n, 0n), fault(MEASURED, 0x1000n, false), fault(MEASURED + 0x1000n, 0x1000n, true), exitPort]);
    const report = await new VmmLoop([vcpu], memory, { ports: new GuestProtocol().ports() }).run();
    assert.deepEqual(report.vcpus, [{ vcpu: 0, status: 0 }]);
    assert.deepEqual(vcpu.answers, [0]);
    assert.deepEqual(memory.conversions, ['0x100000+0x1000 shared', '0x100000+0x1000 shared', '0x101000+0x1000 private']);
  });
});
