// The VFIO DMA listener's bookkeeping, against a stand-in DMA mapper that keeps granule
// mappings as type1 does (EEXIST on a double map; an unmap removes whole mappings in its
// range): it maps and unmaps exactly what it holds, and after a failed batch it knows
// exactly what is still mapped, from the native layer's stillMapped / notRestored.

import assert from 'node:assert/strict';
import { GranuleRange } from '../../lib/common/byte-range';
import type { DmaExtent, DmaMapper } from '../../lib/vfio/dma-mapper';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import { defineThreadKind } from '../../lib/common/thread-kinds';

const PAGE = 4096;
const GPA = 1n << 24n;

class FakeMapper implements DmaMapper {
  readonly backend = 'type1' as const;
  closed = false;
  /** iova → size of each mapping, the probe's foreign one included. */
  readonly mappings = new Map<bigint, bigint>();
  /** The next batch call throws this (once). */
  failNext: Error | null = null;

  map(): void {
    throw new Error('unused');
  }

  unmap(): bigint {
    throw new Error('unused');
  }

  mapRuns(runs: DmaExtent[], granule: number): number {
    this.fail();
    let made = 0;
    for (const run of runs) {
      for (let iova = run.iova; iova < run.iova + run.size; iova += BigInt(granule)) {
        if (this.mappings.has(iova)) throw Object.assign(new Error('EEXIST: file exists, ioctl(VFIO_IOMMU_MAP_DMA)'), { code: 'EEXIST' });
        this.mappings.set(iova, BigInt(granule));
        made++;
      }
    }
    return made;
  }

  unmapRuns(runs: DmaExtent[]): bigint {
    this.fail();
    let total = 0n;
    for (const run of runs) {
      for (const [iova, size] of [...this.mappings]) {
        if (iova >= run.iova && iova + size <= run.iova + run.size) {
          this.mappings.delete(iova);
          total += size;
        }
      }
    }
    return total;
  }

  mappingsAvailable(): null {
    return null;
  }

  private fail(): void {
    const error = this.failNext;
    this.failNext = null;
    if (error) throw error;
  }
}

const range = (first: number, count: number) => new GranuleRange(first, count, PAGE);
const iovaOf = (page: number) => GPA + BigInt(page * PAGE);

function setUp(): { dma: FakeMapper; listener: VfioDmaListener } {
  const dma = new FakeMapper();
  return { dma, listener: new VfioDmaListener(dma, { sharedAddress: 1n << 40n, gpa: GPA, name: 'dma' }) };
}

describe('VfioDmaListener bookkeeping', () => {
  it('unmaps only its own mappings on a whole-section discard, leaving a foreign one in the window', () => {
    const { dma, listener } = setUp();
    dma.mappings.set(iovaOf(40), BigInt(PAGE)); // someone else's (a probe's scratch page)
    listener.populateRuns([range(2, 3), range(10, 1)]);
    assert.equal(listener.mappings, 4);
    listener.discardRuns([range(0, 64)]);
    assert.equal(listener.mappings, 0);
    assert.deepEqual([...dma.mappings.keys()], [iovaOf(40)]);
  });

  it('maps only the granules it lacks, so a repeated populate never hits EEXIST', () => {
    const { dma, listener } = setUp();
    listener.populateRuns([range(4, 4)]);
    listener.populateRuns([range(0, 16)]);
    assert.deepEqual(listener.heldRuns(0, 64), [[0, 16]]);
    assert.equal(dma.mappings.size, 16);
  });

  it('unmaps again, when in doubt, what a failed map batch could not undo', () => {
    const { dma, listener } = setUp();
    dma.mappings.set(iovaOf(3), BigInt(PAGE)); // the batch's own undo left this mapped
    dma.failNext = Object.assign(new Error('EIO: injected, ioctl(VFIO_IOMMU_MAP_DMA)'), {
      code: 'EIO', stillMapped: new BigUint64Array([iovaOf(3), BigInt(PAGE)]),
    });
    assert.throws(() => listener.populateRuns([range(0, 8)]), /EIO/);
    assert.equal(listener.mappings, 0, 'the retry unmapped it');
    assert.equal(dma.mappings.size, 0);
  });

  it('keeps holding what a failed map left when the retry fails too, so its block can name it', () => {
    const { dma, listener } = setUp();
    dma.mappings.set(iovaOf(3), BigInt(PAGE));
    const stillMapped = new BigUint64Array([iovaOf(3), BigInt(PAGE)]);
    dma.failNext = Object.assign(new Error('EIO: injected'), { code: 'EIO', stillMapped });
    const original = dma.unmapRuns.bind(dma);
    dma.unmapRuns = () => {
      throw Object.assign(new Error('EIO: injected unmap'), { code: 'EIO' });
    };
    assert.throws(() => listener.populateRuns([range(0, 8)]), /EIO: injected$/);
    assert.deepEqual(listener.heldRuns(0, 64), [[3, 1]]);
    dma.unmapRuns = original;
    listener.discardRuns([range(0, 8)]);
    assert.equal(dma.mappings.size, 0);
  });

  it('counts as unmapped what a failed unmap batch could not map back', () => {
    const { dma, listener } = setUp();
    listener.populateRuns([range(0, 4), range(8, 4)]);
    // The batch unmapped run 0-3, failed on 8-11, and could re-map only pages 0-1.
    dma.mappings.delete(iovaOf(2));
    dma.mappings.delete(iovaOf(3));
    dma.failNext = Object.assign(new Error('EIO: injected'), { code: 'EIO', notRestored: new BigUint64Array([iovaOf(2), BigInt(2 * PAGE)]) });
    assert.throws(() => listener.discardRuns([range(0, 12)]), /EIO/);
    assert.deepEqual(listener.heldRuns(0, 64), [[0, 2], [8, 4]]);
  });

  it('holds nothing once its container is closed: the kernel dropped the mappings', () => {
    const { dma, listener } = setUp();
    listener.populateRuns([range(0, 4)]);
    dma.closed = true;
    listener.discardRuns([range(0, 64)]);
    assert.equal(listener.mappings, 0);
  });
});

describe('VfioDmaListener across threads', () => {
  it('sizes what it holds to its section at register, in shared memory, keeping what it held, and refuses granules past it', () => {
    const { listener } = setUp();
    listener.populateRuns([range(2, 3)]);
    assert.throws(() => listener.toThreadDescriptor(), { code: 'ERR_GUESTMEM_UNSUPPORTED', message: /only once registered on a block/ });
    listener.attach(range(0, 16));
    assert.deepEqual(listener.heldRuns(0, 16), [[2, 3]]);
    assert.equal(listener.mappings, 3);
    assert.throws(() => listener.populateRuns([range(15, 2)]), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => listener.attach(range(8, 16)), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('a replica made from its descriptor holds what it holds: one bitmap, one count', () => {
    const { dma, listener } = setUp();
    listener.attach(range(0, 16));
    Object.assign(dma, { toThreadDescriptor: () => ({ kind: 'same-mapper' }) });
    defineThreadKind('dma-mapper', 'same-mapper', () => dma);
    const replica = VfioDmaListener.fromThreadDescriptor(listener.toThreadDescriptor());
    replica.populateRuns([range(4, 2)]);
    assert.deepEqual(listener.heldRuns(0, 16), [[4, 2]]);
    assert.equal(listener.mappings, 2);
    listener.discardRuns([range(0, 16)]);
    assert.deepEqual(replica.heldRuns(0, 16), []);
    assert.equal(dma.mappings.size, 0);
  });
});
