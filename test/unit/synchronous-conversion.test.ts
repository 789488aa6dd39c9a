// The synchronous conversion path: while every listener declares `synchronous: true` and
// nothing is in flight, RamBlockAttributes.stateChangeSync and RamBlock.convertSync do the
// whole change before they return, with the same results, order, rollback and diagnostics
// as the asynchronous calls; otherwise they refuse with a coded error and change nothing.
// The asynchronous calls keep their order when synchronous and asynchronous listeners mix.

import assert from 'node:assert/strict';
import diagnosticsChannel from 'node:diagnostics_channel';
import type { GranuleRange } from '../../lib/common/byte-range';
import type { Vm } from '../../lib/kvm/kvm';
import { RamBlock } from '../../lib/memory/ram-block';
import { RamBlockAttributes } from '../../lib/tracker/ram-block-attributes';
import type { RamDiscardListener } from '../../lib/tracker/ram-discard-listener';
import { RecordingListener } from '../../lib/tracker/recording-listener';
import { STATE_CHANGE_CHANNEL, type StateChangeMessage } from '../../lib/tracker/state-change-channel';

const PAGE = 4096;
const PAGES = 64;
const GPA = 1 << 24;

/** A VM that keeps one attribute per page and logs every call. */
class FakeVm {
  readonly closed = false;
  readonly supportsPreFault = false;
  readonly log: string[] = [];
  createGuestMemfd() {
    return { closed: false, punchHole: (offset: number, size: number) => void this.log.push(`punch ${offset / PAGE}+${size / PAGE}`), close() {} };
  }
  setUserMemoryRegion(): void {}
  deleteMemorySlot(): void {}
  setMemoryAttributes(gpa: number, size: number, to: string): void {
    this.log.push(`attributes ${(gpa - GPA) / PAGE}+${size / PAGE} ${to}`);
  }
}

/** A listener that answers with promises, logging when each settles. */
function asyncListener(log: string[], name = 'async'): RamDiscardListener {
  return {
    name,
    populate: (r: GranuleRange) => Promise.resolve().then(() => void log.push(`${name} populate ${r.first}+${r.count}`)),
    discard: (r: GranuleRange) => Promise.resolve().then(() => void log.push(`${name} discard ${r.first}+${r.count}`)),
  };
}

function block(): { vm: FakeVm; block: RamBlock } {
  const vm = new FakeVm();
  return { vm, block: new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'test' }) };
}

