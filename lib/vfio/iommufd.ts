// iommufd: /dev/iommu, an IOAS (an I/O address space) in it, and devices attached to the
// IOAS through their VFIO cdev. The IOAS is the DmaMapper; it has no entry limit.

import fs from 'node:fs';
import type { Bytes } from '../common/byte-range';
import { FdOwner } from '../common/fd-owner';
import { checkGranule, checkedRun, packRuns, type DmaMapper, type DmaRun } from './dma-mapper';
import { native } from '../common/native';

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

  get closed(): boolean {
    return this.iommufd.closed;
  }

  /** Usable IOVA ranges ([start, last], inclusive) and the required IOVA alignment. */
  iovaRanges(): { ranges: Array<[bigint, bigint]>; alignment: bigint } {
    return native().iommufdIoasIovaRanges(this.iommufd.fd, this.id);
  }

  map(vaddr: Bytes, iova: Bytes, size: Bytes): void {
    const run = checkedRun(vaddr, iova, size, 'IOAS map');
    native().iommufdIoasMapRuns(this.iommufd.fd, this.id, packRuns([run]), run.size);
  }

  mapChunks(vaddr: Bytes, iova: Bytes, size: Bytes, granule: number): number {
    return native().iommufdIoasMapRuns(this.iommufd.fd, this.id, packRuns([checkedRun(vaddr, iova, size, 'IOAS map')]), checkGranule(granule));
  }

  mapRuns(runs: DmaRun[], granule: number): number {
    return native().iommufdIoasMapRuns(this.iommufd.fd, this.id, packRuns(runs), checkGranule(granule));
  }

  unmap(iova: Bytes, size: Bytes): bigint {
    const run = checkedRun(0, iova, size, 'IOAS unmap');
    return native().iommufdIoasUnmapRuns(this.iommufd.fd, this.id, packRuns([run]), run.size, false);
  }

  unmapRuns(runs: DmaRun[], granule: number, options: { absentOk?: boolean } = {}): bigint {
    return native().iommufdIoasUnmapRuns(this.iommufd.fd, this.id, packRuns(runs), checkGranule(granule), options.absentOk ?? false);
  }

  mappingsAvailable(): null {
    return null;
  }
}
