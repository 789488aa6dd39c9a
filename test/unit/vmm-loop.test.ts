// The VMM loop's dispatch, with stand-in vCPUs that replay scripted exits and a stand-in
// memory that records conversions: what the guest is answered for each kind of request,
// the memory-fault path (SW-protected VMs on 6.12 never raise KVM_EXIT_MEMORY_FAULT; SNP
// and TDX do), unexpected exits, stopping a spinning vCPU. The real kernel runs the loop
// in test/kernel/vmm.test.ts.

import assert from 'node:assert/strict';
import type { Bytes } from '../../lib/common/byte-range';
import { GuestmemError } from '../../lib/common/errors';
import type { StateChangeResult } from '../../lib/tracker/ram-block-attributes';
import type { PageState } from '../../lib/tracker/state-change-channel';
import { GuestProtocol, PORT_CONSOLE, PORT_EXIT } from '../../lib/vmm/guest-ports';
import type { Registers } from '../../lib/vmm/vcpu';
import type { VcpuExit } from '../../lib/vmm/vcpu-exit';
import { VmmLoop, type ConversionEvent, type LoopMemory, type LoopVcpu } from '../../lib/vmm/vmm-loop';

const PAGE = 4096n;
const BLOCK = { gpa: 0x100000n, size: 0x100000n };

function hypercall(gpa: bigint, pages: bigint, attributes: bigint, nr = 12n): VcpuExit {
  return { reason: 'hypercall', exitReason: 3, nr, args: [gpa, pages, attributes, 0n, 0n, 0n], flags: 1n, longMode: true };
}

function out32(port: number, value: number): VcpuExit {
  const data = Buffer.alloc(4);
  data.writeUInt32LE(value);
  return { reason: 'io', exitReason: 2, direction: 'out', port, size: 4, count: 1, data };
}

const exitGuest: VcpuExit = out32(PORT_EXIT, 0);

class ScriptedVcpu implements LoopVcpu {
  readonly answers: Array<number | bigint> = [];
  readonly ioAnswers: Uint8Array[] = [];
  private stopped = false;
  private wake: (() => void) | null = null;

  constructor(
    readonly index: number,
    private readonly exits: VcpuExit[],
    /** After the script: spin until stopped (true) or fail the test (false). */
    private readonly spinAfter = false,
  ) {}

  async run(): Promise<VcpuExit> {
    await new Promise((resolve) => setImmediate(resolve));
    if (this.stopped) return { reason: 'intr', exitReason: 10 };
    const next = this.exits.shift();
    if (next) return next;
    if (!this.spinAfter) throw new Error(`vCPU ${this.index} ran past its script`);
    await new Promise<void>((resolve) => (this.wake = resolve));
    return { reason: 'intr', exitReason: 10 };
  }

  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  completeHypercall(ret: number | bigint): void {
    this.answers.push(ret);
  }

  completeIo(data: Uint8Array): void {
    this.ioAnswers.push(data);
  }

  completeMmio(data: Uint8Array): void {
    this.ioAnswers.push(data);
  }

  get registers(): Registers {
    const zero = 0n;
    return { rax: 12n, rbx: zero, rcx: zero, rdx: zero, rsi: zero, rdi: zero, rsp: 0x8000n, rbp: zero, r8: zero, r9: zero, r10: zero, r11: zero, r12: zero, r13: zero, r14: zero, r15: zero, rip: 0x1234n, rflags: 2n };
  }
}

class RecordingMemory implements LoopMemory {
  readonly conversions: string[] = [];
  failWith: Error | null = null;

  constructor(private readonly synchronous = false) {}

  covers(gpa: Bytes, size: Bytes): boolean {
    return BigInt(gpa) >= BLOCK.gpa && BigInt(gpa) + BigInt(size) <= BLOCK.gpa + BLOCK.size;
  }

  convert(at: Bytes, length: Bytes, to: PageState): StateChangeResult | Promise<StateChangeResult> {
    if (this.synchronous) return this.convertNow(at, length, to);
    return Promise.resolve().then(() => this.convertNow(at, length, to));
  }

  private convertNow(at: Bytes, length: Bytes, to: PageState): StateChangeResult {
    if (this.failWith) throw this.failWith;
    const gpa = BigInt(at);
    const size = BigInt(length);
    this.conversions.push(`0x${gpa.toString(16)}+${size / PAGE} ${to}`);
    return { from: to === 'shared' ? 'private' : 'shared', to, changed: Number(size / PAGE), changedRuns: 1 };
  }
}

function loopOf(vcpus: ScriptedVcpu[], memory: LoopMemory, events: ConversionEvent[] = [], protocol = new GuestProtocol()) {
  return new VmmLoop(vcpus, memory, { ports: protocol.ports(), onConversion: (event) => events.push(event) });
}

