// Plug and unplug (virtio-mem's requests) on a real kernel, both DMA back ends: the device
// cannot reach an unplugged shared page by DMA and reaches it again once plugged, never a
// private one, whatever was plugged; a conversion of unplugged memory maps nothing; both
// backings give the unplugged memory back (allocated blocks drop); and the fault matrix of
// plug and unplug: the DMA unmap, each punch-hole and the DMA map made to fail (the addon's
// GUESTMEM_FAULTS), singly and with the undo's map failing too. After each case the block
// agrees with itself (disagreements() empty), the listener holds shared ∩ plugged, and the
// device's reach, sampled by DMA, says the same.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { faultCounts, injectFaults } from '../../lib/common/fault-injection';
import { native } from '../../lib/common/native';
import { FALLOC_FL_KEEP_SIZE } from '../../lib/kvm/kvm-constants';
import { requires } from '../support/requires';
import { setUp, sites, tearDown, type Fixture } from '../support/vfio-block';

const PAGE = 4096;
const MiB = 1 << 20;
/** virtio-mem's plug blocks are 2 MiB and up; 64 KiB keeps the block small. */
const PLUG = 64 * 1024;
const PLUG_PAGES = PLUG / PAGE;

/** The listener, the block and KVM's record agree, and the device reaches what the listener holds. */
async function assertAgreement(f: Fixture, label: string, samples: Array<[page: number, reach: boolean]>): Promise<void> {
  assert.deepEqual(f.block.disagreements(), [], label);
  assert.deepEqual(f.listener.heldRuns(0, f.block.attributes.granules), f.block.attributes.populatedRuns(), label);
  let marker = 0x50;
  for (const [page, reach] of samples) assert.equal(await f.probe.canRead(f.block, page * PAGE, marker++), reach, `${label}: device reach of page ${page}`);
}

