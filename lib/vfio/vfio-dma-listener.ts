// The VFIO side of a conversion, as QEMU's VFIO RamDiscardListener: when ranges turn
// shared, DMA-map their shared backing at iova = gpa, one mapping per granule (so any
// granule can later be unmapped alone); when they turn private, unmap them before anything
// else happens to the pages. Every runs of one change go to the kernel in one native call.
//
// It keeps a bitmap of the granules it has mapped, exact even after a failed batch (the
// native layer names what its own undo could not put back), so that: a discard unmaps only
// its own mappings (a whole-section discard never removes someone else's mapping inside the
// window); a populate never maps a granule twice (EEXIST); and its block can compare it
// with the tracker and KVM after a failure, and repair it.
//
// It can run on several threads at once (a vCPU thread converting, the main thread): what it
// holds lives in a SharedArrayBuffer sized to its block at register (attach), and another
// thread rebuilds it from its descriptor (toThreadDescriptor) over the same memory, with a
// DMA mapper that uses the same container's fd by number. The block's lock keeps the
// threads' calls apart.

import { GranuleRange } from '../common/byte-range';
import type { DmaExtent, DmaMapper } from './dma-mapper';
import { GuestmemError, invalidArgType, outOfRange } from '../common/errors';
import { describeValue } from '../common/validators';
import { PageBitmap, type Run } from '../tracker/page-bitmap';
import type { RamDiscardListener } from '../tracker/ram-discard-listener';
import { defineThreadKind, revive, type ThreadDescriptor } from '../common/thread-kinds';

/** Bytes before the held bitmap's words in its shared memory: the count of held granules, a Float64. */
const COUNT_BYTES = 8;

/** A VfioDmaListener as another thread rebuilds it. */
interface VfioDmaListenerDescriptor extends ThreadDescriptor {
  kind: 'vfio-dma';
  name: string;
  sharedAddress: bigint;
  gpa: bigint;
  granules: number;
  held: SharedArrayBuffer;
  mapper: ThreadDescriptor;
}

/**
 * Where the listener's section lives: the shared memory's host address and the guest address
 * it starts at.
 */
export interface VfioDmaListenerOptions {
  /** Host address of the block's shared backing. */
  sharedAddress: bigint;
  /** Guest physical address of the block: the IOVA of its offset 0. */
  gpa: bigint;
  name?: string;
}

/** A 64-bit address as a bigint, as the native DMA calls take it. */
function checkAddress(value: unknown, what: string): void {
  if (typeof value !== 'bigint') throw invalidArgType(`${what} must be a bigint, got ${describeValue(value)}`);
  if (value < 0n || value >= 1n << 64n) throw outOfRange(`${what} must be in [0, 2^64), got ${value}`);
}

/** (iova, size) pairs from a native error's stillMapped / notRestored. */
function rangePairs(list: unknown): Array<[bigint, bigint]> {
  if (!(list instanceof BigUint64Array)) return [];
  const pairs: Array<[bigint, bigint]> = [];
  for (let i = 0; i + 1 < list.length; i += 2) pairs.push([list[i]!, list[i + 1]!]);
  return pairs;
}

/**
 * QEMU's VFIO RamDiscardListener: maps a section's shared granules for the device (one mapping
 * per granule) and unmaps them when they turn private.
 */
export class VfioDmaListener implements RamDiscardListener {
  readonly name: string;
  /** A discard may cover granules it does not hold: it unmaps only those it holds. */
  readonly doubleDiscardSupported = true;
  /** Every map and unmap is one native call that returns when the kernel has done it. */
  readonly synchronous = true;
  /**
   * Granules mapped now, by block granule index: sized to the block at register (attach),
   * in shared memory; used before any register, it grows to the highest granule seen.
   */
  private held = new PageBitmap(0);
  /** Word 0: granules held; beside the bitmap, in the same memory once it is shared. */
  private heldCount: Float64Array<ArrayBufferLike> = new Float64Array(1);
  private heldMemory: SharedArrayBuffer | null = null;

