// One interface over the two ways of giving a device DMA access to host memory: a VFIO
// type1 container and an iommufd IOAS. Neither can unmap part of a mapping, so callers
// that must later unmap at some granularity map at that granularity; both accept one unmap
// over many whole mappings. The run forms take a whole conversion's runs in one native
// call, all or nothing. The two back ends differ only in those two native calls
// (DmaBatchCalls); the checks and packing around them are DmaBatches', as C++ shares the
// loops through DmaOps.

import { checkBytes, checkExtent, type Bytes } from '../common/byte-range';
import { outOfRange } from '../common/errors';

/** The two ways of giving a device DMA access: a VFIO type1 container or an iommufd IOAS. */
export type DmaBackend = 'type1' | 'iommufd';

/**
 * One stretch of host memory (vaddr) given to the device at an I/O address (iova): what a
 * map or unmap call takes. A listener makes one from each granule Run it maps.
 */
export interface DmaExtent {
  vaddr: bigint;
  iova: bigint;
  size: bigint;
}

/**
 * One interface over both DMA back ends: map and unmap host memory at I/O addresses, one
 * mapping or a batch in one native call.
 */
export interface DmaMapper {
  readonly backend: DmaBackend;
  /** True once its fd is closed: the kernel dropped every mapping with it. */
  readonly closed: boolean;
  /** Maps [iova, iova + size) to the host range at vaddr, as one mapping. */
  map(vaddr: Bytes, iova: Bytes, size: Bytes): void;
  /** Maps several runs, each as granule-sized mappings, in one native call, all or nothing. */
  mapRuns(runs: DmaExtent[], granule: number): number;
  /** Unmaps every whole mapping inside [iova, iova + size); returns the bytes unmapped. */
  unmap(iova: Bytes, size: Bytes): bigint;
  /**
   * Unmaps several runs in one native call (each run one unmap), all or nothing. With
   * absentOk a run with nothing mapped counts as 0 bytes (a double discard); type1 always
   * answers so.
   */
  unmapRuns(runs: DmaExtent[], granule: number, options?: { absentOk?: boolean }): bigint;
  /** Mappings that may still be made (type1's dma-avail), or null where there is no such limit. */
  mappingsAvailable(): number | null;
}

/** Packs extents as the (vaddr, iova, size) triples the native batch calls take. */
function packExtents(extents: DmaExtent[]): BigUint64Array {
  const packed = new BigUint64Array(extents.length * 3);
  extents.forEach((extent, i) => {
    packed[i * 3] = extent.vaddr;
    packed[i * 3 + 1] = extent.iova;
    packed[i * 3 + 2] = extent.size;
  });
  return packed;
}

/** Checks one (vaddr, iova, size) extent given in bytes. */
function checkedExtent(vaddr: Bytes, iova: Bytes, size: Bytes, what: string): DmaExtent {
  const [start, length] = checkExtent(iova, size, 1n << 64n, what);
  return { vaddr: checkBytes(vaddr, 'vaddr'), iova: start, size: length };
}

function checkGranule(granule: number): bigint {
  const value = checkBytes(granule, 'granule');
  if (value === 0n) throw outOfRange('granule must be greater than zero');
  return value;
}

/** A back end's two native batch calls: each takes packed (vaddr, iova, size) triples. */
export interface DmaBatchCalls {
  /** Maps each extent as size / granule mappings; all or nothing; returns the mappings made. */
  map(extents: BigUint64Array, granule: bigint): number;
  /** One unmap per extent over whole mappings; all or nothing; returns the bytes unmapped. */
  unmap(extents: BigUint64Array, granule: bigint, absentOk: boolean): bigint;
}

/**
 * The DmaMapper methods both back ends share, around their own two native calls: checks
 * and packing here, the syscalls there. `what` names the back end's calls in errors
 * ("DMA map", "IOAS map").
 */
export class DmaBatches {
  constructor(
    private readonly calls: DmaBatchCalls,
    private readonly what: string,
  ) {}

  map(vaddr: Bytes, iova: Bytes, size: Bytes): void {
    const extent = checkedExtent(vaddr, iova, size, `${this.what} map`);
    this.calls.map(packExtents([extent]), extent.size);
  }

  mapRuns(extents: DmaExtent[], granule: number): number {
    return this.calls.map(packExtents(extents), checkGranule(granule));
  }

  unmap(iova: Bytes, size: Bytes): bigint {
    const extent = checkedExtent(0, iova, size, `${this.what} unmap`);
    return this.calls.unmap(packExtents([extent]), extent.size, false);
  }

  unmapRuns(extents: DmaExtent[], granule: number, options: { absentOk?: boolean } = {}): bigint {
    return this.calls.unmap(packExtents(extents), checkGranule(granule), options.absentOk ?? false);
  }
}
