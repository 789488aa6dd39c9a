// iommufd: /dev/iommu, an IOAS (an I/O address space) in it, and devices attached to the
// IOAS through their VFIO cdev. The IOAS is the DmaMapper; it has no entry limit.

import fs from 'node:fs';
import type { Bytes } from '../common/byte-range';
import { FdOwner } from '../common/fd-owner';
import { DmaBatches, type DmaExtent, type DmaMapper } from './dma-mapper';
import { native } from '../common/native';

/** /dev/iommu: allocates IOASes (I/O address spaces) that devices attach to. Owns its fd. */
export class Iommufd extends FdOwner {
  private constructor(fd: number) {
    super(fd, '/dev/iommu');
  }

  /** Opens /dev/iommu (or `path`). */
  static open(path = '/dev/iommu'): Iommufd {
    return new Iommufd(fs.openSync(path, 'r+'));
  }

  /** IOMMU_IOAS_ALLOC: a new, empty I/O address space, closed with this iommufd. */
  allocIoas(): Ioas {
    return new Ioas(this, native().iommufdIoasAlloc(this.fd));
  }
}

/** An IOAS lives as long as its iommufd; using it after the iommufd closed throws. */
export class Ioas implements DmaMapper {
  readonly backend = 'iommufd' as const;

  private readonly batches = new DmaBatches({
    map: (extents, granule) => native().iommufdIoasMapRuns(this.iommufd.fd, this.id, extents, granule),
    unmap: (extents, granule, absentOk) => native().iommufdIoasUnmapRuns(this.iommufd.fd, this.id, extents, granule, absentOk),
  }, 'IOAS');

  constructor(
    readonly iommufd: Iommufd,
    readonly id: number,
  ) {}

  get closed(): boolean {
    return this.iommufd.closed;
  }

  /** Usable IOVA ranges ([start, last], inclusive) and the required IOVA alignment. */
  iovaRanges(): { ranges: Array<[bigint, bigint]>; alignment: bigint } {
    return native().iommufdIoasIovaRanges(this.iommufd.fd, this.id);
  }

  /** Maps [iova, iova + size) to the host range at vaddr, as one mapping. */
  map(vaddr: Bytes, iova: Bytes, size: Bytes): void {
    this.batches.map(vaddr, iova, size);
  }

  /** Maps each extent as size / granule mappings in one native call, all or nothing. */
  mapRuns(extents: DmaExtent[], granule: number): number {
    return this.batches.mapRuns(extents, granule);
  }

  /** Unmaps every whole mapping inside [iova, iova + size); returns the bytes unmapped. */
  unmap(iova: Bytes, size: Bytes): bigint {
    return this.batches.unmap(iova, size);
  }

  /** Unmaps each extent in one native call; with absentOk an extent with nothing mapped counts as 0 bytes. */
  unmapRuns(extents: DmaExtent[], granule: number, options: { absentOk?: boolean } = {}): bigint {
    return this.batches.unmapRuns(extents, granule, options);
  }

  /** How another thread reaches this IOAS: the iommufd's fd by number and the IOAS id (borrowed-dma-mapper.ts). */
  toThreadDescriptor(): { kind: 'iommufd'; fd: number; ioas: number } {
    return { kind: 'iommufd', fd: this.iommufd.fd, ioas: this.id };
  }

  /** iommufd keeps no count of mappings: null (no limit but pinned memory). */
  mappingsAvailable(): null {
    return null;
  }
}
