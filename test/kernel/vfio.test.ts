// VFIO type1 and iommufd on a real IOMMU (the harness's emulated VT-d) with QEMU's edu
// device: map, unmap, batched map at 4K over a large range, the kernel's refusals, dma-avail,
// and the proof that matters: the device reaches a mapped page and no longer reaches it
// once unmapped.

import assert from 'node:assert/strict';
import { AssignedDevice } from '../../lib/vfio/assigned-device';
import type { DmaBackend } from '../../lib/vfio/dma-mapper';
import { EduDevice, EDU_MAX_DMA } from '../../lib/vfio/edu-device';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { VfioContainer } from '../../lib/vfio/vfio-type1';
import { VFIO_PCI_BAR0_REGION_INDEX } from '../../lib/vfio/vfio-device';
import { requires } from '../support/requires';
import { findEdu } from '../support/edu';
import { isCloexec } from '../support/cloexec';
import type { DmaExtent } from '../../lib/vfio/dma-mapper';

/** One (vaddr, iova, size) extent, mapped as size / PAGE mappings by mapRuns. */
function extent(vaddr: bigint, iova: number, size: number): DmaExtent {
  return { vaddr, iova: BigInt(iova), size: BigInt(size) };
}

const PAGE = 4096;
const MiB = 1 << 20;
const IOVA = 16 * MiB;
const LARGE = 64 * MiB;

