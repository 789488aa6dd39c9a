// A failed conversion's report names exactly what stayed converted. The stand-in DMA back
// end below fails the k-th granule map of a batch and every unmap after it, as the kernel
// fault matrix's `MAP:k:EIO,UNMAP:1+:EIO` does: the native batch's undo cannot unmap the
// granules it mapped, nor can the listener's retry, so the block's reconcile keeps them
// shared everywhere. Its error must say so (`applied`), whether the conversion ran on the
// synchronous path (every listener synchronous) or the asynchronous one (one that answers
// with a promise), and the runs it names must be what KVM, the tracker and the listener
// show afterwards. Issue 29: the synchronous path reported `applied = []` here.

import assert from 'node:assert/strict';
import type { Vm } from '../../lib/kvm/kvm';
import { RamBlock } from '../../lib/memory/ram-block';
import type { Run } from '../../lib/tracker/page-bitmap';
import type { RamDiscardListener } from '../../lib/tracker/ram-discard-listener';
import type { PageState } from '../../lib/tracker/state-change-channel';
import type { DmaExtent, DmaMapper } from '../../lib/vfio/dma-mapper';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';

const PAGE = 4096;
const PAGES = 64;
const GPA = 1 << 24;

function eio(syscall: string): Error {
  return Object.assign(new Error(`EIO: i/o error, ioctl(${syscall})`), { code: 'EIO', errno: -5, syscall });
}

/**
 * Granule mappings as the kernel keeps them, with the native batch's contract: a batch that
 * fails unmaps what it mapped, and names in `stillMapped` what that undo could not unmap.
 */
class StubbornMapper implements DmaMapper {
  readonly backend = 'iommufd' as const;
  readonly closed = false;
  readonly mapped = new Set<bigint>();
  /** The map call (counted from arming) that fails; every unmap fails while armed. */
  failMap = 0;
  private maps = 0;

  arm(failMap: number): void {
    this.failMap = failMap;
    this.maps = 0;
  }

  map(): void {
    throw new Error('unused');
  }

  unmap(): bigint {
    throw new Error('unused');
  }

  mapRuns(runs: DmaExtent[], granule: number): number {
    const made: bigint[] = [];
    for (const run of runs) {
      for (let iova = run.iova; iova < run.iova + run.size; iova += BigInt(granule)) {
        if (++this.maps === this.failMap) {
          // The batch's undo: every unmap fails, so all it made stays mapped.
          const stillMapped = new BigUint64Array(made.flatMap((at) => [at, BigInt(granule)]));
          throw Object.assign(eio('IOMMU_IOAS_MAP'), { stillMapped });
        }
        this.mapped.add(iova);
        made.push(iova);
      }
    }
    return made.length;
  }

  unmapRuns(runs: DmaExtent[]): bigint {
    if (this.failMap > 0) throw eio('IOMMU_IOAS_UNMAP');
    let total = 0n;
    for (const run of runs) {
      for (const iova of [...this.mapped]) {
        if (iova >= run.iova && iova < run.iova + run.size) {
          this.mapped.delete(iova);
          total += BigInt(PAGE);
        }
      }
    }
    return total;
  }

  mappingsAvailable(): null {
    return null;
  }
}

/** A VM whose memory attributes can be read back (KVM 6.12's cannot). */
class AttributeVm {
  readonly closed = false;
  readonly supportsPreFault = false;
  readonly attributes = new Array<PageState>(PAGES).fill('shared');
  createGuestMemfd() {
    return { closed: false, punchHole() {}, close() {} };
  }
  setUserMemoryRegion(): void {}
  deleteMemorySlot(): void {}
  setMemoryAttributes(gpa: number, size: number, to: PageState): void {
    this.attributes.fill(to, (gpa - GPA) / PAGE, (gpa - GPA + size) / PAGE);
  }
  sharedRuns(): Run[] {
    const runs: Run[] = [];
    this.attributes.forEach((state, page) => {
      if (state !== 'shared') return;
      const last = runs[runs.length - 1];
      if (last && last[0] + last[1] === page) last[1]++;
      else runs.push([page, 1]);
    });
    return runs;
  }
}

