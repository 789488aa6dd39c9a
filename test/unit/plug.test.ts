// The plug source's edges that the property test does not reach: its geometry refused at
// construction and an unplug whose undo fails too. Plug state across threads:
// cross-thread-conversion.test.ts.

import assert from 'node:assert/strict';
import type { Vm } from '../../lib/kvm/kvm';
import { PunchingVm } from '../support/punching-vm';
import { RamBlock } from '../../lib/memory/ram-block';
import { RecordingListener } from '../../lib/tracker/recording-listener';

const PAGE = 4096;
const PAGES = 16;
const GPA = 1 << 24;


function makeBlock(vm = new PunchingVm(GPA, PAGES), plugBlockSize = 4 * PAGE): RamBlock {
  return new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'b', plugBlockSize });
}

describe('RamBlock plug and unplug', () => {
  it('refuses a plug block size that is not a power-of-two multiple of the granule dividing the block', () => {
    for (const size of [PAGE / 2, 3 * PAGE, 32 * PAGE]) assert.throws(() => makeBlock(new PunchingVm(GPA, PAGES), size), RangeError, String(size));
  });

  it('names the plug block size when a range is not aligned to it, and changes nothing', async () => {
    const block = makeBlock();
    await assert.rejects(block.unplug(GPA + PAGE, 4 * PAGE), /offset 0x1000 is not aligned to the plug block size 0x4000/);
    await assert.rejects(block.unplug(GPA, 5 * PAGE), /size 0x5000 is not a multiple of the plug block size 0x4000/);
    await assert.rejects(block.unplug(GPA - 4 * PAGE, 4 * PAGE), /below block/);
    assert.deepEqual(block.plugRuns('unplugged'), []);
  });

  it('an unplug whose punch-hole fails, and whose re-plug a listener refuses, stays unplugged in agreement and says so', async () => {
    const vm = new PunchingVm(GPA, PAGES);
    const block = makeBlock(vm);
    const dma = new RecordingListener('dma', PAGES, { doubleDiscardSupported: true });
    await block.register(dma);
    await block.convert(GPA, 8 * PAGE, 'shared');
    vm.failPunch = true;
    // The re-plug's populate fails: the tracker rolls the re-plug back, the range stays unplugged.
    let populates = 0;
    dma.failWhen = (kind) => kind === 'populate' && ++populates === 1;
    const error = await block.unplug(GPA, 4 * PAGE).then(() => assert.fail('unplug succeeded'), (e: unknown) => e as { code: string; step: string; applied: unknown });
    vm.failPunch = false;
    dma.failWhen = null;
    assert.equal(error.code, 'ERR_GUESTMEM_CONVERSION_FAILED');
    assert.equal(error.step, 'discard');
    // The re-plug was refused and rolled back: the range stayed unplugged, in agreement.
    assert.deepEqual(error.applied, [[0, 4]]);
    assert.deepEqual(block.plugRuns('unplugged'), [[0, 4]]);
    assert.deepEqual(dma.mappedRuns(), [[4, 4]]);
    assert.deepEqual(block.disagreements(), []);
    await block.plug(GPA, 4 * PAGE);
    assert.deepEqual(dma.mappedRuns(), [[0, 8]]);
    assert.equal(dma.errors, 0);
  });

  // A listener that declares itself synchronous but answers a populate with a promise fails
  // the change, which is rolled back; what it started may land later, and is taken back
  // wherever listeners may not hold memory by then: private pages, and unplugged ones.
  for (const kind of ['convert', 'plug'] as const) {
    it(`takes back a late populate of a ${kind} that was rolled back`, async () => {
      const block = makeBlock();
      let late = false;
      const liar = { name: 'liar', synchronous: true as const, populate: () => (late ? Promise.resolve() : undefined), discard: () => undefined };
      const listener = new RecordingListener('late', PAGES, { inner: liar });
      await block.register(listener);
      if (kind === 'plug') {
        block.convertSync(GPA, 4 * PAGE, 'shared');
        await block.unplug(GPA, 4 * PAGE);
      }
      late = true;
      assert.throws(() => (kind === 'plug' ? block.plugSync(GPA, 4 * PAGE) : block.convertSync(GPA, 4 * PAGE, 'shared')), { code: 'ERR_GUESTMEM_CONVERSION_FAILED' });
      late = false;
      await new Promise((resolve) => setImmediate(resolve));
      assert.deepEqual(listener.mappedRuns(), block.attributes.populatedRuns());
      assert.deepEqual(listener.mappedRuns(), []);
    });
  }
});
