// The whole conversion path on a real kernel: a SW-protected VM with two RAM blocks, each
// a guest_memfd memslot with a VFIO DMA listener on the edu device. After every step the
// tracker, the listeners' mappings and the model agree, and the device reaches exactly
// the shared pages (sampled with real DMA). KVM 6.12 has no way to read memory attributes
// back, so KVM's side holds by construction: every attribute call is in the sequence.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { AssignedDevice } from '../../lib/vfio/assigned-device';
import type { DmaBackend } from '../../lib/vfio/dma-mapper';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { Kvm, type Vm } from '../../lib/kvm/kvm';
import { nativeCalls } from '../../lib/common/native';
import type { RamBlock } from '../../lib/memory/ram-block';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import type { Run } from '../../lib/tracker/page-bitmap';
import { requires } from '../support/requires';
import { findEdu } from '../support/edu';
import { DmaProbe } from '../../lib/vmm/dma-probe';
import { prng } from '../support/prng';

const PAGE = 4096;
const MiB = 1 << 20;
const DMA_ENTRY_LIMIT = '/sys/module/vfio_iommu_type1/parameters/dma_entry_limit';

interface Fixture {
  kvm: Kvm;
  vm: Vm;
  memory: GuestMemory;
  assigned: AssignedDevice;
  listeners: Map<RamBlock, VfioDmaListener>;
  probe: DmaProbe;
}

async function setUp(backend: DmaBackend, blocks: Array<{ gpa: number; size: number }>): Promise<Fixture> {
  const kvm = Kvm.open();
  const vm = kvm.createVm('sw-protected');
  const memory = new GuestMemory(vm);
  const assigned = AssignedDevice.open(findEdu()!, { backend });
  const listeners = new Map<RamBlock, VfioDmaListener>();
  for (const spec of blocks) {
    const block = memory.addBlock(spec);
    const listener = new VfioDmaListener(assigned.dma, { sharedAddress: block.shared.address, gpa: BigInt(block.gpa) });
    await block.register(listener);
    listeners.set(block, listener);
  }
  return { kvm, vm, memory, assigned, listeners, probe: new DmaProbe(assigned) };
}

async function tearDown(f: Fixture | undefined): Promise<void> {
  if (!f) return;
  await f.memory.shutdown();
  f.probe.close();
  f.assigned.close();
  f.kvm.close();
}

function modelRuns(bits: boolean[]): Run[] {
  const runs: Run[] = [];
  bits.forEach((shared, i) => {
    if (!shared) return;
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === i) last[1]++;
    else runs.push([i, 1]);
  });
  return runs;
}

/** Snapshot of everything a failed call must leave as it was. */
function state(f: Fixture): string {
  return JSON.stringify([...f.listeners].map(([block, listener]) => [block.attributes.runs('shared'), listener.mappings]));
}

