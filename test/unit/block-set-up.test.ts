// Making a big block takes a progress callback and an AbortSignal (issue 26): KVM marks it
// private one GiB at a time; each chunk is reported, an abort is heard between chunks, and
// an abort (or a failed chunk) leaves nothing made: KVM's attributes shared again, no
// memslot, no backings, the slot number free. A stand-in VM stands for KVM.

import assert from 'node:assert/strict';
import type { Vm } from '../../lib/kvm/kvm';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { MARK_CHUNK_BYTES } from '../../lib/memory/block-set-up';
import { PunchingVm } from '../support/punching-vm';

const PAGE = 4096;
const GiB = 1 << 30;
const GPA = 4 * GiB;
const SIZE = 3 * GiB;

/** A PunchingVm that logs memslots, backings and attribute calls, and fails the nth attribute call on request. */
class LoggingVm extends PunchingVm {
  readonly log: string[] = [];
  readonly backings: Array<{ closed: boolean }> = [];
  failAttributeCall = 0;
  private attributeCalls = 0;

  constructor() {
    super(GPA, SIZE / PAGE);
  }

  override createGuestMemfd() {
    const backing = super.createGuestMemfd();
    this.backings.push(backing);
    this.log.push('guest_memfd');
    return backing;
  }

  override setUserMemoryRegion(): void {
    this.log.push('memslot');
  }

  override deleteMemorySlot(): void {
    this.log.push('delete memslot');
  }

  override setMemoryAttributes(gpa: number, size: number, to: 'shared' | 'private'): void {
    if (++this.attributeCalls === this.failAttributeCall) {
      throw Object.assign(new Error('ENOMEM: cannot allocate memory, ioctl(KVM_SET_MEMORY_ATTRIBUTES)'), { code: 'ENOMEM', errno: -12, syscall: 'ioctl(KVM_SET_MEMORY_ATTRIBUTES)' });
    }
    super.setMemoryAttributes(gpa, size, to);
    this.log.push(`${to} ${(gpa - GPA) / GiB}+${size / GiB} GiB`);
  }

  /** KVM's attributes, as runs of one state: "private 3 GiB". */
  states(): string[] {
    const runs: string[] = [];
    let start = 0;
    for (let i = 1; i <= this.attributes.length; i++) {
      if (i === this.attributes.length || this.attributes[i] !== this.attributes[start]) {
        runs.push(`${this.attributes[start]} ${((i - start) * PAGE) / GiB} GiB`);
        start = i;
      }
    }
    return runs;
  }
}

function setUp(): { vm: LoggingVm; memory: GuestMemory } {
  const vm = new LoggingVm();
  return { vm, memory: new GuestMemory(vm as unknown as Vm) };
}

/** Nothing of a block that was not made is left: KVM shared, memslot deleted, backing closed, slot 0 free. */
function assertNothingMade(vm: LoggingVm, memory: GuestMemory): void {
  assert.deepEqual(vm.states(), ['shared 3 GiB']);
  assert.ok(vm.backings.every((b) => b.closed), 'every guest_memfd closed');
  assert.equal(vm.log.filter((l) => l === 'memslot').length, vm.log.filter((l) => l === 'delete memslot').length);
  assert.deepEqual(memory.blocks, []);
  assert.equal(memory.nextFreeSlot, 0);
}

const aborted = (reason: unknown) => ({ name: 'AbortError', code: 'ABORT_ERR', cause: reason, message: /nothing was kept|before it started/ });