describe('plug and unplug on a real kernel', function () {
  this.timeout(300_000);
  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device'));

  for (const backend of ['iommufd', 'type1'] as const) {
    describe(`with ${backend}`, () => {
      let f: Fixture | undefined;
      const { map, unmap } = sites(backend);
      before(requires(backend === 'type1' ? 'vfio-type1' : 'iommufd'));
      afterEach(async () => {
        await tearDown(f);
        f = undefined;
      });

      it('the device loses an unplugged shared page, reaches it again once plugged, and never reaches a private one', async () => {
        f = await setUp(backend, 16 * MiB, MiB, PLUG);
        const { block, listener } = f;
        // Pages 0-47 shared; 48-63 private.
        await block.convert(block.gpa, 3 * PLUG, 'shared');
        await assertAgreement(f, 'before', [[0, true], [20, true], [50, false]]);
        assert.deepEqual(await block.unplug(block.gpa, PLUG), { from: 'plugged', to: 'unplugged', changed: PLUG_PAGES, notified: PLUG_PAGES });
        assert.equal(listener.mappings, 2 * PLUG_PAGES);
        await assertAgreement(f, 'unplugged', [[0, false], [15, false], [20, true]]);
        // The guest converts unplugged memory: KVM and the tracker follow, no listener is told.
        await block.convert(block.gpa, PLUG, 'private');
        await block.convert(block.gpa, 4 * PAGE, 'shared');
        assert.equal(listener.mappings, 2 * PLUG_PAGES);
        await assertAgreement(f, 'converted while unplugged', [[1, false], [10, false]]);
        // Unplugging a private block changes nothing the device sees; plugging it back maps only what is shared.
        await block.unplug(block.gpa + 3 * PLUG, PLUG);
        assert.deepEqual(await block.plug(block.gpa, 4 * PLUG), { from: 'mixture', to: 'plugged', changed: 2 * PLUG_PAGES, notified: 4 });
        await assertAgreement(f, 'plugged', [[0, true], [3, true], [4, false], [50, false], [20, true]]);
        assert.equal(listener.mappings, 2 * PLUG_PAGES + 4);
      });

      it('gives back unplugged memory: the memfd\'s allocated blocks and the guest_memfd\'s pages drop', async () => {
        f = await setUp(backend, 16 * MiB, MiB, PLUG);
        const { block } = f;
        await block.convert(block.gpa, 2 * PLUG, 'shared');
        block.shared.view(0, 2 * PLUG).fill(0x5a);
        // The private side: allocate the guest_memfd's pages of the next twelve plug blocks
        // (guest_memfd allocates only with KEEP_SIZE: its size is fixed at creation). It
        // reports no st_blocks; its pages sit on the unevictable LRU, which meminfo counts,
        // give or take the pages a CPU's LRU batch (up to 31) and vmstat's per-CPU deltas
        // have not shown yet: 128 KiB of the 768 KiB is slack.
        const PRIVATE = 12 * PLUG;
        const SLACK = 32 * PAGE;
        const unevictable = () => Number(/^Unevictable:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'))![1]) * 1024;
        const idle = unevictable();
        native().fallocate(block.guestMemfd.fd, FALLOC_FL_KEEP_SIZE, block.guestMemfd.offset + BigInt(2 * PLUG), BigInt(PRIVATE));
        const sharedBefore = fs.fstatSync(block.shared.fd).blocks * 512;
        const privateBefore = unevictable();
        assert.ok(sharedBefore >= 2 * PLUG, `memfd holds the written pages (${sharedBefore} bytes)`);
        assert.ok(privateBefore - idle >= PRIVATE - SLACK, `guest_memfd holds the allocated pages (${privateBefore - idle} bytes)`);
        await block.unplug(block.gpa, 14 * PLUG);
        const sharedAfter = fs.fstatSync(block.shared.fd).blocks * 512;
        assert.equal(sharedBefore - sharedAfter, 2 * PLUG, 'the memfd gave back the unplugged shared pages');
        assert.ok(privateBefore - unevictable() >= PRIVATE - SLACK, `the guest_memfd gave back the unplugged private pages (${privateBefore - unevictable()} bytes)`);
        // KVM's attributes stay as the guest set them: plugged back, the same pages are shared.
        await block.plug(block.gpa, 14 * PLUG);
        assert.deepEqual(block.kvmRuns('shared'), [[0, 2 * PLUG_PAGES]]);
        assert.equal(f.listener.mappings, 2 * PLUG_PAGES);
      });

      const cases: Array<{ name: string; op: 'plug' | 'unplug'; rules: string; stays: 'plugged' | 'unplugged' }> = [
        { name: 'the DMA unmap of an unplug', op: 'unplug', rules: `${unmap}:1:EIO`, stays: 'plugged' },
        { name: 'the memfd punch-hole of an unplug', op: 'unplug', rules: 'fallocate:1:EIO', stays: 'plugged' },
        { name: 'the guest_memfd punch-hole of an unplug', op: 'unplug', rules: 'fallocate:2:EIO', stays: 'plugged' },
        { name: 'the DMA map of a plug', op: 'plug', rules: `${map}:1:ENOMEM`, stays: 'unplugged' },
        // The undo's re-plug is refused too: the range stays unplugged, in agreement, and the error says so.
        { name: 'a punch-hole of an unplug and the map of its undo', op: 'unplug', rules: `fallocate:1:EIO,${map}:1:ENOMEM`, stays: 'unplugged' },
      ];
      for (const c of cases) {
        it(`rolls back when ${c.name} fails`, async () => {
          f = await setUp(backend, 16 * MiB, MiB, PLUG);
          const { block } = f;
          await block.convert(block.gpa, 2 * PLUG, 'shared');
          if (c.op === 'plug') await block.unplug(block.gpa, PLUG);
          injectFaults(c.rules);
          const call = c.op === 'plug' ? block.plug(block.gpa, PLUG) : block.unplug(block.gpa, PLUG);
          await assert.rejects(call, (e: Error & { code?: string; applied?: unknown }) => {
            assert.equal(e.code, 'ERR_GUESTMEM_CONVERSION_FAILED', e.message);
            assert.deepEqual(e.applied, c.op === 'unplug' && c.stays === 'unplugged' ? [[0, PLUG_PAGES]] : []);
            return true;
          });
          assert.ok(faultCounts().fired > 0, 'the fault fired');
          injectFaults('');
          assert.deepEqual(block.plugRuns('unplugged'), c.stays === 'unplugged' ? [[0, PLUG_PAGES]] : []);
          const reach = c.stays === 'plugged';
          await assertAgreement(f, c.name, [[0, reach], [PLUG_PAGES - 1, reach], [PLUG_PAGES, true], [3 * PLUG_PAGES, false]]);
          // And the block goes on: the other way round succeeds.
          if (c.stays === 'plugged') await block.unplug(block.gpa, PLUG);
          else await block.plug(block.gpa, PLUG);
          await assertAgreement(f, `${c.name}, then the other way`, [[0, !reach]]);
        });
      }
    });
  }
});
