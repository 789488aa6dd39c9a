// Guest memory of real size on a real kernel: an 8 GiB block at gpa 4 GiB (and a 64 GiB one
// at 64 GiB) in a VM whose own RAM is 2 GiB. Created sparse; converted at its first, middle
// and last pages through KVM attributes, the VFIO listener and punch-hole; read and written
// through windows at those offsets; driven by the CLI (convert, replay) too.
//
// edu can DMA only below 256 MiB (28-bit mask), and the listener maps at iova = gpa (4 GiB
// and up): there the test checks the listener's mapping count (the kernel accepted each
// map and unmap). To prove that a window at offset X and the address the kernel was given
// for X are the same page, it also maps that page a second time at a low IOVA and has the
// device copy it.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { AssignedDevice } from '../../lib/vfio/assigned-device';
import { EduDevice } from '../../lib/vfio/edu-device';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { Kvm } from '../../lib/kvm/kvm';
import type { RamBlock } from '../../lib/memory/ram-block';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import { guestmem } from '../support/cli';
import { findEdu } from '../support/edu';
import { requires } from '../support/requires';

const PAGE = 4096;
const MiB = 2 ** 20;
const GiB = 2 ** 30;
/** Low IOVAs, within edu's reach, for the alias mappings of the DMA proof. */
const ALIAS_IOVA = 96 * MiB;
const SCRATCH_IOVA = 97 * MiB;

function memAvailableBytes(): number {
  const line = fs.readFileSync('/proc/meminfo', 'utf8').split('\n').find((l) => l.startsWith('MemAvailable:'))!;
  return Number(/(\d+)/.exec(line)![1]) * 1024;
}

describe('an 8 GiB block at gpa 4 GiB on a real kernel', function () {
  this.timeout(300_000);
  let kvm: Kvm;
  let memory: GuestMemory;
  let assigned: AssignedDevice;
  let block: RamBlock;
  let listener: VfioDmaListener;

  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device'));
  after(async () => {
    await memory?.shutdown();
    assigned?.close();
    kvm?.close();
  });

  it('creates it sparse: memslot, guest_memfd and memfd take no memory but KVM\'s bookkeeping', () => {
    kvm = Kvm.open();
    memory = new GuestMemory(kvm.createVm('sw-protected'));
    assigned = AssignedDevice.open(findEdu()!);
    const before = memAvailableBytes();
    const started = process.hrtime.bigint();
    block = memory.addBlock({ gpa: 4n * BigInt(GiB), size: 8n * BigInt(GiB), name: 'big' });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    const used = before - memAvailableBytes();
    console.log(`      (8 GiB block created and marked private in ${ms.toFixed(0)} ms; MemAvailable dropped ${(used / MiB).toFixed(1)} MiB)`);
    assert.equal(block.gpa, 4 * GiB);
    assert.equal(block.size, 8 * GiB);
    assert.equal(block.shared.size, 8n * BigInt(GiB));
    assert.equal(block.guestMemfd.size, 8n * BigInt(GiB));
    assert.equal(block.privatePages, 2 * 2 ** 20);
    assert.equal(block.shared.allocatedBytes(), 0);
    // KVM 6.12 keeps one attribute entry per page: about 2.4 MB per GiB, far below 8 GiB.
    assert.ok(used < 256 * MiB, `creating the block used ${used} bytes`);
  });

  it('converts its first, middle and last pages through KVM, the VFIO listener and punch-hole', async () => {
    listener = new VfioDmaListener(assigned.dma, { sharedAddress: block.shared.address, gpa: BigInt(block.gpa), name: 'vfio' });
    await block.register(listener);
    const offsets = [0, 4 * GiB, 8 * GiB - PAGE];
    for (const [i, offset] of offsets.entries()) {
      const result = await block.convert(BigInt(block.gpa) + BigInt(offset), BigInt(PAGE), 'shared');
      assert.deepEqual(result, { from: 'private', to: 'shared', changed: 1, changedRuns: 1 });
      assert.equal(listener.mappings, i + 1, `the listener mapped page 0x${offset.toString(16)} at iova 0x${(block.gpa + offset).toString(16)}`);
      block.shared.write(offset, Buffer.from(`page ${i} of the big block`));
      assert.equal(Buffer.from(block.shared.view(offset, PAGE).subarray(0, 6)).toString(), `page ${i}`);
    }
    assert.deepEqual(block.attributes.runs('shared'), [[0, 1], [2 ** 20, 1], [2 * 2 ** 20 - 1, 1]]);
    assert.equal(block.shared.allocatedBytes(), 3 * PAGE, 'only the three written pages hold memory');

    for (const [i, offset] of offsets.entries()) {
      const text = `page ${i} of the big block`;
      assert.equal(block.shared.read(offset, text.length).toString(), text);
      await memory.convert(block.gpa + offset, PAGE, 'private');
      assert.equal(listener.mappings, offsets.length - i - 1);
      assert.equal(block.shared.allocatedBytes(), (offsets.length - i - 1) * PAGE, 'punch-hole gave the page back');
    }
    assert.equal(block.sharedPages, 0);
    // Read last: a read through a shared mapping faults a shmem page in again.
    for (const offset of offsets) assert.ok(block.shared.read(offset, PAGE).every((b) => b === 0), 'a punched page reads back zero');
  });

  it('lets the device read, at the block\'s last page, what a window wrote there', async function () {
    this.timeout(60_000);
    const offset = 8 * GiB - PAGE;
    await block.convert(block.gpa + offset, PAGE, 'shared');
    using scratch = SharedMemory.create(PAGE, 'big-block-scratch');
    const edu = new EduDevice(assigned.device);
    edu.enableBusMaster();
    // The same host page as the listener's mapping at iova gpa + offset, again at a low IOVA.
    assigned.dma.map(block.shared.address + BigInt(offset), ALIAS_IOVA, PAGE);
    assigned.dma.map(scratch.address, SCRATCH_IOVA, PAGE);
    try {
      block.shared.view(offset, 64).fill(0x5c);
      await edu.copy(ALIAS_IOVA, SCRATCH_IOVA, 64);
      assert.ok(scratch.read(0, 64).every((b) => b === 0x5c), 'the device read the page the window wrote');
    } finally {
      assigned.dma.unmap(ALIAS_IOVA, PAGE);
      assigned.dma.unmap(SCRATCH_IOVA, PAGE);
    }
    await block.convert(block.gpa + offset, PAGE, 'private');
    assert.equal(listener.mappings, 0);
  });

  it('accepts a 64 GiB block at gpa 64 GiB beside it, and converts its last page', async function () {
    this.timeout(180_000);
    const started = process.hrtime.bigint();
    const huge = memory.addBlock({ gpa: 64 * GiB, size: 64 * GiB, name: 'huge' });
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    console.log(`      (64 GiB block created and marked private in ${ms.toFixed(0)} ms)`);
    const last = 64n * BigInt(GiB) - BigInt(PAGE);
    await memory.convert(BigInt(huge.gpa) + last, PAGE, 'shared');
    huge.shared.write(last, Uint8Array.of(1, 2, 3));
    assert.deepEqual([...huge.shared.read(last, 3)], [1, 2, 3]);
    await memory.convert(BigInt(huge.gpa) + last, PAGE, 'private');
    assert.equal(huge.shared.allocatedBytes(), 0);
  });
});

