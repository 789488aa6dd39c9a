// Listeners are known by their registration, never by their name (issue 23 item 4): two VFIO
// listeners with the default name on one block each keep what they hold and are reported
// apart, and the doubt a failed undo leaves goes to the listener that failed, not to the
// first one found by name.

import assert from 'node:assert/strict';
import type { GranuleRange } from '../../lib/common/byte-range';
import type { Vm } from '../../lib/kvm/kvm';
import { RamBlock } from '../../lib/memory/ram-block';
import type { RamDiscardListener } from '../../lib/tracker/ram-discard-listener';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import { PAGE, StandinDmaMapper, StandinKernelState, StandinVm } from '../support/shared-standin';

const PAGES = 32;
const GPA = 1 << 24;

function block(): { block: RamBlock; kernel: StandinKernelState } {
  const kernel = StandinKernelState.create(GPA, PAGES);
  return { kernel, block: new RamBlock(new StandinVm(kernel) as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'keys' }) };
}

/** A listener that cannot say what it holds, logging what it is told; its discard fails while `failDiscard`. */
function blind(log: string[], tag: string, fail: { populate?: boolean; discard?: boolean } = {}): RamDiscardListener {
  return {
    name: 'dup',
    synchronous: true,
    doubleDiscardSupported: true,
    populate: (r: GranuleRange) => {
      if (fail.populate) throw new Error(`${tag} populate refused`);
      log.push(`${tag} populate ${r.first}+${r.count}`);
    },
    discard: (r: GranuleRange) => {
      if (fail.discard) throw new Error(`${tag} discard refused`);
      log.push(`${tag} discard ${r.first}+${r.count}`);
    },
  };
}

describe('listeners keyed by their registration', () => {
  it('two VFIO listeners with the default name are reported apart ("vfio-type1#2")', async () => {
    const { block: b, kernel } = block();
    const first = new VfioDmaListener(new StandinDmaMapper(kernel), { sharedAddress: b.shared.address, gpa: BigInt(GPA) });
    const second = new VfioDmaListener(new StandinDmaMapper(StandinKernelState.create(GPA, PAGES)), { sharedAddress: b.shared.address, gpa: BigInt(GPA) });
    await b.register(first);
    await b.register(second);
    b.convertSync(GPA, 4 * PAGE, 'shared');
    assert.deepEqual([first.heldRuns(0, PAGES), second.heldRuns(0, PAGES)], [[[0, 4]], [[0, 4]]]);
    // The second maps a page the tracker calls private behind the block's back.
    second.populate({ first: 8, count: 1, end: 9, granularity: PAGE } as GranuleRange);
    assert.deepEqual(b.disagreements(), [{ first: 8, count: 1, kvm: 'private', tracker: 'private', listeners: { 'vfio-type1#2': 'mapped' } }]);
    await b.repair();
    assert.deepEqual(second.heldRuns(0, PAGES), [[0, 4]]);
    await b.shutdown();
  });

  it('a failed undo puts in doubt the listener that failed, though an older one shares its name; repair() tells that one alone', async () => {
    const { block: b } = block();
    const log: string[] = [];
    const failing = { populate: false, discard: false };
    const oldest = blind(log, 'oldest', { populate: true });
    const middle = blind(log, 'middle', failing);
    const newest = blind(log, 'newest');
    // Newest first: newest, middle populate; oldest refuses; the undo of middle fails.
    await b.register(oldest, { offset: 16 * PAGE, size: 16 * PAGE });
    await b.register(middle);
    await b.register(newest);
    failing.discard = true;
    assert.throws(() => b.convertSync(GPA + 14 * PAGE, 4 * PAGE, 'shared'), { code: 'ERR_GUESTMEM_ROLLBACK_FAILED' });
    failing.discard = false;
    assert.deepEqual(b.disagreements().map((d) => d.listeners), [{ 'dup#2': 'unknown' }]);
    log.length = 0;
    await b.repair();
    assert.deepEqual(log, ['middle discard 14+4'], 'the doubt was middle\'s: it alone is told to discard (nothing there is shared)');
    assert.deepEqual(b.disagreements(), []);
    b.close();
  });
});
