// `using` must not pick the unsafe teardown (issue 26): a synchronous dispose of memory whose
// listeners are still registered would close the block under them, leaving their DMA
// mappings pinning its pages; it refuses instead, closing nothing, and `await using`
// (shutdown: listeners first) is the teardown that works. Without listeners `using` closes.

import assert from 'node:assert/strict';
import type { Vm } from '../../lib/kvm/kvm';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { RecordingListener } from '../../lib/tracker/recording-listener';
import { PunchingVm } from '../support/punching-vm';

const PAGE = 4096;
const PAGES = 16;
const GPA = 1 << 24;

function memoryWithBlocks(count: number): GuestMemory {
  const memory = new GuestMemory(new PunchingVm(GPA, PAGES * count) as unknown as Vm);
  for (let i = 0; i < count; i++) memory.addBlock({ gpa: GPA + i * PAGES * PAGE, size: PAGES * PAGE, name: `ram${i}` });
  return memory;
}

const refusal = (listeners: string[]) => ({ name: 'GuestmemError', code: 'ERR_GUESTMEM_LISTENERS_REGISTERED', listeners, message: /await using/ });

describe('using: the synchronous dispose never leaves listeners mapped', () => {
  it('a block with a listener registered refuses, closing nothing; shutdown then unregisters and closes', async () => {
    const memory = memoryWithBlocks(1);
    const block = memory.blocks[0]!;
    const listener = new RecordingListener('vfio', PAGES);
    await block.attributes.register(listener, { offset: 0, size: PAGES * PAGE });
    assert.throws(() => block[Symbol.dispose](), refusal(['vfio']));
    // Nothing was closed: the block still converts, and the listener still hears of it.
    await block.convert(GPA, PAGE, 'shared');
    assert.deepEqual(listener.mappedRuns(), [[0, 1]]);
    assert.equal(block.guestMemfd.closed, false);
    await block[Symbol.asyncDispose]();
    assert.deepEqual(block.attributes.listeners, []);
    assert.deepEqual(listener.mappedRuns(), []);
    // Once shut down, `using` has nothing left to do.
    block[Symbol.dispose]();
    memory.close();
  });

  it('GuestMemory refuses before closing any block when one of them has listeners', async () => {
    const memory = memoryWithBlocks(2);
    const [first, second] = memory.blocks as [typeof memory.blocks[0], typeof memory.blocks[0]];
    await second.attributes.register(new RecordingListener('device', PAGES), { offset: 0, size: PAGES * PAGE });
    assert.throws(() => memory[Symbol.dispose](), refusal(['device']));
    assert.equal(memory.blocks.length, 2);
    assert.equal(first.guestMemfd.closed, false);
    await first.convert(GPA, PAGE, 'shared');
    await memory[Symbol.asyncDispose]();
    assert.equal(memory.blocks.length, 0);
    assert.deepEqual(second.attributes.listeners, []);
  });

  it('without listeners `using` closes at the end of its scope', () => {
    let seen: GuestMemory;
    {
      using memory = memoryWithBlocks(2);
      seen = memory;
      assert.equal(memory.blocks.length, 2);
    }
    assert.equal(seen.blocks.length, 0);
  });

  it('close() stays the explicit way to leave listeners as they are', async () => {
    const memory = memoryWithBlocks(1);
    const block = memory.blocks[0]!;
    await block.attributes.register(new RecordingListener('vfio', PAGES), { offset: 0, size: PAGES * PAGE });
    memory.close();
    assert.equal(memory.blocks.length, 0);
    block[Symbol.dispose]();
  });
});