describe('the CLI on 8 GiB at gpa 4 GiB', function () {
  this.timeout(300_000);
  let edu: string;

  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device'));
  before(() => (edu = findEdu()!));

  it('guestmem convert --size 8G --gpa 4G converts first, middle and last pages with the device attached', () => {
    const result = guestmem([
      'convert', '--size', '8G', '--gpa', '4G', '--vfio', edu,
      '--range', '0+4K', '--range', '4G+4K', '--range', '0x1fffff000+4K', '--to', 'shared', '--json',
    ]);
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.deepEqual(report.block, { gpa: 4 * GiB, size: 8 * GiB, sharedPages: 3, privatePages: 2 * 2 ** 20 - 3 });
    assert.equal(report.vfio.mappings, 3);
    assert.deepEqual(report.map.shared, [[0, 1], [2 ** 20, 1], [2 * 2 ** 20 - 1, 1]]);
    assert.deepEqual(report.conversions.map((c: { ok: boolean; changed: number }) => [c.ok, c.changed]), [[true, 1], [true, 1], [true, 1]]);
  });

  it('replays a trace whose addresses lie above 4 GiB, inferring the 8 GiB block', () => {
    const trace = [
      '7@1.000001:kvm_convert_memory start 0x100000000 size 0x40000 private_to_shared',
      "7@1.000002:ram_block_attributes_state_change offset 0x0 size 0x40000 from 'discarded' to 'populated'",
      '7@1.000003:kvm_convert_memory start 0x2fffff000 size 0x1000 private_to_shared',
      '7@1.000004:kvm_convert_memory start 0x100010000 size 0x1000 shared_to_private',
      "7@1.000005:ram_block_attributes_state_change offset 0x10000 size 0x1000 from 'populated' to 'discarded'",
      '7@1.000006:kvm_convert_memory start 0xfffffffffffff000 size 0x1000 private_to_shared',
    ].join('\n') + '\n';
    const result = guestmem(['replay', '-', '--vfio', edu, '--json'], trace);
    assert.equal(result.status, 0, result.stderr + result.stdout);
    const report = JSON.parse(result.stdout);
    assert.deepEqual(report.block, { gpa: 4 * GiB, size: 8 * GiB });
    assert.equal(report.inferred, true);
    const last = 2 * 2 ** 20 - 1;
    assert.deepEqual(report.shared, [[0, 16], [17, 47], [last, 1]]);
    assert.deepEqual(report.listeners.vfio.mapped, [[0, 16], [17, 47], [last, 1]]);
    assert.equal(report.rejected, 1, 'the address far above the guest is rejected, and the replay goes on');
    assert.equal(report.checked, 2);
    assert.deepEqual(report.mismatches, []);
  });

  it('bench compares a page at the far end of 8 GiB with one at the far end of 1 GiB', () => {
    const result = guestmem(['bench', '--pages', '1', '--iterations', '3', '--json']);
    assert.equal(result.status, 0, result.stderr);
    const { farEnd } = JSON.parse(result.stdout);
    assert.deepEqual(farEnd.rows.map((r: { blockSize: number; offset: number; conversions: number }) => [r.blockSize, r.offset, r.conversions]), [
      [GiB, GiB - PAGE, 6],
      [8 * GiB, 8 * GiB - PAGE, 6],
    ]);
    assert.ok(farEnd.rows.every((r: { medianNs: number }) => r.medianNs > 0));
  });
});
