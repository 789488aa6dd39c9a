// How far a guest can go on VFIO type1 at a given granule. type1 keeps one vfio_dma entry
// per mapping and caps them per container (vfio_iommu_type1's dma_entry_limit, 65535 by
// default, to bound the kernel memory a user can make it spend). A VFIO listener maps one
// granule per mapping, so the cap is a cap on shared memory: 65535 × 4 KiB ≈ 256 MiB at
// once, whatever the guest's size. iommufd has no such count: an IOAS keeps its areas in
// an interval tree bounded only by the memory it pins (RLIMIT_MEMLOCK / memory cgroup).

import { checkBytes, checkGranularity, type Bytes } from '../common/byte-range';
import { checkInteger } from '../common/validators';

/** How much of a guest type1 can share at once, given its dma_entry_limit. */
export interface Type1Reach {
  granule: number;
  dmaEntryLimit: number;
  /** The most of any guest that can be shared (DMA-mapped) at once. */
  maxSharedBytes: bigint;
  guestSize: bigint;
  /** maxSharedBytes / guestSize, at most 1. */
  sharedFraction: number;
  /** The dma_entry_limit that would let all of this guest be shared. */
  entriesForWholeGuest: bigint;
}

/**
 * How much of a guest of `guestSize` bytes type1 can map at once with `limit` mappings of one
 * granule each, and what limit all of it would need.
 */
export function type1Reach(dmaEntryLimit: number, guestSize: Bytes, granule = 4096): Type1Reach {
  // dma_entry_limit is a module parameter of type uint.
  checkInteger(dmaEntryLimit, 'dmaEntryLimit', 0, 0xffffffff);
  const size = checkBytes(guestSize, 'guestSize');
  checkGranularity(granule, 'granule');
  const g = BigInt(granule);
  const maxSharedBytes = BigInt(dmaEntryLimit) * g;
  const entriesForWholeGuest = (size + g - 1n) / g;
  const sharedFraction = entriesForWholeGuest === 0n ? 1 : Math.min(1, dmaEntryLimit / Number(entriesForWholeGuest));
  return { granule, dmaEntryLimit, maxSharedBytes, guestSize: size, sharedFraction, entriesForWholeGuest };
}
