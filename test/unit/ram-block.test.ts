// The conversion sequence of a RAM block, with a stand-in for the VM so that KVM's memory
// attributes can be read back (6.12 has no ioctl for it): the order of the steps, and that
// every failure leaves KVM, the tracker and the listeners as they were. The real kernel
// runs the same sequence in test/kernel/conversion.test.ts.

import assert from 'node:assert/strict';
import type { GranuleRange } from '../../lib/common/byte-range';
import type { Vm } from '../../lib/kvm/kvm';
import { RamBlock } from '../../lib/memory/ram-block';
import { RecordingListener } from '../../lib/tracker/recording-listener';

const PAGE = 4096;
const PAGES = 64;

/** A VM that keeps one attribute per page and logs every call. */
class FakeVm {
  readonly closed = false;
  readonly attributes = new Array<'private' | 'shared'>(PAGES).fill('shared');
  readonly log: string[] = [];
  failAttributes = false;
  failPunch = false;
  supportsPreFault = true;
  failPreFault = false;

  createGuestMemfd() {
    return {
      closed: false,
      punchHole: (offset: number, size: number) => {
        if (this.failPunch) throw Object.assign(new Error('EBADF: bad file descriptor, fallocate'), { code: 'EBADF' });
        this.log.push(`gmem-punch ${offset / PAGE}+${size / PAGE}`);
      },
      close() {},
    };
  }

  preFaultMemory(vcpuFd: number, gpa: number, size: number): void {
    if (this.failPreFault) throw Object.assign(new Error('EIO: i/o error, ioctl(KVM_PRE_FAULT_MEMORY)'), { code: 'EIO' });
    this.log.push(`prefault vcpu${vcpuFd} ${(gpa - GPA) / PAGE}+${size / PAGE}`);
  }

  setUserMemoryRegion(): void {}
  deleteMemorySlot(): void {}

  setMemoryAttributes(gpa: number, size: number, to: 'private' | 'shared'): void {
    if (this.failAttributes) throw Object.assign(new Error('EINVAL: invalid argument, ioctl(KVM_SET_MEMORY_ATTRIBUTES)'), { code: 'EINVAL' });
    this.attributes.fill(to, (gpa - GPA) / PAGE, (gpa - GPA + size) / PAGE);
    this.log.push(`attributes ${(gpa - GPA) / PAGE}+${size / PAGE} ${to}`);
  }
}

const GPA = 1 << 24;

function setUp(): { vm: FakeVm; block: RamBlock; listener: RecordingListener } {
  const vm = new FakeVm();
  const block = new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'test' });
  const listener = new RecordingListener('dma', PAGES);
  return { vm, block, listener };
}

/** KVM's view, the tracker's and the listener's, for comparing before and after. */
function snapshot(vm: FakeVm, block: RamBlock, listener: RecordingListener): string {
  return JSON.stringify([vm.attributes.join(','), block.attributes.runs('shared'), listener.mappedRuns()]);
}