describe('adding a big block: progress and abort', () => {
  it('marks the block private one GiB at a time, reporting each', () => {
    assert.equal(MARK_CHUNK_BYTES, GiB);
    const { vm, memory } = setUp();
    const progress: Array<[number, number]> = [];
    const block = memory.addBlock({ gpa: GPA, size: SIZE, name: 'big', onProgress: ({ done, total }) => progress.push([done / GiB, total / GiB]) });
    assert.deepEqual(progress, [[1, 3], [2, 3], [3, 3]]);
    assert.deepEqual(vm.log, ['guest_memfd', 'memslot', 'private 0+1 GiB', 'private 1+1 GiB', 'private 2+1 GiB']);
    assert.deepEqual(vm.states(), ['private 3 GiB']);
    assert.equal(block.privatePages, SIZE / PAGE);
    memory.close();
  });

  it('an abort heard between chunks undoes what was marked and leaves nothing made', () => {
    const { vm, memory } = setUp();
    const controller = new AbortController();
    const reason = new Error('operator pressed ^C');
    assert.throws(() => memory.addBlock({ gpa: GPA, size: SIZE, onProgress: ({ done }) => done === GiB && controller.abort(reason), signal: controller.signal }), aborted(reason));
    assert.deepEqual(vm.log.slice(2), ['private 0+1 GiB', 'shared 0+1 GiB', 'delete memslot']);
    assertNothingMade(vm, memory);
    // The range and the slot are free for the next try.
    memory.addBlock({ gpa: GPA, size: SIZE });
    assert.deepEqual(memory.blocks.map((b) => b.slot), [0]);
    memory.close();
  });

  it('a signal aborted before the call refuses before any syscall; a bad signal or callback is a TypeError', () => {
    const { vm, memory } = setUp();
    const controller = new AbortController();
    controller.abort('no');
    assert.throws(() => memory.addBlock({ gpa: GPA, size: SIZE, signal: controller.signal }), aborted('no'));
    assert.throws(() => memory.addBlock({ gpa: GPA, size: SIZE, signal: {} as AbortSignal }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => memory.addBlock({ gpa: GPA, size: SIZE, onProgress: 5 as unknown as () => void }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
    assert.deepEqual(vm.log, []);
    assert.equal(memory.nextFreeSlot, 0);
  });

  it('a chunk KVM refuses, or an onProgress that throws, is undone as an abort is', () => {
    const { vm, memory } = setUp();
    vm.failAttributeCall = 3;
    assert.throws(() => memory.addBlock({ gpa: GPA, size: SIZE }), { code: 'ENOMEM' });
    assert.deepEqual(vm.log.slice(2), ['private 0+1 GiB', 'private 1+1 GiB', 'shared 0+2 GiB', 'delete memslot']);
    assertNothingMade(vm, memory);
    vm.failAttributeCall = 0;
    assert.throws(() => memory.addBlock({ gpa: GPA, size: SIZE, onProgress: () => { throw new Error('progress bar broke'); } }), /progress bar broke/);
    assertNothingMade(vm, memory);
  });

  it('an undo KVM refuses is ERR_GUESTMEM_ROLLBACK_FAILED; the memslot is gone all the same, so its number is free', () => {
    const { vm, memory } = setUp();
    vm.failAttributeCall = 2;
    const controller = new AbortController();
    assert.throws(() => memory.addBlock({ gpa: GPA, size: SIZE, signal: controller.signal, onProgress: () => controller.abort() }), (error: unknown) => {
      assert.ok(error instanceof Error && 'code' in error && error.code === 'ERR_GUESTMEM_ROLLBACK_FAILED');
      assert.match(error.message, /aborted after marking 1073741824 of 3221225472 bytes .*back to shared also failed/);
      return true;
    });
    assert.deepEqual(vm.log.slice(-1), ['delete memslot']);
    assert.equal(memory.nextFreeSlot, 0);
  });

  describe('addBlockAsync', () => {
    it('lets the event loop run between chunks, so a callback from it can abort; nothing is left', async () => {
      const { vm, memory } = setUp();
      const controller = new AbortController();
      const progress: number[] = [];
      const onProgress = ({ done }: { done: number }) => {
        progress.push(done / GiB);
        // Not an abort from inside the callback: one the event loop runs before the next chunk.
        if (done === GiB) setImmediate(() => controller.abort('timer'));
      };
      const adding = memory.addBlockAsync({ gpa: GPA, size: SIZE, signal: controller.signal, onProgress });
      // Meanwhile the range and the slot are taken: another block cannot have them.
      assert.throws(() => memory.addBlock({ gpa: GPA + GiB, size: GiB }), { code: 'ERR_OUT_OF_RANGE', message: /overlaps a block being added/ });
      assert.equal(memory.nextFreeSlot, 1);
      await assert.rejects(adding, aborted('timer'));
      assert.deepEqual(progress, [1]);
      assertNothingMade(vm, memory);
    });

    it('resolves with the block, private everywhere, after reporting each chunk', async () => {
      const { vm, memory } = setUp();
      const progress: number[] = [];
      const block = await memory.addBlockAsync({ gpa: GPA, size: SIZE, onProgress: ({ done }) => progress.push(done / GiB) });
      assert.deepEqual(progress, [1, 2, 3]);
      assert.deepEqual(vm.states(), ['private 3 GiB']);
      assert.deepEqual(memory.blocks, [block]);
      assert.equal(memory.nextFreeSlot, 1);
      await memory.shutdown();
    });
  });
});
