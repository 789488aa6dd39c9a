// Embedding guestmem in a VMM that already has its VM, memslots and memory: the memslot
// numbers GuestMemory takes, and a RamBlock that adopts the VMM's shared memory (a memfd at
// an offset, or memory by address) and guest_memfd (at an offset) and memslot instead of
// making them, closing none of them unless told to. A stand-in VM logs what reaches KVM; a
// memfd stands in for the guest_memfd (both take the same punch-hole). The real kernel
// runs it in test/kernel/embedding.test.ts, and examples/existing-vmm from a C VMM.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native } from '../../lib/common/native';
import { DelegatedVm } from '../../lib/kvm/delegated-vm';
import type { Vm } from '../../lib/kvm/kvm';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { RamBlock } from '../../lib/memory/ram-block';

const PAGE = 4096;
const MiB = 1 << 20;
const GPA = 16 * MiB;

class FakeVm {
  closed = false;
  readonly type = 1;
  readonly supportsGuestMemfd = true;
  readonly memoryAttributes = 8n;
  readonly supportsPreFault = false;
  readonly log: string[] = [];

  createGuestMemfd(size: number) {
    this.log.push(`create guest_memfd ${size}`);
    const fd = native().memfdCreate('fake-gmem');
    native().ftruncate(fd, size);
    return { fd, offset: 0n, size: BigInt(size), closed: false, punchHole: () => {}, close() { if (!this.closed) fs.closeSync(fd); this.closed = true; } };
  }

  setUserMemoryRegion(region: { slot: number; gpa: number; guestMemfdOffset?: bigint }): void {
    this.log.push(`memslot ${region.slot} at 0x${region.gpa.toString(16)} gmem+${region.guestMemfdOffset ?? 0n}`);
  }

  deleteMemorySlot(slot: number): void {
    this.log.push(`delete memslot ${slot}`);
  }

  setMemoryAttributes(gpa: number, size: number, to: string): void {
    this.log.push(`attributes 0x${gpa.toString(16)}+0x${size.toString(16)} ${to}`);
  }
}

function memfd(size: number): number {
  const fd = native().memfdCreate('vmm-ram');
  native().ftruncate(fd, size);
  return fd;
}

/** A page-aligned address inside this process's private memory (the V8/malloc heap). */
function heapPage(): bigint {
  const line = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').find((l) => / rw-p .*\[heap\]$/.test(l))!;
  return BigInt(`0x${line.split('-')[0]}`);
}