describe('conversions end to end: KVM + tracker + VFIO', function () {
  this.timeout(300_000);
  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device'));
  // A conversion's crossings into C++ are counted here (off by default).
  before(() => {
    nativeCalls.enabled = true;
  });
  after(() => {
    nativeCalls.enabled = false;
  });

  for (const backend of ['iommufd', 'type1'] as const) {
    describe(`with ${backend}`, () => {
      let f: Fixture | undefined;
      before(requires(backend === 'type1' ? 'vfio-type1' : 'iommufd'));
      afterEach(async () => {
        await tearDown(f);
        f = undefined;
      });

      it('keeps KVM, tracker, mappings and device reach in step over a random sequence', async () => {
        f = await setUp(backend, [{ gpa: 16 * MiB, size: 2 * MiB }, { gpa: 32 * MiB, size: MiB }]);
        const blocks = [...f.listeners.keys()];
        const models = new Map(blocks.map((b) => [b, new Array<boolean>(b.size / PAGE).fill(false)]));
        const random = prng(Number(process.env.GUESTMEM_SEED ?? 0x5eed));
        let rejected = 0;

        for (let step = 0; step < 24; step++) {
          const block = blocks[random(blocks.length)]!;
          const pages = block.size / PAGE;
          const kind = random(10);
          const to = random(2) === 0 ? 'shared' : 'private';
          const before = state(f);
          if (kind === 0) {
            // Invalid: unaligned, spanning two blocks, or in no block. Nothing may change.
            const bad = [
              () => f!.memory.convert(block.gpa + 1, PAGE, to),
              () => f!.memory.convert(16 * MiB + 2 * MiB - PAGE, 2 * PAGE, to),
              () => f!.memory.convert(100 * MiB, PAGE, to),
            ][random(3)]!;
            await assert.rejects(async () => bad());
            rejected++;
            assert.equal(state(f), before);
          } else {
            const first = kind === 1 ? 0 : random(pages);
            const count = kind === 1 ? pages : 1 + random(Math.min(64, pages - first));
            await f.memory.convert(block.gpa + first * PAGE, count * PAGE, to);
            models.get(block)!.fill(to === 'shared', first, first + count);
          }
          for (const b of blocks) {
            const model = models.get(b)!;
            assert.deepEqual(b.attributes.runs('shared'), modelRuns(model), `${b.name} after step ${step}`);
            assert.equal(f.listeners.get(b)!.mappings, model.filter(Boolean).length, `mappings of ${b.name} after step ${step}`);
          }
          // Sample the device's reach: one shared page and one private page of the block.
          const model = models.get(block)!;
          const sharedPages = model.flatMap((s, i) => (s ? [i] : []));
          const privatePages = model.flatMap((s, i) => (s ? [] : [i]));
          if (sharedPages.length > 0) {
            const page = sharedPages[random(sharedPages.length)]!;
            assert.equal(await f.probe.canRead(block, page * PAGE, 0x40 + step), true, `device reaches shared page ${page} of ${block.name}`);
          }
          if (privatePages.length > 0) {
            const page = privatePages[random(privatePages.length)]!;
            assert.equal(await f.probe.canRead(block, page * PAGE, 0x80 + step), false, `device cannot reach private page ${page} of ${block.name}`);
          }
        }
        assert.ok(rejected > 0, 'the sequence exercised invalid conversions');
      });

      it('converts a mixture of many runs with a bounded number of native calls', async () => {
        f = await setUp(backend, [{ gpa: 16 * MiB, size: MiB }]);
        const [block] = [...f.listeners.keys()];
        const listener = f.listeners.get(block!)!;
        for (let page = 0; page < 64; page += 2) await block!.convert(block!.gpa + page * PAGE, PAGE, 'shared');
        let calls = nativeCalls.count;
        const toShared = await block!.convert(block!.gpa, 64 * PAGE, 'shared');
        assert.deepEqual([toShared.from, toShared.changedRuns, toShared.changed], ['mixture', 32, 32]);
        assert.ok(nativeCalls.count - calls <= 4, `${nativeCalls.count - calls} native calls for 32 runs`);
        assert.equal(listener.mappings, 64);
        for (let page = 1; page < 64; page += 4) await block!.convert(block!.gpa + page * PAGE, PAGE, 'private');
        calls = nativeCalls.count;
        const toPrivate = await block!.convert(block!.gpa, 64 * PAGE, 'private');
        assert.deepEqual([toPrivate.from, toPrivate.changedRuns], ['mixture', 17]);
        assert.ok(nativeCalls.count - calls <= 3, `${nativeCalls.count - calls} native calls for 17 runs`);
        assert.equal(listener.mappings, 0);
        assert.equal(await f.probe.canRead(block!, 6 * PAGE, 0x21), false);
      });

      it('rolls everything back when a listener fails', async () => {
        f = await setUp(backend, [{ gpa: 16 * MiB, size: MiB }]);
        const [block] = [...f.listeners.keys()];
        await block!.convert(block!.gpa, 8 * PAGE, 'shared');
        let armed = false;
        await block!.register({ name: 'flaky', populate: () => { if (armed) throw new Error('injected'); }, discard: () => {} });
        armed = true;
        const before = state(f);
        await assert.rejects(block!.convert(block!.gpa, 64 * PAGE, 'shared'), (e: Error & { code?: string }) => {
          assert.equal(e.code, 'ERR_GUESTMEM_CONVERSION_FAILED');
          assert.match(e.message, /failed at step listeners: listener "flaky" failed to populate/);
          return true;
        });
        assert.equal(state(f), before);
        assert.equal(await f.probe.canRead(block!, 32 * PAGE, 0x33), false, 'the rolled-back page is not mapped');
        assert.equal(await f.probe.canRead(block!, 4 * PAGE, 0x34), true, 'the page shared before is still mapped');
        armed = false;
        await block!.convert(block!.gpa, 64 * PAGE, 'shared');
        assert.equal(f.listeners.get(block!)!.mappings, 64);
      });

      it('undoes the listeners and KVM when the discard step fails (a closed fd)', async () => {
        f = await setUp(backend, [{ gpa: 16 * MiB, size: MiB }]);
        const [block] = [...f.listeners.keys()];
        await block!.convert(block!.gpa, 8 * PAGE, 'shared');
        const before = state(f);
        // Close the guest_memfd's fd behind its owner's back: the punch-hole gets EBADF.
        const fd = block!.guestMemfd.fd;
        fs.closeSync(fd);
        await assert.rejects(block!.convert(block!.gpa, 32 * PAGE, 'shared'), /failed at step discard: EBADF/);
        assert.equal(state(f), before);
        assert.equal(await f.probe.canRead(block!, 16 * PAGE, 0x35), false);
        // Hand the owner a valid fd number again so that teardown closes cleanly.
        assert.equal(fs.openSync('/dev/null', 'r'), fd);
      });

      if (backend === 'type1') {
        it('refuses cleanly, before mapping anything, when type1 DMA entries would run out', async () => {
          const saved = fs.readFileSync(DMA_ENTRY_LIMIT, 'utf8').trim();
          fs.writeFileSync(DMA_ENTRY_LIMIT, '64');
          try {
            f = await setUp(backend, [{ gpa: 16 * MiB, size: MiB }]);
          } finally {
            fs.writeFileSync(DMA_ENTRY_LIMIT, saved);
          }
          const [block] = [...f.listeners.keys()];
          await block!.convert(block!.gpa, 16 * PAGE, 'shared');
          const before = state(f);
          const available = f.assigned.dma.mappingsAvailable();
          await assert.rejects(block!.convert(block!.gpa, 128 * PAGE, 'shared'), (e: Error & { cause?: { code?: string } }) => {
            assert.match(e.message, /needs 112 type1 DMA entries but only \d+ are left.*dma_entry_limit/);
            return true;
          });
          assert.equal(state(f), before);
          assert.equal(f.assigned.dma.mappingsAvailable(), available);
        });
      }
    });
  }

  describe('memory really returns', () => {
    let kvm: Kvm | undefined;
    afterEach(() => kvm?.close());

    function unevictableKiB(): number {
      const line = fs.readFileSync('/proc/meminfo', 'utf8').split('\n').find((l) => l.startsWith('Unevictable:'))!;
      return Number(/(\d+)/.exec(line)![1]);
    }

    it('frees the shared memfd pages of a range converted private', async () => {
      kvm = Kvm.open();
      const memory = new GuestMemory(kvm.createVm('sw-protected'));
      const block = memory.addBlock({ gpa: 16 * MiB, size: 2 * MiB });
      await block.convert(block.gpa, 2 * MiB, 'shared');
      block.shared.view(0, 2 * MiB).fill(0xee);
      const full = block.shared.allocatedBytes();
      assert.ok(full >= 2 * MiB);
      await block.convert(block.gpa + MiB, MiB, 'private');
      assert.ok(full - block.shared.allocatedBytes() >= MiB, `1 MiB freed: ${full} -> ${block.shared.allocatedBytes()}`);
      assert.equal(block.shared.read(MiB + 5, 1)[0], 0);
      memory.close();
    });

    it('frees guest_memfd pages of a range converted shared (seen in /proc/meminfo Unevictable)', async () => {
      // guest_memfd's st_blocks stays 0 on 6.12; its folios sit on the unevictable LRU
      // (its mapping is marked unevictable), so Unevictable in /proc/meminfo counts them.
      kvm = Kvm.open();
      const memory = new GuestMemory(kvm.createVm('sw-protected'));
      const block = memory.addBlock({ gpa: 16 * MiB, size: 8 * MiB });
      const baseline = unevictableKiB();
      block.guestMemfd.allocate(0, 8 * MiB);
      const allocated = unevictableKiB();
      assert.ok(allocated - baseline >= 8 * 1024 - 64, `8 MiB of private memory is counted: ${baseline} -> ${allocated} KiB`);
      await block.convert(block.gpa, 8 * MiB, 'shared');
      const freed = unevictableKiB();
      assert.ok(allocated - freed >= 8 * 1024 - 64, `converting shared freed it: ${allocated} -> ${freed} KiB`);
      memory.close();
    });
  });
});