// Both ways a memory can answer: a promise (an asynchronous listener somewhere) and at once
// (every listener synchronous, as the VFIO listener is), which the loop must handle alike.
for (const synchronous of [false, true]) {
  const mode = synchronous ? 'memory answering synchronously' : 'memory answering with promises';
  const memoryOf = () => new RecordingMemory(synchronous);

  describe(`VmmLoop: guest-driven conversions (${mode})`, () => {
    it('converts a MAP_GPA_RANGE request (bit 4 = private) and answers the guest 0', async () => {
      const vcpu = new ScriptedVcpu(0, [hypercall(0x101000n, 2n, 0x10n), hypercall(0x101000n, 1n, 0n), exitGuest]);
      const memory = memoryOf();
      const events: ConversionEvent[] = [];
      const report = await loopOf([vcpu], memory, events).run();
      assert.deepEqual(memory.conversions, ['0x101000+2 private', '0x101000+1 shared']);
      assert.deepEqual(vcpu.answers, [0, 0]);
      assert.deepEqual(report.vcpus, [{ vcpu: 0, status: 0 }]);
      assert.deepEqual(report.conversions, { converted: 2, rejected: 0, failed: 0 });
      assert.deepEqual(events.map((e) => [e.source, e.outcome, e.result]), [['hypercall', 'converted', 0], ['hypercall', 'converted', 0]]);
    });

    it('accepts the page-size hints (bits 0-1) and converts by 4 KiB pages whatever the hint', async () => {
      const vcpu = new ScriptedVcpu(0, [hypercall(0x100000n, 256n, 0x11n), hypercall(0x100000n, 256n, 0x2n), exitGuest]);
      const memory = memoryOf();
      await loopOf([vcpu], memory).run();
      assert.deepEqual(memory.conversions, ['0x100000+256 private', '0x100000+256 shared']);
    });

    it('answers -KVM_EINVAL to bad requests, converts nothing, and the guest goes on', async () => {
      const bad = [
        hypercall(0x100000n, 1n, 0x20n), // unknown attribute bit
        hypercall(0x100000n, 1n, 0x3n), // reserved page-size hint
        hypercall(0x100800n, 1n, 0x10n), // misaligned (KVM answers this one itself)
        hypercall(0x100000n, 0n, 0x10n), // zero pages (likewise)
        hypercall(0x1ff000n, 2n, 0x10n), // runs past the block
        hypercall(0x10000000n, 1n, 0x10n), // in no block
        hypercall(0xfffffffffffff000n, 2n, 0n), // wraps past 2^64
      ];
      const vcpu = new ScriptedVcpu(0, [...bad, hypercall(0x100000n, 1n, 0n), exitGuest]);
      const memory = memoryOf();
      const events: ConversionEvent[] = [];
      const report = await loopOf([vcpu], memory, events).run();
      assert.deepEqual(vcpu.answers, [...bad.map(() => -22), 0]);
      assert.deepEqual(memory.conversions, ['0x100000+1 shared']);
      assert.deepEqual(report.conversions, { converted: 1, rejected: bad.length, failed: 0 });
      assert.ok(events.slice(0, bad.length).every((e) => e.outcome === 'rejected' && typeof e.reason === 'string'));
    });

    it('answers -KVM_EFAULT when the conversion failed and was rolled back; the guest goes on', async () => {
      const vcpu = new ScriptedVcpu(0, [hypercall(0x100000n, 1n, 0n), exitGuest]);
      const memory = memoryOf();
      memory.failWith = new GuestmemError('ERR_GUESTMEM_CONVERSION_FAILED', 'listener vfio failed; rolled back', { step: 'listeners', errors: [], applied: [] });
      const report = await loopOf([vcpu], memory).run();
      assert.deepEqual(vcpu.answers, [-14]);
      assert.deepEqual(report.conversions, { converted: 0, rejected: 0, failed: 1 });
      assert.deepEqual(report.vcpus, [{ vcpu: 0, status: 0 }]);
    });

    it('stops the VM when a failed conversion left runs converted: the guest is never told nothing changed', async () => {
      const vcpu = new ScriptedVcpu(0, [hypercall(0x100000n, 4n, 0n), exitGuest]);
      const memory = memoryOf();
      memory.failWith = new GuestmemError('ERR_GUESTMEM_CONVERSION_FAILED', 'listener vfio failed; these runs stayed shared, in agreement: 0+1', { step: 'listeners', errors: [], applied: [[0, 1]] });
      await assert.rejects(loopOf([vcpu], memory).run(), { code: 'ERR_GUESTMEM_CONVERSION_FAILED', message: /stayed shared/ });
      assert.deepEqual(vcpu.answers, []);
    });

    it('answers -KVM_EINVAL when the memory refuses the range before any step (pages awaiting repair)', async () => {
      const vcpu = new ScriptedVcpu(0, [hypercall(0x100000n, 1n, 0n), exitGuest]);
      const memory = memoryOf();
      memory.failWith = new GuestmemError('ERR_GUESTMEM_CONVERSION_REJECTED', 'pages 0+1 disagree until repair()');
      const report = await loopOf([vcpu], memory).run();
      assert.deepEqual(vcpu.answers, [-22]);
      assert.deepEqual(report.conversions, { converted: 0, rejected: 1, failed: 0 });
    });

    it('stops the VM when a rollback failed: nothing may run while the host is unsure what is mapped', async () => {
      const vcpu = new ScriptedVcpu(0, [hypercall(0x100000n, 1n, 0n), exitGuest]);
      const memory = memoryOf();
      memory.failWith = new GuestmemError('ERR_GUESTMEM_ROLLBACK_FAILED', 'undo failed', { errors: [] });
      await assert.rejects(loopOf([vcpu], memory).run(), { code: 'ERR_GUESTMEM_ROLLBACK_FAILED' });
      assert.deepEqual(vcpu.answers, []);
    });

    it('stops the VM on a hypercall other than MAP_GPA_RANGE', async () => {
      const vcpu = new ScriptedVcpu(0, [hypercall(0n, 0n, 0n, 5n)]);
      await assert.rejects(loopOf([vcpu], memoryOf()).run(), { code: 'ERR_GUESTMEM_VCPU_FAILED', message: /hypercall 5/ });
    });
  });

  describe(`VmmLoop: KVM_EXIT_MEMORY_FAULT (SNP/TDX) (${mode})`, () => {
    const fault = (gpa: bigint, flags: bigint): VcpuExit => ({ reason: 'memory-fault', exitReason: 39, flags, gpa, size: PAGE });

    it('converts the faulting range to what the access wanted (private iff KVM_MEMORY_EXIT_FLAG_PRIVATE) and re-enters', async () => {
      const vcpu = new ScriptedVcpu(0, [fault(0x102000n, 8n), fault(0x103000n, 0n), exitGuest]);
      const memory = memoryOf();
      const events: ConversionEvent[] = [];
      await loopOf([vcpu], memory, events).run();
      assert.deepEqual(memory.conversions, ['0x102000+1 private', '0x103000+1 shared']);
      assert.deepEqual(events.map((e) => e.source), ['memory-fault', 'memory-fault']);
      assert.deepEqual(vcpu.answers, [], 'a memory fault has no return value');
    });

    it('stops the VM when the faulting range cannot be converted (as QEMU does)', async () => {
      const vcpu = new ScriptedVcpu(0, [fault(0x102000n, 8n)]);
      const memory = memoryOf();
      memory.failWith = new Error('EIO');
      await assert.rejects(loopOf([vcpu], memory).run(), { code: 'ERR_GUESTMEM_VCPU_FAILED', message: /memory-fault .*gpa=0x102000/ });
    });

    it('stops the VM on a fault outside every block', async () => {
      const vcpu = new ScriptedVcpu(0, [fault(0x900000n, 8n)]);
      await assert.rejects(loopOf([vcpu], memoryOf()).run(), { code: 'ERR_GUESTMEM_VCPU_FAILED', message: /outside every RAM block/ });
    });
  });
}

