// The VFIO side of a conversion, as QEMU's VFIO RamDiscardListener: when ranges turn
// shared, DMA-map their shared backing at iova = gpa, one mapping per granule (so any
// granule can later be unmapped alone); when they turn private, unmap them before anything
// else happens to the pages. Every runs of one change go to the kernel in one native call.

import type { GranuleRange } from './byte-range';
import type { DmaMapper, DmaRun } from './dma-mapper';
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
    this.populateRuns([range]);
  }

  discard(range: GranuleRange): void {
    this.discardRuns([range]);
  }

  populateRuns(ranges: GranuleRange[]): void {
    const needed = ranges.reduce((sum, range) => sum + range.count, 0);
    // type1 fails a map past its entry limit part-way; refuse before starting instead.
    const available = this.dma.mappingsAvailable();
    if (available !== null && needed > available) {
      throw Object.assign(
        new GuestmemError(
          'ERR_GUESTMEM_DMA_LIMIT',
          `mapping ${needed} granules needs ${needed} type1 DMA entries but only ${available} are left; ` +
            'raise the limit (modprobe vfio_iommu_type1 dma_entry_limit=N, or write ' +
            '/sys/module/vfio_iommu_type1/parameters/dma_entry_limit before opening the container) or use iommufd, which has no such limit',
        ),
        { needed, available },
      );
    }
    this.mappings += this.dma.mapRuns(this.runs(ranges), ranges[0]!.granularity);
  }

  discardRuns(ranges: GranuleRange[]): void {
    const granularity = ranges[0]!.granularity;
    const unmapped = this.dma.unmapRuns(this.runs(ranges), granularity, { absentOk: true });
    this.mappings -= Number(unmapped / BigInt(granularity));
  }

  private runs(ranges: GranuleRange[]): DmaRun[] {
    return ranges.map((range) => {
      const offset = range.offsetBigInt;
      return { vaddr: this.options.sharedAddress + offset, iova: this.options.gpa + offset, size: range.sizeBigInt };
    });
  }
}
