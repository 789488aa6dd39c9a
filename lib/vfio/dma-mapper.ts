// One interface over the two ways of giving a device DMA access to host memory: a VFIO
// type1 container and an iommufd IOAS. Neither can unmap part of a mapping, so callers
// that must later unmap at some granularity map at that granularity; both accept one unmap
// over many whole mappings. The run forms take a whole conversion's runs in one native
// call, all or nothing.

import { checkBytes, checkExtent, type Bytes } from '../common/byte-range';
import { outOfRange } from '../common/errors';

export type DmaBackend = 'type1' | 'iommufd';

export interface DmaRun {
  vaddr: bigint;
  iova: bigint;
  size: bigint;
}

export interface DmaMapper {
  readonly backend: DmaBackend;
  /** True once its fd is closed: the kernel dropped every mapping with it. */
  readonly closed: boolean;
  /** Maps [iova, iova + size) to the host range at vaddr, as one mapping. */
  map(vaddr: Bytes, iova: Bytes, size: Bytes): void;
  /** Maps the range as size / granule consecutive mappings in one native call, all or nothing. */
  mapChunks(vaddr: Bytes, iova: Bytes, size: Bytes, granule: number): number;
  /** Maps several runs, each as granule-sized mappings, in one native call, all or nothing. */
  mapRuns(runs: DmaRun[], granule: number): number;
  /** Unmaps every whole mapping inside [iova, iova + size); returns the bytes unmapped. */
  unmap(iova: Bytes, size: Bytes): bigint;
  /**
   * Unmaps several runs in one native call (each run one unmap), all or nothing. With
   * absentOk a run with nothing mapped counts as 0 bytes (a double discard); type1 always
   * answers so.
   */
  unmapRuns(runs: DmaRun[], granule: number, options?: { absentOk?: boolean }): bigint;
  /** Mappings that may still be made (type1's dma-avail), or null where there is no such limit. */
  mappingsAvailable(): number | null;
}

/** Packs runs as the (vaddr, iova, size) triples the native batch calls take. */
export function packRuns(runs: DmaRun[]): BigUint64Array {
  const packed = new BigUint64Array(runs.length * 3);
  runs.forEach((run, i) => {
    packed[i * 3] = run.vaddr;
    packed[i * 3 + 1] = run.iova;
    packed[i * 3 + 2] = run.size;
  });
  return packed;
}

/** Checks one (vaddr, iova, size) run given in bytes. */
export function checkedRun(vaddr: Bytes, iova: Bytes, size: Bytes, what: string): DmaRun {
  const [start, length] = checkExtent(iova, size, 1n << 64n, what);
  return { vaddr: checkBytes(vaddr, 'vaddr'), iova: start, size: length };
}

export function checkGranule(granule: number): bigint {
  const value = checkBytes(granule, 'granule');
  if (value === 0n) throw outOfRange('granule must be greater than zero');
  return value;
}