const isOpen = (fd: number) => {
  try {
    fs.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
};

describe('embedding: memslot numbers', () => {
  it('numbers from 0, or from firstSlot, skipping none', () => {
    const vm = new FakeVm();
    const memory = new GuestMemory(vm as unknown as Vm, { firstSlot: 10 });
    memory.addBlock({ gpa: GPA, size: MiB });
    memory.addBlock({ gpa: GPA + MiB, size: MiB });
    assert.deepEqual(memory.blocks.map((b) => b.slot), [10, 11]);
    assert.equal(memory.nextFreeSlot, 12);
    memory.close();
  });

  it('takes only the numbers it is given, in order, and refuses a block past them before any call', () => {
    const vm = new FakeVm();
    const memory = new GuestMemory(vm as unknown as Vm, { slots: [7, 3] });
    memory.addBlock({ gpa: GPA, size: MiB });
    memory.addBlock({ gpa: GPA + MiB, size: MiB });
    assert.deepEqual(memory.blocks.map((b) => b.slot), [7, 3]);
    const calls = vm.log.length;
    assert.throws(() => memory.addBlock({ gpa: GPA + 2 * MiB, size: MiB }), { code: 'ERR_OUT_OF_RANGE', message: /no memslot number left: all of 7, 3 are taken/ });
    assert.equal(vm.log.length, calls, 'nothing reached KVM');
    memory.close();
  });

  it('an explicit slot must be free and among the given ones', () => {
    const vm = new FakeVm();
    const memory = new GuestMemory(vm as unknown as Vm, { slots: [1, 2] });
    memory.addBlock({ gpa: GPA, size: MiB, slot: 2 });
    assert.throws(() => memory.addBlock({ gpa: GPA + MiB, size: MiB, slot: 2 }), /memslot 2 is taken already/);
    assert.throws(() => memory.addBlock({ gpa: GPA + MiB, size: MiB, slot: 5 }), /slot 5 is not among this memory's slots \(1, 2\)/);
    assert.equal(memory.addBlock({ gpa: GPA + MiB, size: MiB }).slot, 1);
    memory.close();
  });

  it('refuses bad slot options', () => {
    const vm = new FakeVm() as unknown as Vm;
    assert.throws(() => new GuestMemory(vm, { slots: [1, 1] }), /must not repeat/);
    assert.throws(() => new GuestMemory(vm, { slots: [-1] }), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => new GuestMemory(vm, { slots: [1.5] }), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => new GuestMemory(vm, { firstSlot: 70000 }), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => new GuestMemory(vm, { slots: [1], firstSlot: 2 }), /slots or firstSlot, not both/);
  });
});

describe('embedding: a RamBlock adopts what a VMM made', () => {
  it('adopts a memfd at an offset, a guest_memfd at an offset and the memslot: nothing is created, the block is marked private', async () => {
    const vm = new FakeVm();
    const ramFd = memfd(4 * MiB);
    const gmemFd = memfd(4 * MiB);
    const block = new RamBlock(vm as unknown as Vm, {
      slot: 5, gpa: GPA, size: MiB, name: 'vmm-ram',
      shared: { fd: ramFd, offset: 2 * MiB }, guestMemfd: { fd: gmemFd, offset: MiB }, memslot: { adopt: true },
    });
    assert.deepEqual(vm.log, [`attributes 0x${GPA.toString(16)}+0x${MiB.toString(16)} private`]);
    // The mapping is the VMM's file from 2 MiB: a write through guestmem lands there.
    block.shared.write(PAGE, Uint8Array.of(0xab));
    const fromFile = Buffer.alloc(1);
    fs.readSync(ramFd, fromFile, 0, 1, 2 * MiB + PAGE);
    assert.equal(fromFile[0], 0xab);
    // A conversion punches each backing at its place in the file, not at 0.
    fs.writeSync(gmemFd, Buffer.alloc(PAGE, 0x11), 0, PAGE, MiB + 2 * PAGE);
    await block.convert(GPA + 2 * PAGE, PAGE, 'shared');
    const gmemPage = Buffer.alloc(PAGE);
    fs.readSync(gmemFd, gmemPage, 0, PAGE, MiB + 2 * PAGE);
    assert.ok(gmemPage.every((b) => b === 0), 'the guest_memfd page at offset 1 MiB + 8 KiB was punched');
    await block.convert(GPA + PAGE, PAGE, 'private');
    fs.readSync(ramFd, fromFile, 0, 1, 2 * MiB + PAGE);
    assert.equal(fromFile[0], 0, 'the memfd page at offset 2 MiB + 4 KiB was punched');
    // Closing leaves the VMM's fds open and its memslot in place.
    await block.shutdown();
    assert.ok(!vm.log.some((l) => l.startsWith('delete memslot')), 'the adopted memslot stays');
    assert.ok(isOpen(ramFd) && isOpen(gmemFd), 'the VMM keeps its fds');
    fs.closeSync(ramFd);
    fs.closeSync(gmemFd);
  });

  it('closes the fds and deletes the memslot when told to', async () => {
    const vm = new FakeVm();
    const ramFd = memfd(MiB);
    const gmemFd = memfd(MiB);
    const block = new RamBlock(vm as unknown as Vm, {
      slot: 2, gpa: GPA, size: MiB, shared: { fd: ramFd, close: true }, guestMemfd: { fd: gmemFd, close: true }, memslot: { adopt: true, close: true },
    });
    assert.equal(block.shared.fd, ramFd, 'told to close it: guestmem owns that very fd');
    block.close();
    assert.ok(vm.log.includes('delete memslot 2'));
    assert.ok(!isOpen(ramFd) && !isOpen(gmemFd), 'both fds closed');
  });

  it('an adopted memslot needs its number and both backings it joins, refused before any call', () => {
    const vm = new FakeVm();
    const ramFd = memfd(MiB);
    const gmemFd = memfd(MiB);
    const memory = new GuestMemory(vm as unknown as Vm, { firstSlot: 10 });
    // Without `slot`, a free number (10) would be taken, and deleted on close in place of the VMM's.
    assert.throws(() => memory.addBlock({ gpa: GPA, size: MiB, shared: { fd: ramFd }, guestMemfd: { fd: gmemFd }, memslot: { adopt: true, close: true } }), { code: 'ERR_INVALID_ARG_VALUE', message: /give slot/ });
    // Without its backings, new ones would take the punch-holes and DMA while the guest used the VMM's.
    assert.throws(() => new RamBlock(vm as unknown as Vm, { slot: 3, gpa: GPA, size: MiB, shared: { fd: ramFd }, memslot: { adopt: true } }), { code: 'ERR_INVALID_ARG_VALUE', message: /shared and guestMemfd/ });
    assert.throws(() => new RamBlock(vm as unknown as Vm, { slot: 3, gpa: GPA, size: MiB, guestMemfd: { fd: gmemFd }, memslot: { adopt: true } }), { code: 'ERR_INVALID_ARG_VALUE', message: /shared and guestMemfd/ });
    assert.deepEqual(vm.log, []);
    assert.ok(isOpen(ramFd) && isOpen(gmemFd));
    memory.close();
    fs.closeSync(ramFd);
    fs.closeSync(gmemFd);
  });

  it('makes the memslot with the adopted guest_memfd offset when it is not adopted', () => {
    const vm = new FakeVm();
    const gmemFd = memfd(2 * MiB);
    const block = new RamBlock(vm as unknown as Vm, { slot: 4, gpa: GPA, size: MiB, guestMemfd: { fd: gmemFd, offset: MiB } });
    assert.deepEqual(vm.log.slice(0, 1), [`memslot 4 at 0x${GPA.toString(16)} gmem+${MiB}`]);
    block.close();
    assert.ok(vm.log.includes('delete memslot 4'), 'a memslot it made is deleted');
    assert.ok(isOpen(gmemFd));
    fs.closeSync(gmemFd);
  });

  it('adopts memory by address: windows and discard work; close unmaps it only when told to', () => {
    const vm = new FakeVm();
    using owner = SharedMemory.create(MiB, 'the-vmm-ram');
    owner.view(0, 2 * PAGE).fill(0x5a);
    const block = new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: MiB, shared: { address: owner.address } });
    assert.equal(block.shared.address, owner.address);
    assert.equal(block.shared.read(PAGE, 1)[0], 0x5a);
    block.shared.discard(PAGE, PAGE);
    assert.equal(owner.read(PAGE, 1)[0], 0, 'MADV_REMOVE freed the page of the owner\'s memfd');
    assert.equal(owner.read(0, 1)[0], 0x5a);
    assert.throws(() => block.shared.fd, { code: 'ERR_GUESTMEM_UNSUPPORTED' });
    const window = block.shared.view(0, PAGE);
    block.close();
    assert.equal(window.byteLength, 0, 'guestmem\'s windows are emptied');
    assert.equal(owner.read(0, 1)[0], 0x5a, 'the owner\'s memory is still mapped');
  });

  it('refuses memory that is not a shared mapping here (the heap included), and bad sources, before any call', () => {
    const vm = new FakeVm();
    const bad: Array<[unknown, RegExp | { code: string }]> = [
      [{ address: 0x1000 }, /is not a shared read-write mapping of this process/],
      [{ address: heapPage() }, /is not a shared read-write mapping of this process/],
      [{ address: 0x12345 }, { code: 'ERR_OUT_OF_RANGE' }],
      [{ fd: 999_999 }, { code: 'ERR_GUESTMEM_CLOSED' }],
      [{ fd: -1 }, { code: 'ERR_INVALID_ARG_TYPE' }],
      [{ fd: 0, close: 'yes' }, { code: 'ERR_INVALID_ARG_TYPE' }],
      [{ fd: 0, offset: 3 }, { code: 'ERR_OUT_OF_RANGE' }],
      [{}, { code: 'ERR_INVALID_ARG_TYPE' }],
      [null, { code: 'ERR_INVALID_ARG_TYPE' }],
    ];
    const gmem = memfd(MiB);
    for (const [shared, expected] of bad) {
      assert.throws(() => new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: MiB, shared: shared as never, guestMemfd: { fd: gmem }, memslot: { adopt: true } }), expected as RegExp, JSON.stringify(shared, (_k, v: unknown) => (typeof v === "bigint" ? `0x${v.toString(16)}` : v)));
    }
    const small = memfd(PAGE);
    assert.throws(() => new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: MiB, shared: { fd: small } }), /runs past the end/);
    assert.throws(() => new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: MiB, guestMemfd: { fd: small } }), /past the end of the 0x1000-byte guest_memfd/);
    assert.throws(() => new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: MiB, memslot: { adopt: 'yes' } as never }), /memslot must be \{ adopt: true/);
    assert.ok(isOpen(small) && isOpen(gmem), 'a refused adoption leaves the caller\'s fds alone');
    fs.closeSync(small);
    fs.closeSync(gmem);
    assert.deepEqual(vm.log, []);
  });
});