describe('VmmLoop: ports, unexpected exits, stopping', () => {
  it('hands port I/O to the handlers: console text, exit status; an IN gets the handler\'s bytes', async () => {
    const text = Buffer.from('hi\n');
    const protocol = new GuestProtocol();
    const ports = protocol.ports();
    ports.set(0x70, () => Uint8Array.of(0x2a));
    const vcpu = new ScriptedVcpu(0, [
      { reason: 'io', exitReason: 2, direction: 'out', port: PORT_CONSOLE, size: 1, count: 3, data: text },
      { reason: 'io', exitReason: 2, direction: 'in', port: 0x70, size: 1, count: 1 },
      out32(PORT_EXIT, 3),
    ]);
    const report = await new VmmLoop([vcpu], new RecordingMemory(), { ports }).run();
    assert.equal(protocol.console, 'hi\n');
    assert.deepEqual(vcpu.ioAnswers, [Uint8Array.of(0x2a)]);
    assert.deepEqual(report.vcpus, [{ vcpu: 0, status: 3 }]);
  });

  it('hands MMIO to its handler: a read gets the handler\'s bytes, a write none; without a handler MMIO stops the VM', async () => {
    const seen: string[] = [];
    const vcpu = new ScriptedVcpu(0, [
      { reason: 'mmio', exitReason: 6, address: 0xfee00000n, length: 4, isWrite: false },
      { reason: 'mmio', exitReason: 6, address: 0xfee00010n, length: 4, isWrite: true, data: Buffer.of(1, 2, 3, 4) },
      exitGuest,
    ]);
    const mmio = (exit: { address: bigint; isWrite: boolean }) => {
      seen.push(`${exit.isWrite ? 'write' : 'read'} 0x${exit.address.toString(16)}`);
      return exit.isWrite ? undefined : Uint8Array.of(9, 8, 7, 6);
    };
    await new VmmLoop([vcpu], new RecordingMemory(), { ports: new GuestProtocol().ports(), mmio }).run();
    assert.deepEqual(seen, ['read 0xfee00000', 'write 0xfee00010']);
    assert.deepEqual(vcpu.ioAnswers, [Uint8Array.of(9, 8, 7, 6)]);
    const unhandled = new ScriptedVcpu(0, [{ reason: 'mmio', exitReason: 6, address: 0x22n, length: 4, isWrite: false }]);
    await assert.rejects(loopOf([unhandled], new RecordingMemory()).run(), { code: 'ERR_GUESTMEM_VCPU_FAILED', message: /no MMIO handler for 0x22: exit mmio/ });
  });

  it('a port handler that throws a plain error (or a string) stops the VM with a code: ERR_GUESTMEM_VCPU_FAILED naming the vCPU, what it threw as the cause', async () => {
    for (const thrown of [new Error('the device model broke'), 'a string']) {
      // eslint-disable-next-line @typescript-eslint/only-throw-error -- a handler that throws a string is the case under test
      const ports = new Map([[0x71, () => { throw thrown; }]]);
      const vcpu = new ScriptedVcpu(3, [{ reason: 'io', exitReason: 2, direction: 'out', port: 0x71, size: 1, count: 1, data: Buffer.of(1) }]);
      await assert.rejects(new VmmLoop([vcpu], new RecordingMemory(), { ports, ids: [3] }).run(), (error: Error & { code?: string; vcpu?: number }) => {
        assert.ok((error as unknown) instanceof GuestmemError);
        assert.equal(error.code, 'ERR_GUESTMEM_VCPU_FAILED');
        assert.equal(error.vcpu, 3);
        assert.equal(error.message, `vCPU 3 stopped the VM: ${thrown instanceof Error ? thrown.message : thrown}`);
        assert.equal(error.cause, thrown);
        return true;
      });
    }
  });

  for (const [name, exit] of [
    ['an unhandled port', { reason: 'io', exitReason: 2, direction: 'out', port: 0x80, size: 1, count: 1, data: Buffer.of(1) }],
    ['a triple fault', { reason: 'shutdown', exitReason: 8 }],
    ['a failed entry', { reason: 'fail-entry', exitReason: 9, hardwareEntryFailureReason: 0x80000021n, cpu: 0 }],
    ['an internal error', { reason: 'internal-error', exitReason: 17, suberror: 1, data: [0x10n] }],
  ] as Array<[string, VcpuExit]>) {
    it(`stops every vCPU on ${name}, naming the exit, the vCPU and its registers`, async () => {
      const failing = new ScriptedVcpu(1, [exit]);
      const other = new ScriptedVcpu(0, [], true);
      await assert.rejects(loopOf([other, failing], new RecordingMemory()).run(), (error: Error & { code?: string }) => {
        assert.equal(error.code, 'ERR_GUESTMEM_VCPU_FAILED');
        assert.match(error.message, new RegExp(`vCPU 1 stopped the VM: .*exit ${exit.reason} \\(KVM exit ${exit.exitReason}\\)`));
        assert.match(error.message, /rip=0x1234 rsp=0x8000 rax=0xc/);
        return true;
      });
    });
  }

  it('stop() ends a spinning guest: run() resolves with every vCPU stopped', async () => {
    const spinning = [new ScriptedVcpu(0, [], true), new ScriptedVcpu(1, [], true)];
    const loop = loopOf(spinning, new RecordingMemory());
    const running = loop.run();
    setTimeout(() => loop.stop(), 20);
    const report = await running;
    assert.equal(report.stopped, true);
    assert.deepEqual(report.vcpus, [{ vcpu: 0, stopped: true }, { vcpu: 1, stopped: true }]);
  });

  it('one vCPU exiting leaves the others running until they exit', async () => {
    const first = new ScriptedVcpu(0, [out32(PORT_EXIT, 0)]);
    const second = new ScriptedVcpu(1, [hypercall(0x100000n, 1n, 0n), hypercall(0x100000n, 1n, 0x10n), out32(PORT_EXIT, 0)]);
    const memory = new RecordingMemory();
    const report = await loopOf([first, second], memory).run();
    assert.deepEqual(report.vcpus, [{ vcpu: 0, status: 0 }, { vcpu: 1, status: 0 }]);
    assert.equal(memory.conversions.length, 2);
  });
});
