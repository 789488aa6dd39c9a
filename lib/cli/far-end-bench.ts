// The cost of a conversion must follow its range, not the block's size or where in the
// block it lies: one page at the far end of an 8 GiB block against one at the far end of
// a 1 GiB block, in the same VM, interleaved so that drift in the host hits both alike.

import type { RamBlock } from '../memory/ram-block';
import { VfioDmaListener } from '../vfio/vfio-dma-listener';
import type { VmHost } from './hosts';

const PAGE = 4096;
const GiB = 2 ** 30;

export interface FarEndRow {
  blockSize: number;
  gpa: number;
  /** Offset of the page converted: the block's last. */
  offset: number;
  conversions: number;
  medianNs: number;
  meanNs: number;
}

export interface FarEndResult {
  rows: FarEndRow[];
  /** Median of the large block over median of the small one. */
  ratio: number;
}

/** The blocks measured: the small one first, then the large; above the bench's own block. */
export const FAR_END_BLOCKS = [
  { size: 1 * GiB, gpa: 1 * GiB },
  { size: 8 * GiB, gpa: 4 * GiB },
];

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/**
 * Adds the blocks to the host's VM (each with a VFIO listener when the host has a device),
 * then converts the last page of each shared and back `iterations` times, alternating
 * blocks, and times each conversion end to end (KVM, listeners, discard).
 */
export async function benchFarEnd(host: VmHost, iterations: number): Promise<FarEndResult> {
  const blocks: RamBlock[] = FAR_END_BLOCKS.map(({ size, gpa }) => host.memory.addBlock({ gpa, size, name: `far-end-${size / GiB}G` }));
  for (const block of blocks) {
    if (host.assigned) await block.register(new VfioDmaListener(host.assigned.dma, { sharedAddress: block.shared.address, gpa: BigInt(block.gpa), name: 'vfio' }));
  }
  const samples: number[][] = blocks.map(() => []);
  const convertLastPage = async (block: RamBlock, to: 'shared' | 'private') => {
    const started = process.hrtime.bigint();
    await block.convert(block.gpa + block.size - PAGE, PAGE, to);
    return Number(process.hrtime.bigint() - started);
  };
  // Warm-up: the first conversions of a block fault in KVM's and the IOMMU's structures.
  for (let i = 0; i < 3; i++) for (const block of blocks) for (const to of ['shared', 'private'] as const) await convertLastPage(block, to);
  for (let i = 0; i < iterations; i++) {
    for (const [index, block] of blocks.entries()) {
      for (const to of ['shared', 'private'] as const) samples[index]!.push(await convertLastPage(block, to));
    }
  }
  const rows = blocks.map((block, index) => ({
    blockSize: block.size,
    gpa: block.gpa,
    offset: block.size - PAGE,
    conversions: samples[index]!.length,
    medianNs: Math.round(median(samples[index]!)),
    meanNs: Math.round(samples[index]!.reduce((sum, ns) => sum + ns, 0) / samples[index]!.length),
  }));
  return { rows, ratio: rows[1]!.medianNs / rows[0]!.medianNs };
}