function describeBackend(backend: DmaBackend): void {
  describe(`VFIO ${backend} with the edu device`, function () {
    let assigned: AssignedDevice;
    let memory: SharedMemory;

    before(requires(backend === 'type1' ? 'vfio-type1' : 'iommufd'));

    beforeEach(function () {
      const bdf = findEdu();
      if (!bdf) throw new Error('no edu device bound to vfio-pci');
      assigned = AssignedDevice.open(bdf, { backend });
      memory = SharedMemory.create(LARGE);
    });

    afterEach(() => {
      assigned?.close();
      memory?.close();
    });

    const available = () => assigned.dma.mappingsAvailable();

    it('maps and unmaps one range, the unmap reporting its size', () => {
      assert.equal(assigned.backend, backend);
      assert.equal(isCloexec(assigned.device.fd), true, 'the device fd is close-on-exec');
      assigned.dma.map(memory.address, IOVA, MiB);
      assert.equal(assigned.dma.unmap(IOVA, MiB), BigInt(MiB));
    });

    it('maps 64 MiB at 4K granularity in one native call and unmaps it in one', () => {
      const before = available();
      assert.equal(assigned.dma.mapRuns([extent(memory.address, IOVA, LARGE)], PAGE), LARGE / PAGE);
      if (backend === 'type1') assert.equal(available(), before! - LARGE / PAGE);
      else assert.equal(before, null);
      // Each chunk is its own mapping: one page in the middle unmaps alone.
      assert.equal(assigned.dma.unmap(IOVA + 100 * PAGE, PAGE), BigInt(PAGE));
      assert.equal(assigned.dma.unmap(IOVA, LARGE), BigInt(LARGE - PAGE));
      assert.equal(available(), before);
    });

    it('gives the kernel\'s errors for a double map, an unmap that splits, and an unmap of nothing', () => {
      assigned.dma.map(memory.address, IOVA, MiB);
      const mapSyscall = backend === 'type1' ? 'ioctl(VFIO_IOMMU_MAP_DMA)' : 'ioctl(IOMMU_IOAS_MAP)';
      const unmapSyscall = backend === 'type1' ? 'ioctl(VFIO_IOMMU_UNMAP_DMA)' : 'ioctl(IOMMU_IOAS_UNMAP)';
      assert.throws(() => assigned.dma.map(memory.address, IOVA, PAGE), { code: 'EEXIST', syscall: mapSyscall });
      // Neither back end can unmap part of a mapping.
      assert.throws(() => assigned.dma.unmap(IOVA + PAGE, PAGE), { code: backend === 'type1' ? 'EINVAL' : 'ENOENT', syscall: unmapSyscall });
      assert.equal(assigned.dma.unmap(IOVA, MiB), BigInt(MiB));
      if (backend === 'type1') assert.equal(assigned.dma.unmap(IOVA, MiB), 0n);
      else assert.throws(() => assigned.dma.unmap(IOVA, MiB), { code: 'ENOENT', syscall: unmapSyscall });
    });

    it('undoes a batch that fails part-way, leaving nothing half-mapped', () => {
      const before = available();
      assigned.dma.map(memory.address + BigInt(8 * PAGE), IOVA + 8 * PAGE, PAGE);
      assert.throws(() => assigned.dma.mapRuns([extent(memory.address, IOVA, 16 * PAGE)], PAGE), (error: Error & Record<string, unknown>) => {
        assert.equal(error.code, 'EEXIST');
        assert.equal(error.chunk, 8);
        assert.equal(error.iova, BigInt(IOVA + 8 * PAGE));
        assert.equal(error.stillMapped, undefined);
        return true;
      });
      if (backend === 'type1') assert.equal(available(), before! - 1);
      // Only the page mapped beforehand is still there.
      assert.equal(assigned.dma.unmap(IOVA, 16 * PAGE), BigInt(PAGE));
    });

    it('maps and unmaps several runs in one call, all or nothing', () => {
      const run = (page: number, pages: number) => ({ vaddr: memory.address + BigInt(page * PAGE), iova: BigInt(IOVA + page * PAGE), size: BigInt(pages * PAGE) });
      const before = available();
      // The third run collides with a mapping made beforehand: the first two are undone.
      assigned.dma.map(memory.address + BigInt(40 * PAGE), IOVA + 40 * PAGE, PAGE);
      assert.throws(() => assigned.dma.mapRuns([run(0, 4), run(10, 4), run(38, 4)], PAGE), { code: 'EEXIST' });
      assert.equal(assigned.dma.unmap(IOVA + 40 * PAGE, PAGE), BigInt(PAGE));
      assert.equal(assigned.dma.unmapRuns([run(0, 64)], PAGE, { absentOk: true }), 0n);
      assert.equal(available(), before);

      assert.equal(assigned.dma.mapRuns([run(0, 4), run(10, 4), run(20, 1)], PAGE), 9);
      if (backend === 'type1') assert.equal(available(), before! - 9);
      // An unmap that would split a mapping fails, and the run unmapped before it is mapped again.
      assigned.dma.map(memory.address + BigInt(30 * PAGE), IOVA + 30 * PAGE, 2 * PAGE);
      assert.throws(() => assigned.dma.unmapRuns([run(0, 4), run(30, 1)], PAGE), { code: backend === 'type1' ? 'EINVAL' : 'ENOENT' });
      assert.equal(assigned.dma.unmapRuns([run(0, 4), run(10, 4), run(20, 1), run(30, 2)], PAGE), BigInt(11 * PAGE));
      assert.equal(available(), before);
    });

    it('reads the edu id through the BAR by pread and by mmap', () => {
      const edu = new EduDevice(assigned.device);
      assert.equal(edu.id() >>> 0, 0x010000ed);
      assert.equal(edu.liveness(0x12345678) >>> 0, ~0x12345678 >>> 0);
      const bar = assigned.device.mapRegion(VFIO_PCI_BAR0_REGION_INDEX);
      const id = bar.words(0, 1);
      assert.equal(id[0], 0x010000ed);
      assert.equal(bar.size, assigned.device.regionInfo(VFIO_PCI_BAR0_REGION_INDEX).size);
      bar.unmap();
      assert.equal(id.byteLength, 0, 'a window still alive is emptied by unmap');
      assert.throws(() => bar.words(0, 1), { code: 'ERR_GUESTMEM_CLOSED' });
    });

    it('lets the device DMA a mapped page, and not once it is unmapped', async function () {
      this.timeout(60_000);
      const edu = new EduDevice(assigned.device);
      edu.enableBusMaster();
      const bytes = memory.view(0, 2 * PAGE);
      const pageA = 0;
      const pageB = PAGE;
      assigned.dma.mapRuns([extent(memory.address, IOVA, 2 * PAGE)], PAGE);
      bytes.fill(0x11, pageA, pageA + PAGE);
      await edu.copy(IOVA + pageA, IOVA + pageB, EDU_MAX_DMA);
      assert.ok(bytes.subarray(pageB, pageB + EDU_MAX_DMA).every((b) => b === 0x11), 'page B received page A through the device');

      assert.equal(assigned.dma.unmap(IOVA + pageA, PAGE), BigInt(PAGE));
      bytes.fill(0x22, pageA, pageA + PAGE);
      await edu.copy(IOVA + pageA, IOVA + pageB, EDU_MAX_DMA);
      assert.ok(!bytes.subarray(pageB, pageB + EDU_MAX_DMA).some((b) => b === 0x22), 'the device no longer reads page A');
    });
  });
}

describe('VFIO', () => {
  before(requires('vfio-device'));

  describeBackend('type1');
  describeBackend('iommufd');

  it('reports type1 info: page sizes, IOVA ranges with the interrupt hole, dma-avail', function () {
    requires('vfio-type1').call(this);
    using assigned = AssignedDevice.open(findEdu()!, { backend: 'type1' });
    const info = (assigned.dma as VfioContainer).iommuInfo();
    assert.equal(info.iovaPageSizes! & 0x1000n, 0x1000n);
    assert.ok(info.iovaRanges.length >= 2, 'the range is split around the interrupt window');
    assert.ok(info.iovaRanges.some(([, end]) => end === 0xfedfffffn));
    assert.equal(typeof info.dmaAvailable, 'number');
  });
});