/** A listener that answers with promises, far from the converted range: it forces the asynchronous path. */
function asyncBystander(): RamDiscardListener {
  return { name: 'async bystander', populate: () => Promise.resolve(), discard: () => Promise.resolve() };
}

/** Runs of the shared granules in [first, first + count) that `runs` does not cover: what changed. */
function minus(after: Run[], before: Run[]): Run[] {
  const was = new Set(before.flatMap(([f, c]) => Array.from({ length: c }, (_, i) => f + i)));
  const changed: Run[] = [];
  for (const [f, c] of after) {
    for (let page = f; page < f + c; page++) {
      if (was.has(page)) continue;
      const last = changed[changed.length - 1];
      if (last && last[0] + last[1] === page) last[1]++;
      else changed.push([page, 1]);
    }
  }
  return changed;
}

async function failedConversion(path: 'synchronous' | 'asynchronous', failMap: number) {
  const vm = new AttributeVm();
  const block = new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'report' });
  const dma = new StubbornMapper();
  const listener = new VfioDmaListener(dma, { sharedAddress: 1n << 32n, gpa: BigInt(GPA) });
  await block.register(listener);
  if (path === 'asynchronous') await block.register(asyncBystander(), { offset: 48 * PAGE, size: 16 * PAGE });
  // Shared before: pages 0-2 (mapped), so the range [0, 12) starts with a run that stays.
  await block.convert(GPA, 3 * PAGE, 'shared');
  const before = vm.sharedRuns();
  assert.equal(block.canConvertSync, path === 'synchronous');
  dma.arm(failMap);
  const error = await block.convert(GPA, 12 * PAGE, 'shared').then(
    () => assert.fail('the conversion should fail'),
    (e: Error & { code?: string; applied?: Run[]; step?: string }) => e,
  );
  dma.arm(0);
  return { vm, block, listener, dma, before, error };
}

describe('the report of a failed conversion', () => {
  for (const path of ['synchronous', 'asynchronous'] as const) {
    for (const failMap of [1, 2, 3, 4]) {
      it(`names the runs that stayed shared when map ${failMap} fails and nothing can be unmapped (${path} path)`, async () => {
        const { vm, block, listener, dma, before, error } = await failedConversion(path, failMap);
        assert.equal(error.code, 'ERR_GUESTMEM_CONVERSION_FAILED', error.message);
        assert.equal(error.step, 'listeners');
        // Pages 3.. were mapped one by one until map k failed: the k - 1 before it stayed.
        const expected: Run[] = failMap > 1 ? [[3, failMap - 1]] : [];
        assert.deepEqual(error.applied, expected, error.message);
        // The report against what every party shows now: KVM, the tracker, the listener and
        // the device's reach all agree with the state before plus `applied`.
        const shared = vm.sharedRuns();
        assert.deepEqual(minus(shared, before), expected);
        assert.deepEqual(block.attributes.runs('shared'), shared);
        assert.deepEqual(listener.heldRuns(0, PAGES), shared);
        assert.deepEqual([...dma.mapped].map((iova) => Number(iova - BigInt(GPA)) / PAGE).sort((a, b) => a - b), shared.flatMap(([f, c]) => Array.from({ length: c }, (_, i) => f + i)));
        assert.deepEqual(block.disagreements(), []);
        if (expected.length > 0) assert.match(error.message, new RegExp(`stayed shared, in agreement: 3\\+${failMap - 1}$`));
        else assert.doesNotMatch(error.message, /stayed/);
      });
    }
  }

  it('is the same on both paths', async () => {
    for (const failMap of [1, 2, 3, 4]) {
      const sync = await failedConversion('synchronous', failMap);
      const async = await failedConversion('asynchronous', failMap);
      assert.deepEqual(sync.error.applied, async.error.applied);
      assert.equal(sync.error.message, async.error.message);
    }
  });
});