describe('synchronous conversions', () => {
  it('stateChangeSync gives what stateChange gives, before it returns, and the channel still fires', async () => {
    const sync = new RamBlockAttributes(PAGES * PAGE, { name: 'sync' });
    const async = new RamBlockAttributes(PAGES * PAGE, { name: 'async' });
    const a = new RecordingListener('a', PAGES, { batch: true });
    const b = new RecordingListener('b', PAGES);
    await sync.register(a, { offset: 0, size: PAGES * PAGE });
    await sync.register(b, { offset: 8 * PAGE, size: 16 * PAGE });
    await async.register(new RecordingListener('a', PAGES, { batch: true }), { offset: 0, size: PAGES * PAGE });
    await async.register(new RecordingListener('b', PAGES), { offset: 8 * PAGE, size: 16 * PAGE });
    const seen: StateChangeMessage[] = [];
    const onMessage = (message: unknown) => void seen.push(message as StateChangeMessage);
    diagnosticsChannel.subscribe(STATE_CHANGE_CHANNEL, onMessage);
    try {
      for (const [offset, pages, to] of [[0, 4, 'shared'], [8, 12, 'shared'], [2, 20, 'private'], [0, 32, 'shared'], [0, 32, 'shared']] as const) {
        assert.equal(sync.canChangeSync, true);
        const result = sync.stateChangeSync(offset * PAGE, pages * PAGE, to);
        assert.deepEqual(result, await async.stateChange(offset * PAGE, pages * PAGE, to));
        assert.deepEqual(sync.runs('shared'), async.runs('shared'));
      }
    } finally {
      diagnosticsChannel.unsubscribe(STATE_CHANGE_CHANNEL, onMessage);
    }
    assert.deepEqual(seen.filter((m) => m.block === 'sync'), seen.filter((m) => m.block === 'async').map((m) => ({ ...m, block: 'sync' })));
    assert.equal(seen.length, 10);
    assert.deepEqual(a.mappedRuns(), sync.runs('shared'));
    assert.deepEqual(b.mappedRuns(), sync.runs('shared', { offset: 8 * PAGE, size: 16 * PAGE }));
    assert.equal(a.errors + b.errors, 0);
  });

  it('refuses, changing nothing, with an asynchronous listener or an operation in flight', async () => {
    const attributes = new RamBlockAttributes(PAGES * PAGE);
    const registering = attributes.register(new RecordingListener('r', PAGES), { offset: 0, size: PAGES * PAGE });
    assert.throws(() => attributes.stateChangeSync(0, PAGE, 'shared'), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_BUSY');
    await registering;
    const log: string[] = [];
    await attributes.register(asyncListener(log), { offset: 0, size: PAGES * PAGE });
    assert.equal(attributes.canChangeSync, false);
    assert.throws(() => attributes.stateChangeSync(0, PAGE, 'shared'), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_ASYNC_LISTENER' && /"async"/.test(e.message));
    assert.equal(attributes.sharedGranules, 0);
    const { vm, block: b } = block();
    await b.register(asyncListener(vm.log));
    assert.equal(b.canConvertSync, false);
    assert.throws(() => b.convertSync(GPA, PAGE, 'shared'), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_ASYNC_LISTENER');
    assert.equal(b.sharedPages, 0);
  });

  it('convertSync runs the steps in order before it returns; convert with an asynchronous conversion in flight makes it wait', async () => {
    const { vm, block: b } = block();
    const listener = new RecordingListener('dma', PAGES, { batch: true, doubleDiscardSupported: true });
    await b.register(listener);
    vm.log.length = 0;
    const result = b.convertSync(GPA, 8 * PAGE, 'shared');
    assert.deepEqual(result, { from: 'private', to: 'shared', changed: 8, changedRuns: 1 });
    assert.deepEqual(vm.log, ['attributes 0+8 shared', 'punch 0+8']);
    assert.deepEqual(listener.mappedRuns(), [[0, 8]]);
    b.convertSync(GPA + 2 * PAGE, PAGE, 'private');
    assert.deepEqual(listener.mappedRuns(), [[0, 2], [3, 5]]);
    // convert settles at once on the synchronous path; a conversion asked for while a
    // repair is in flight waits for it, and convertSync refuses meanwhile.
    const repairing = b.repair();
    assert.equal(b.canConvertSync, false);
    assert.throws(() => b.convertSync(GPA, PAGE, 'private'), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_BUSY');
    const later = b.convert(GPA, PAGE, 'private');
    await repairing;
    assert.deepEqual(await later, { from: 'shared', to: 'private', changed: 1, changedRuns: 1 });
    assert.equal(b.canConvertSync, true);
    b.close();
    assert.throws(() => b.convertSync(GPA, PAGE, 'shared'), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_CLOSED');
  });

  it('rolls back a listener that declared itself synchronous and returned a promise', async () => {
    const { block: b } = block();
    const honest = new RecordingListener('honest', PAGES);
    await b.register(honest);
    const liar: RamDiscardListener = { name: 'liar', synchronous: true, populate: () => Promise.resolve(), discard: () => undefined };
    await b.register(liar);
    assert.throws(() => b.convertSync(GPA, 4 * PAGE, 'shared'), (e: Error & { code?: string; cause?: { code?: string; cause?: { code?: string } } }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_CONVERSION_FAILED');
      assert.equal(e.cause?.code, 'ERR_GUESTMEM_LISTENER_FAILED');
      assert.equal(e.cause?.cause?.code, 'ERR_GUESTMEM_ASYNC_LISTENER');
      return true;
    });
    assert.equal(b.sharedPages, 0);
    assert.deepEqual(honest.mappedRuns(), []);
    assert.deepEqual(b.disagreements(), []);
  });

  it('keeps call order when synchronous and asynchronous listeners mix', async () => {
    const log: string[] = [];
    const attributes = new RamBlockAttributes(PAGES * PAGE);
    const recording = new RecordingListener('sync', PAGES);
    await attributes.register(recording, { offset: 0, size: PAGES * PAGE });
    const first = attributes.stateChange(0, 4 * PAGE, 'shared'); // synchronous: done already
    assert.equal(attributes.sharedGranules, 4);
    const registering = attributes.register(asyncListener(log), { offset: 0, size: PAGES * PAGE });
    const second = attributes.stateChange(0, 8 * PAGE, 'shared'); // queued behind the register
    const third = attributes.stateChange(0, 2 * PAGE, 'private');
    assert.equal(attributes.sharedGranules, 4, 'nothing queued ran before its turn');
    await Promise.all([first, registering, second, third]);
    assert.deepEqual(log, ['async populate 0+4', 'async populate 4+4', 'async discard 0+2']);
    assert.deepEqual(recording.mappedRuns(), [[2, 6]]);
  });

  // Code a synchronous conversion calls out to (here a diagnostics subscriber; a delegated
  // VM's VMM and the pre-fault's vCPU provider likewise) must not run a conversion or a close
  // of the same block in the middle of it: a nested conversion to shared between the unmap
  // and KVM's private attribute would leave the device mapping a page KVM calls private.
  it('a conversion or close asked for from inside a synchronous conversion waits until it has finished', async () => {
    const { vm, block: b } = block();
    const dma = new RecordingListener('dma', PAGES);
    await b.register(dma);
    await b.convert(GPA, PAGE, 'shared');
    vm.log.length = 0;
    // Set from inside the subscriber (a holder, so the type checker does not narrow it away).
    const inner: { nested?: Promise<unknown>; sawSync?: boolean } = {};
    const onMessage = (message: unknown) => {
      if ((message as StateChangeMessage).to !== 'private' || inner.nested) return;
      inner.sawSync = b.canConvertSync;
      inner.nested = b.convert(GPA, PAGE, 'shared');
    };
    diagnosticsChannel.subscribe(STATE_CHANGE_CHANNEL, onMessage);
    try {
      assert.deepEqual(b.convertSync(GPA, PAGE, 'private'), { from: 'shared', to: 'private', changed: 1, changedRuns: 1 });
      // The outer conversion ran whole (unmap, KVM private, discard) before the nested one began.
      assert.deepEqual(vm.log, ['attributes 0+1 private']);
      assert.equal(inner.sawSync, false);
      await inner.nested;
    } finally {
      diagnosticsChannel.unsubscribe(STATE_CHANGE_CHANNEL, onMessage);
    }
    assert.deepEqual(vm.log, ['attributes 0+1 private', 'attributes 0+1 shared', 'punch 0+1']);
    assert.deepEqual(dma.mappedRuns(), [[0, 1]]);
    assert.deepEqual(b.disagreements(), []);

    const closeFrom = (message: unknown) => {
      if ((message as StateChangeMessage).to === 'private') b.close();
    };
    vm.deleteMemorySlot = () => void vm.log.push('delete memslot');
    vm.log.length = 0;
    diagnosticsChannel.subscribe(STATE_CHANGE_CHANNEL, closeFrom);
    try {
      await b.convert(GPA, PAGE, 'private');
    } finally {
      diagnosticsChannel.unsubscribe(STATE_CHANGE_CHANNEL, closeFrom);
    }
    await new Promise((resolve) => setImmediate(resolve));
    // KVM's attribute was set before the memslot went: close waited for the conversion.
    assert.deepEqual(vm.log, ['attributes 0+1 private', 'delete memslot']);
  });

  it('a populate that breaks its promise to be synchronous and lands after the rollback is discarded again', async () => {
    const { block: b } = block();
    const held = new Set<number>();
    const late: { landed?: Promise<void> } = {};
    const liar: RamDiscardListener = {
      name: 'liar',
      synchronous: true,
      populate: (r: GranuleRange) => {
        late.landed = new Promise<void>((resolve) => setTimeout(resolve, 5)).then(() => {
          for (let g = r.first; g < r.first + r.count; g++) held.add(g);
        });
        return late.landed;
      },
      discard: (r: GranuleRange) => {
        for (let g = r.first; g < r.first + r.count; g++) held.delete(g);
      },
    };
    await b.register(liar);
    await assert.rejects(b.convert(GPA, 2 * PAGE, 'shared'), { code: 'ERR_GUESTMEM_CONVERSION_FAILED' });
    await late.landed;
    await new Promise((resolve) => setImmediate(resolve));
    // The late populate mapped two granules the tracker and KVM call private: retracted.
    assert.deepEqual([...held], []);
    assert.equal(b.sharedPages, 0);
  });
});
