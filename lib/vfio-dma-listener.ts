// The VFIO side of a conversion, as QEMU's VFIO RamDiscardListener: when a range turns
// shared, DMA-map its shared backing at iova = gpa, one mapping per granule (so any granule
// can later be unmapped alone); when it turns private, unmap it before anything else
// happens to the page. Each notification is one native call, whatever its size.

import type { GranuleRange } from './byte-range';
import type { DmaMapper } from './dma-mapper';
import { GuestmemError } from './errors';
import type { RamDiscardListener } from './ram-discard-listener';

export interface VfioDmaListenerOptions {
  /** Host address of the block's shared backing. */
  sharedAddress: bigint;
  /** Guest physical address of the block: the IOVA of its offset 0. */
  gpa: bigint;
  name?: string;
}

export class VfioDmaListener implements RamDiscardListener {
  readonly name: string;
  /** One unmap over a range of which parts are unmapped is fine for both back ends. */
  readonly doubleDiscardSupported = true;
  /** Granule mappings this listener holds now. */
  mappings = 0;

  constructor(
    readonly dma: DmaMapper,
    private readonly options: VfioDmaListenerOptions,
  ) {
    this.name = options.name ?? `vfio-${dma.backend}`;
  }

  populate(range: GranuleRange): void {
    // type1 fails a map past its entry limit part-way; refuse before starting instead.
    const available = this.dma.mappingsAvailable();
    if (available !== null && range.count > available) {
      throw Object.assign(
        new GuestmemError(
          'ERR_GUESTMEM_DMA_LIMIT',
          `mapping ${range.count} granules needs ${range.count} type1 DMA entries but only ${available} are left; ` +
            'raise the limit (modprobe vfio_iommu_type1 dma_entry_limit=N, or write ' +
            '/sys/module/vfio_iommu_type1/parameters/dma_entry_limit before opening the container) or use iommufd, which has no such limit',
        ),
        { needed: range.count, available },
      );
    }
    const offset = range.offsetBigInt;
    this.mappings += this.dma.mapChunks(this.options.sharedAddress + offset, this.options.gpa + offset, range.sizeBigInt, range.granularity);
  }

  discard(range: GranuleRange): void {
    let unmapped: bigint;
    try {
      unmapped = this.dma.unmap(this.options.gpa + range.offsetBigInt, range.sizeBigInt);
    } catch (error) {
      // iommufd answers ENOENT when nothing in the range was mapped: already discarded.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT' && this.dma.backend === 'iommufd') return;
      throw error;
    }
    this.mappings -= Number(unmapped / BigInt(range.granularity));
  }
}
