// A DMA mapper in a thread that does not own the container: the main thread's VfioContainer
// or Ioas keeps the fd, and this one makes the same batch calls on it by number (fds are
// process-wide). It never closes anything; the block's lock and its registry keep it from
// being used once its listener is unregistered, which a VMM does before it closes the
// device (RamBlock.shutdown).

import { DmaBatches, type DmaBackend, type DmaExtent, type DmaMapper } from './dma-mapper';
import type { Bytes } from '../common/byte-range';
import { invalidArgType } from '../common/errors';
import { native } from '../common/native';
import { defineThreadKind, type ThreadDescriptor } from '../common/thread-kinds';

/** A type1 container's or an iommufd IOAS's DMA calls, by fd number, owning nothing. */
export class BorrowedDmaMapper implements DmaMapper {
  /** Unknown here: the owner's thread knows. The registry removes this mapper before the owner closes. */
  readonly closed = false;
  private readonly batches: DmaBatches;

  constructor(
    readonly backend: DmaBackend,
    private readonly fd: number,
    ioas: number,
  ) {
    if (!Number.isInteger(fd) || fd < 0) throw invalidArgType(`a borrowed DMA mapper needs an fd, got ${String(fd)}`);
    this.batches = backend === 'type1'
      ? new DmaBatches({ map: (extents, granule) => native().vfioMapDmaRuns(fd, extents, granule), unmap: (extents, granule) => native().vfioUnmapDmaRuns(fd, extents, granule) }, 'DMA')
      : new DmaBatches({
        map: (extents, granule) => native().iommufdIoasMapRuns(fd, ioas, extents, granule),
        unmap: (extents, granule, absentOk) => native().iommufdIoasUnmapRuns(fd, ioas, extents, granule, absentOk),
      }, 'IOAS');
  }

  map(vaddr: Bytes, iova: Bytes, size: Bytes): void {
    this.batches.map(vaddr, iova, size);
  }

  mapRuns(extents: DmaExtent[], granule: number): number {
    return this.batches.mapRuns(extents, granule);
  }

  unmap(iova: Bytes, size: Bytes): bigint {
    return this.batches.unmap(iova, size);
  }

  unmapRuns(extents: DmaExtent[], granule: number, options: { absentOk?: boolean } = {}): bigint {
    return this.batches.unmapRuns(extents, granule, options);
  }

  mappingsAvailable(): number | null {
    return this.backend === 'type1' ? native().vfioIommuGetInfo(this.fd).dmaAvailable ?? null : null;
  }
}

defineThreadKind('dma-mapper', 'type1', (d: ThreadDescriptor) => new BorrowedDmaMapper('type1', d.fd as number, 0));
defineThreadKind('dma-mapper', 'iommufd', (d: ThreadDescriptor) => new BorrowedDmaMapper('iommufd', d.fd as number, d.ioas as number));