describe('RamBlock conversion sequence', () => {
  it('makes the whole block private in KVM when it is created, as the tracker starts', () => {
    const { vm, block } = setUp();
    assert.deepEqual(vm.log, [`attributes 0+${PAGES} private`]);
    assert.equal(block.privatePages, PAGES);
    block.close();
  });

  it('to shared: attributes, listeners, punch-hole (QEMU\'s order); to private: listeners (unmap) before attributes, then the discard', async () => {
    const { vm, block, listener } = setUp();
    const order: string[] = vm.log;
    const inner = {
      name: 'order',
      populate: (r: GranuleRange) => void order.push(`populate ${r.first}+${r.count}`),
      discard: (r: GranuleRange) => void order.push(`discard ${r.first}+${r.count}`),
    };
    await block.register(inner);
    await block.register(listener);
    order.length = 0;
    await block.convert(GPA + 4 * PAGE, 8 * PAGE, 'shared');
    await block.convert(GPA + 4 * PAGE, 2 * PAGE, 'private');
    assert.deepEqual(order, ['attributes 4+8 shared', 'populate 4+8', 'gmem-punch 4+8', 'discard 4+2', 'attributes 4+2 private']);
    assert.equal(block.shared.allocatedBytes(), 0, 'the shared memfd was punched (nothing was ever written)');
    assert.equal(block.stats.conversions, 2);
    await block.shutdown();
    assert.deepEqual(order.slice(-1), ['discard 6+6'], 'shutdown unregistered the listeners, discarding what they held');
    assert.deepEqual(block.attributes.listeners, []);
  });

  it('runs concurrent conversions of a block one after the other, KVM in step with the tracker', async () => {
    const { vm, block, listener } = setUp();
    await block.register(listener);
    vm.log.length = 0;
    await Promise.all([
      block.convert(GPA, 8 * PAGE, 'shared'),
      block.convert(GPA + 4 * PAGE, 8 * PAGE, 'private'),
      block.convert(GPA + 2 * PAGE, 4 * PAGE, 'shared'),
    ]);
    assert.deepEqual(vm.log, ['attributes 0+8 shared', 'gmem-punch 0+8', 'attributes 4+8 private', 'attributes 2+4 shared', 'gmem-punch 2+4']);
    assert.deepEqual(block.attributes.runs('shared'), [[0, 6]]);
    assert.equal(vm.attributes.slice(0, 12).join(','), 'shared,shared,shared,shared,shared,shared,private,private,private,private,private,private');
    block.close();
  });

  it('puts a mixture\'s KVM attributes back, run by run, when a listener fails', async () => {
    const { vm, block, listener } = setUp();
    await block.register(listener);
    await block.convert(GPA + 2 * PAGE, 2 * PAGE, 'shared');
    await block.convert(GPA + 10 * PAGE, 3 * PAGE, 'shared');
    const before = snapshot(vm, block, listener);
    listener.failWhen = (kind, range) => kind === 'populate' && range.first === 13;
    await assert.rejects(block.convert(GPA, 32 * PAGE, 'shared'), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_CONVERSION_FAILED');
      assert.match(e.message, /failed at step listeners: listener "dma" failed to populate \[0xd000/);
      return true;
    });
    assert.equal(snapshot(vm, block, listener), before);
    assert.equal(block.stats.failed, 1);
    block.close();
  });

  it('undoes the listeners and KVM when the discard step fails', async () => {
    const { vm, block, listener } = setUp();
    await block.register(listener);
    await block.convert(GPA, 4 * PAGE, 'shared');
    await block.convert(GPA + 8 * PAGE, 4 * PAGE, 'shared');
    const before = snapshot(vm, block, listener);
    vm.failPunch = true;
    await assert.rejects(block.convert(GPA, 16 * PAGE, 'shared'), /failed at step discard: EBADF/);
    assert.equal(snapshot(vm, block, listener), before);
    assert.equal(listener.errors, 0);
    block.close();
  });

  it('changes nothing when KVM refuses the attributes, and rejects bad ranges before any step', async () => {
    const { vm, block, listener } = setUp();
    await block.register(listener);
    const before = snapshot(vm, block, listener);
    vm.failAttributes = true;
    await assert.rejects(block.convert(GPA, PAGE, 'shared'), /failed at step kvmAttributes: EINVAL/);
    vm.failAttributes = false;
    const calls = vm.log.length;
    await assert.rejects(block.convert(GPA + 1, PAGE, 'shared'), RangeError);
    await assert.rejects(block.convert(GPA + PAGES * PAGE, PAGE, 'shared'), /outside the block/);
    await assert.rejects(block.convert(GPA - PAGE, PAGE, 'shared'), /below block test/);
    assert.equal(vm.log.length, calls, 'no kernel call for a bad range');
    assert.equal(snapshot(vm, block, listener), before);
    block.close();
  });

  it('pre-faults each converted range last, on the vCPU given, only where asked and where KVM can', async () => {
    const vm = new FakeVm();
    const block = new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'test', prefault: () => 7 });
    await block.convert(GPA + 4 * PAGE, 8 * PAGE, 'shared');
    await block.convert(GPA + 4 * PAGE, 2 * PAGE, 'private');
    assert.deepEqual(vm.log.slice(1), ['attributes 4+8 shared', 'gmem-punch 4+8', 'prefault vcpu7 4+8', 'attributes 4+2 private', 'prefault vcpu7 4+2']);
    assert.ok(block.stats.ns.prefault > 0n);
    block.close();

    const { vm: plainVm, block: plain } = setUp();
    await plain.convert(GPA, PAGE, 'shared');
    assert.ok(!plainVm.log.some((line) => line.startsWith('prefault')), 'no prefault option: no pre-fault');
    plain.close();

    const unable = new FakeVm();
    unable.supportsPreFault = false;
    const noCap = new RamBlock(unable as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'test', prefault: () => 7 });
    await noCap.convert(GPA, PAGE, 'shared');
    assert.ok(!unable.log.some((line) => line.startsWith('prefault')), 'KVM_CAP_PRE_FAULT_MEMORY 0: no pre-fault');
    noCap.close();
  });

  it('ignores a failed pre-fault, as QEMU does: the conversion stands and the failure is counted', async () => {
    const vm = new FakeVm();
    const block = new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'test', prefault: () => 7 });
    vm.failPreFault = true;
    await block.convert(GPA, 2 * PAGE, 'shared');
    assert.deepEqual(block.attributes.runs('shared'), [[0, 2]]);
    assert.deepEqual(vm.attributes.slice(0, 3), ['shared', 'shared', 'private']);
    assert.equal(block.stats.prefaultFailed, 1);
    assert.equal(block.stats.failed, 0);
    assert.throws(
      () => new RamBlock(vm as unknown as Vm, { slot: 1, gpa: GPA, size: PAGES * PAGE, prefault: 7 as unknown as () => number }),
      { code: 'ERR_INVALID_ARG_TYPE' },
    );
    block.close();
  });
});
