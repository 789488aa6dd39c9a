// One interface over the two ways of giving a device DMA access to host memory: a VFIO
// type1 container and an iommufd IOAS. Neither can unmap part of a mapping, so callers
// that must later unmap at some granularity map at that granularity (mapChunks, one
// native call for the whole range); both accept one unmap over many whole mappings.

import type { Bytes } from './byte-range';

export type DmaBackend = 'type1' | 'iommufd';

export interface DmaMapper {
  readonly backend: DmaBackend;
  /** Maps [iova, iova + size) to the host range at vaddr, as one mapping. */
  map(vaddr: Bytes, iova: Bytes, size: Bytes): void;
  /**
   * Maps the range as size / granule consecutive mappings in one native call. If one fails,
   * those already made are unmapped before the error is thrown.
   */
  mapChunks(vaddr: Bytes, iova: Bytes, size: Bytes, granule: number): number;
  /** Unmaps every whole mapping inside [iova, iova + size); returns the bytes unmapped. */
  unmap(iova: Bytes, size: Bytes): bigint;
  /** Mappings that may still be made (type1's dma-avail), or null where there is no such limit. */
  mappingsAvailable(): number | null;
}