  constructor(
    readonly dma: DmaMapper,
    private readonly options: VfioDmaListenerOptions,
    shared?: { granules: number; held: SharedArrayBuffer },
  ) {
    // Checked here, not at the first conversion: a number gpa or a negative address would
    // otherwise fail inside a change, as a listener failure the change must roll back.
    if (dma === null || typeof dma !== 'object' || typeof dma.map !== 'function' || typeof dma.unmap !== 'function') {
      throw invalidArgType(`dma must be a DmaMapper (a VfioContainer or an Ioas), got ${describeValue(dma)}`);
    }
    if (options === null || typeof options !== 'object') throw invalidArgType(`VfioDmaListener options must be { sharedAddress, gpa }, got ${describeValue(options)}`);
    checkAddress(options.sharedAddress, 'sharedAddress');
    checkAddress(options.gpa, 'gpa');
    if (options.name !== undefined && typeof options.name !== 'string') throw invalidArgType(`name must be a string, got ${describeValue(options.name)}`);
    this.name = options.name ?? `vfio-${dma.backend}`;
    if (shared) this.useMemory(shared.granules, shared.held);
  }

  /** A replica in this thread of a listener described by toThreadDescriptor in another. */
  static fromThreadDescriptor(descriptor: ThreadDescriptor): VfioDmaListener {
    const d = descriptor as unknown as VfioDmaListenerDescriptor;
    return new VfioDmaListener(revive<DmaMapper>('dma-mapper', d.mapper), { sharedAddress: d.sharedAddress, gpa: d.gpa, name: d.name }, { granules: d.granules, held: d.held });
  }

