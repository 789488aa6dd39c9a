// virtio-mem's view of a RAM block: which of its plug blocks the guest has plugged. A plug
// block is a multiple of the tracker's granule (virtio-mem's block size, 2 MiB or more on a
// real device); the bitmap holds one bit per plug block, 1 = unplugged, so that a fresh
// block is plugged everywhere and behaves as a block without a plug source. As a discard
// source (discard-source.ts) it masks what the block's listeners are told: populated =
// shared and plugged. Its memory is a SharedArrayBuffer (the unplugged count, then the
// bitmap), as the tracker's is: a block shared with vCPU threads carries it to each, so a
// conversion there masks what is unplugged, and a plug or unplug on the main thread (under
// the block's lock) is seen by all.

import { checkGranularity, checkSpan, granuleRangeOf, type Bytes, type GranuleRange } from '../common/byte-range';
import { outOfRange } from '../common/errors';
import { givenOrFreshMemory } from './tracker-arguments';
import type { DiscardSource, SourceChange } from './discard-source';
import { PageBitmap, type Run } from './page-bitmap';

export type PlugState = 'plugged' | 'unplugged';

export function oppositePlug(state: PlugState): PlugState {
  return state === 'plugged' ? 'unplugged' : 'plugged';
}

/** Bytes before the bitmap in a plug source's memory: the unplugged plug blocks, an Int32 (with padding to the words). */
const COUNT_BYTES = 8;

export class PlugSource implements DiscardSource {
  readonly name = 'plug';
  /** Bytes per plug block: a power of two, a multiple of the tracker's granule. */
  readonly blockSize: number;
  /** Tracker granules per plug block. */
  readonly granulesPerBlock: number;
  readonly blocks: number;
  /** The count of unplugged plug blocks, then the bitmap: what share() carries to another thread. */
  readonly memory: SharedArrayBuffer;
  private readonly unplugged: PageBitmap;
  private readonly count: Int32Array;

  /**
   * A plug source over `granules` granules of `granularity` bytes, in plug blocks of
   * `blockSize` bytes: plugged everywhere, or as `memory` (another plug source's of the same
   * geometry, carried to this thread) says.
   */
  constructor(readonly granules: number, readonly granularity: number, blockSize: number = granularity, memory?: SharedArrayBuffer) {
    checkGranularity(blockSize, 'plug block size');
    if (blockSize < granularity) throw outOfRange(`plug block size ${blockSize} is below the granularity ${granularity}; it must be a multiple of it`);
    this.granulesPerBlock = blockSize / granularity;
    if (granules % this.granulesPerBlock !== 0) {
      throw outOfRange(`the block of 0x${(granules * granularity).toString(16)} bytes is not a whole number of plug blocks of 0x${blockSize.toString(16)} bytes`);
    }
    this.blockSize = blockSize;
    this.blocks = granules / this.granulesPerBlock;
    const bytes = COUNT_BYTES + PageBitmap.bytesFor(this.blocks);
    this.memory = givenOrFreshMemory(memory, bytes, `a plug source of ${this.blocks} plug blocks`, 'a plug bitmap');
    this.count = new Int32Array(this.memory, 0, 1);
    this.unplugged = new PageBitmap(this.blocks, { buffer: this.memory, byteOffset: COUNT_BYTES });
  }

  /** Granules unplugged now. */
  get discarded(): number {
    return this.count[0]! * this.granulesPerBlock;
  }

  /**
   * A byte range of the block (block-relative) checked for plug and unplug: not empty, no
   * overflow, aligned to the plug block size, inside the block; in tracker granules.
   * Throws a RangeError (or TypeError) naming what is wrong; nothing is changed.
   */
  range(offset: Bytes, size: Bytes, what: string): GranuleRange {
    const [start, length] = checkSpan(offset, size, what);
    const b = BigInt(this.blockSize);
    if (length === 0n) throw outOfRange(`${what} size must be greater than zero`);
    if (start % b !== 0n) throw outOfRange(`${what} offset 0x${start.toString(16)} is not aligned to the plug block size 0x${b.toString(16)}`);
    if (length % b !== 0n) throw outOfRange(`${what} size 0x${length.toString(16)} is not a multiple of the plug block size 0x${b.toString(16)}`);
    const limit = BigInt(this.granules) * BigInt(this.granularity);
    if (start + length > limit) throw outOfRange(`${what} [0x${start.toString(16)}, +0x${length.toString(16)}) is outside the block of 0x${limit.toString(16)} bytes`);
    const g = BigInt(this.granularity);
    return granuleRangeOf(Number(start / g), Number(length / g), this.granularity);
  }

  /** Runs of [first, first + count) (granules) in `state`, ascending, clipped. */
  runs(state: PlugState, first = 0, count = this.granules): Run[] {
    const per = this.granulesPerBlock;
    const end = first + count;
    const firstBlock = Math.floor(first / per);
    const blocks = Math.ceil(end / per) - firstBlock;
    return this.unplugged.runs(firstBlock, blocks, state === 'unplugged').map(([b, n]) => {
      const start = Math.max(first, b * per);
      return [start, Math.min(end, (b + n) * per) - start] as Run;
    });
  }

  populatedRuns(first: number, count: number): Run[] {
    return this.runs('plugged', first, count);
  }

  /**
   * The change of `runs` (whole plug blocks, all in the other state now) to `to`, for the
   * tracker's sourceChange, which makes it between its other operations and reverts it if
   * a listener refuses it.
   */
  change(runs: readonly Run[], to: PlugState): SourceChange {
    return {
      source: this,
      populate: to === 'plugged',
      apply: () => {
        for (const [first, count] of runs) this.set(first, count, to);
        return runs as Run[];
      },
      revert: () => {
        for (const [first, count] of runs) this.set(first, count, oppositePlug(to));
      },
    };
  }

  /** Marks granules [first, first + count) (whole plug blocks) plugged or unplugged. */
  set(first: number, count: number, state: PlugState): void {
    const per = this.granulesPerBlock;
    const firstBlock = first / per;
    const blocks = count / per;
    const unplug = state === 'unplugged';
    const before = this.unplugged.countSet(firstBlock, blocks);
    this.unplugged.fill(firstBlock, blocks, unplug);
    this.count[0] = this.count[0]! + (unplug ? blocks : 0) - before;
  }
}