describe('embedding: a VM in another process (DelegatedVm)', () => {
  it('asks the VMM to set attributes and refuses what only the VM\'s own process can do', async () => {
    const asked: string[] = [];
    const vm = new DelegatedVm({ type: 1, setMemoryAttributes: (gpa, size, attributes) => void asked.push(`0x${gpa.toString(16)}+0x${size.toString(16)}=${attributes}`) });
    const ramFd = memfd(MiB);
    const gmemFd = memfd(MiB);
    const memory = new GuestMemory(vm, { slots: [3] });
    const block = memory.addBlock({ gpa: GPA, size: MiB, shared: { fd: ramFd }, guestMemfd: { fd: gmemFd }, memslot: { adopt: true } });
    await memory.convert(GPA, 2 * PAGE, 'shared');
    assert.deepEqual(asked, [`0x${GPA.toString(16)}+0x${MiB.toString(16)}=8`, `0x${GPA.toString(16)}+0x2000=0`]);
    assert.throws(() => memory.addBlock({ gpa: GPA + MiB, size: MiB }), /no memslot number left/);
    assert.throws(() => new GuestMemory(vm).addBlock({ gpa: GPA + MiB, size: MiB }), { code: 'ERR_GUESTMEM_UNSUPPORTED', message: /creating a guest_memfd: the VM belongs to another process/ });
    assert.equal(block.slot, 3);
    await memory.shutdown();
    assert.ok(isOpen(ramFd) && isOpen(gmemFd));
    fs.closeSync(ramFd);
    fs.closeSync(gmemFd);
  });

  it('a refusal from the VMM fails the conversion, which is rolled back', async () => {
    let refuse = false;
    const vm = new DelegatedVm({ setMemoryAttributes: () => {
      if (refuse) throw Object.assign(new Error('EIO: refused by the VMM'), { code: 'EIO', errno: -5, syscall: 'ioctl(KVM_SET_MEMORY_ATTRIBUTES)' });
    } });
    const memory = new GuestMemory(vm);
    const block = memory.addBlock({ gpa: GPA, size: MiB, slot: 0, shared: { fd: memfd(MiB), close: true }, guestMemfd: { fd: memfd(MiB), close: true }, memslot: { adopt: true } });
    refuse = true;
    await assert.rejects(memory.convert(GPA, PAGE, 'shared'), { code: 'ERR_GUESTMEM_CONVERSION_FAILED' });
    assert.equal(block.sharedPages, 0);
    await memory.shutdown();
  });
});
