// iommufd: /dev/iommu, an IOAS (an I/O address space) in it, and devices attached to the
// IOAS through their VFIO cdev. The IOAS is the DmaMapper; it has no entry limit.

import fs from 'node:fs';
import { checkBytes, type Bytes } from './byte-range';
import { FdOwner } from './fd-owner';
import type { DmaMapper } from './dma-mapper';
import { checkSpan } from './kvm';
import { native } from './native';

export class Iommufd extends FdOwner {
  private constructor(fd: number) {
    super(fd, '/dev/iommu');
  }

  static open(path = '/dev/iommu'): Iommufd {
    return new Iommufd(fs.openSync(path, 'r+'));
  }

  allocIoas(): Ioas {
    return new Ioas(this, native().iommufdIoasAlloc(this.fd));
  }
}

/** An IOAS lives as long as its iommufd; using it after the iommufd closed throws. */
export class Ioas implements DmaMapper {
  readonly backend = 'iommufd' as const;

  constructor(
    readonly iommufd: Iommufd,
    readonly id: number,
  ) {}

  /** Usable IOVA ranges ([start, last], inclusive) and the required IOVA alignment. */
  iovaRanges(): { ranges: Array<[bigint, bigint]>; alignment: bigint } {
    return native().iommufdIoasIovaRanges(this.iommufd.fd, this.id);
  }

  map(vaddr: Bytes, iova: Bytes, size: Bytes): void {
    const [start, length] = checkSpan(iova, size, 'IOAS map');
    native().iommufdIoasMapChunks(this.iommufd.fd, this.id, checkBytes(vaddr, 'vaddr'), start, length, length);
  }

  mapChunks(vaddr: Bytes, iova: Bytes, size: Bytes, granule: number): number {
    const [start, length] = checkSpan(iova, size, 'IOAS map');
    return native().iommufdIoasMapChunks(this.iommufd.fd, this.id, checkBytes(vaddr, 'vaddr'), start, length, checkBytes(granule, 'granule'));
  }

  unmap(iova: Bytes, size: Bytes): bigint {
    const [start, length] = checkSpan(iova, size, 'IOAS unmap');
    return native().iommufdIoasUnmap(this.iommufd.fd, this.id, start, length);
  }

  mappingsAvailable(): null {
    return null;
  }
}