  /**
   * What another thread needs to act as this listener: its addresses, its held bitmap's
   * shared memory, and its DMA mapper's descriptor (the container's fd by number). Only
   * once registered (the bitmap is sized then) and over a mapper that can describe itself.
   */
  toThreadDescriptor(): ThreadDescriptor {
    const mapper = this.dma as Partial<{ toThreadDescriptor(): ThreadDescriptor }>;
    if (this.heldMemory === null || typeof mapper.toThreadDescriptor !== 'function') {
      throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `listener "${this.name}" can run on another thread only once registered on a block, over a type1 container or an iommufd IOAS`);
    }
    const descriptor: VfioDmaListenerDescriptor = {
      kind: 'vfio-dma', name: this.name, sharedAddress: this.options.sharedAddress, gpa: this.options.gpa,
      granules: this.held.bits, held: this.heldMemory, mapper: mapper.toThreadDescriptor(),
    };
    return descriptor;
  }

  /**
   * At register: the held bitmap is made the size of the section's end (the block, for a
   * whole-block section) in shared memory, keeping what was held before. A section past a
   * bitmap already sized is refused: one listener serves one block.
   */
  attach(section: GranuleRange): void {
    if (this.heldMemory !== null) {
      if (section.end > this.held.bits) throw outOfRange(`listener "${this.name}" serves ${this.held.bits} granules; section ${section} goes past them`);
      return;
    }
    const bits = Math.max(section.end, this.held.bits);
    const memory = PageBitmap.sharedMemory(COUNT_BYTES + PageBitmap.bytesFor(bits), 'a DMA listener bitmap');
    const before = this.held;
    this.useMemory(bits, memory);
    for (const [first, count] of before.runs(0, before.bits, true)) this.mark(first, count, true);
  }

  private useMemory(granules: number, memory: SharedArrayBuffer): void {
    this.heldMemory = memory;
    this.heldCount = new Float64Array(memory, 0, 1);
    this.held = new PageBitmap(granules, { buffer: memory, byteOffset: COUNT_BYTES });
  }

  /** Granule mappings this listener holds now. */
  get mappings(): number {
    return this.heldCount[0]!;
  }

  /**
   * A thread died between a DMA call and its record here: count the granules as held, so
   * that the repair's discard unmaps whatever is there (an unmap of nothing is no error).
   */
  assumeHeld(first: number, count: number): void {
    const end = Math.min(first + count, this.held.bits);
    if (end > first) this.mark(first, end - first, true);
  }

  heldRuns(first: number, count: number): Run[] {
    const end = Math.min(first + count, this.held.bits);
    return end > first ? this.held.runs(first, end - first, true) : [];
  }

  populate(range: GranuleRange): void {
    this.populateRuns([range]);
  }

  discard(range: GranuleRange): void {
    this.discardRuns([range]);
  }

  /** Maps the granules of the ranges it does not hold yet; all or nothing. */
  populateRuns(ranges: GranuleRange[]): void {
    if (ranges.length === 0) return;
    const granularity = ranges[0]!.granularity;
    const missing = this.split(ranges, false);
    if (missing.length === 0) return;
    const needed = missing.reduce((sum, [, count]) => sum + count, 0);
    // type1 fails a map past its entry limit part-way; refuse before starting instead.
    const available = this.dma.mappingsAvailable();
    if (available !== null && needed > available) {
      throw new GuestmemError(
        'ERR_GUESTMEM_DMA_LIMIT',
        `mapping ${needed} granules needs ${needed} type1 DMA entries but only ${available} are left; ` +
          'raise the limit (modprobe vfio_iommu_type1 dma_entry_limit=N, or write ' +
            '/sys/module/vfio_iommu_type1/parameters/dma_entry_limit before opening the container) or use iommufd, which has no such limit',
        { needed, available },
      );
    }
    try {
      this.dma.mapRuns(this.extentsOf(missing, granularity), granularity);
    } catch (error) {
      // The batch's own undo left these mapped: record them, then, when in doubt, unmap.
      const left = this.granulesOf(rangePairs((error as { stillMapped?: unknown }).stillMapped), granularity);
      for (const [first, count] of left) this.mark(first, count, true);
      if (left.length > 0) this.unmapHeld(left, granularity);
      throw error;
    }
    for (const [first, count] of missing) this.mark(first, count, true);
  }

  /** Unmaps the granules of the ranges that it holds; the rest it never mapped. */
  discardRuns(ranges: GranuleRange[]): void {
    if (ranges.length === 0) return;
    const granularity = ranges[0]!.granularity;
    const mapped = this.split(ranges, true);
    if (mapped.length === 0) return;
    if (this.dma.closed) {
      // The container (or iommufd) is closed: the kernel dropped every mapping with it.
      for (const [first, count] of mapped) this.mark(first, count, false);
      return;
    }
    this.unmap(mapped, granularity);
  }

  /** Unmaps runs it holds, ignoring a failure (the runs then stay held): a best effort. */
  private unmapHeld(runs: Run[], granularity: number): void {
    try {
      this.unmap(runs, granularity);
    } catch {
      // Still held: the block's agreement check will name them.
    }
  }

  private unmap(runs: Run[], granularity: number): void {
    try {
      this.dma.unmapRuns(this.extentsOf(runs, granularity), granularity, { absentOk: true });
    } catch (error) {
      // The batch put back what it had unmapped, except these, which are unmapped now.
      const lost = this.granulesOf(rangePairs((error as { notRestored?: unknown }).notRestored), granularity);
      for (const [first, count] of lost) this.mark(first, count, false);
      throw error;
    }
    for (const [first, count] of runs) this.mark(first, count, false);
  }

  /** The parts of the ranges that are held (or not held), as granule runs. */
  private split(ranges: GranuleRange[], held: boolean): Run[] {
    const runs: Run[] = [];
    for (const range of ranges) {
      const end = Math.min(range.end, this.held.bits);
      const inside = end > range.first ? this.held.runs(range.first, end - range.first, held) : [];
      runs.push(...inside);
      // Past the bitmap's end nothing is held.
      if (!held && range.end > Math.max(range.first, this.held.bits)) {
        const start = Math.max(range.first, this.held.bits);
        const last = runs[runs.length - 1];
        if (last && last[0] + last[1] === start) last[1] += range.end - start;
        else runs.push([start, range.end - start]);
      }
    }
    return runs;
  }

  private mark(first: number, count: number, mapped: boolean): void {
    this.grow(first + count);
    const before = this.held.countSet(first, count);
    this.held.fillRange(first, count, mapped);
    this.heldCount[0] += mapped ? count - before : -before;
  }

  private grow(bits: number): void {
    if (bits <= this.held.bits) return;
    // Sized at register: a granule past the block is a caller's error, not a reason to move
    // the bitmap out of the memory other threads see.
    if (this.heldMemory !== null) throw outOfRange(`listener "${this.name}" serves ${this.held.bits} granules; granule ${bits - 1} is past them`);
    const grown = new PageBitmap(Math.max(bits, this.held.bits * 2));
    for (const [first, count] of this.held.runs(0, this.held.bits, true)) grown.setRange(first, count);
    this.held = grown;
  }

  /** Block granule runs of (iova, size) ranges. */
  private granulesOf(pairs: Array<[bigint, bigint]>, granularity: number): Run[] {
    const g = BigInt(granularity);
    return pairs.map(([iova, size]) => [Number((iova - this.options.gpa) / g), Number(size / g)] as Run);
  }

  private extentsOf(runs: Run[], granularity: number): DmaExtent[] {
    return runs.map(([first, count]) => {
      const range = new GranuleRange(first, count, granularity);
      const offset = range.offsetBigInt;
      return { vaddr: this.options.sharedAddress + offset, iova: this.options.gpa + offset, size: range.sizeBigInt };
    });
  }
}

defineThreadKind('listener', 'vfio-dma', (descriptor) => VfioDmaListener.fromThreadDescriptor(descriptor));
