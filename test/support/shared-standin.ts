// A stand-in "kernel" in SharedArrayBuffers, so that the main thread and Workers converting
// one block see one KVM and one IOMMU: KVM's memory attributes (one byte per page), the
// IOMMU's granule mappings (one byte per page, type1's rules: EEXIST on a double map, an
// unmap removes whole mappings and answers 0 for nothing), and a fault plan any thread
// reads. Every call checks that the calling thread holds the block's lock (the lock word
// is the first Int32 of the block's header): a call outside it is counted as a violation.
// A call can be made to fail (EIO), or to end the calling Worker right after the kernel
// did its part (process.exit in a worker ends the thread alone, no finally runs): a thread
// dying between a kernel call and its record.

import { isMainThread, threadId } from 'node:worker_threads';
import type { GuestMemfd } from '../../lib/kvm/kvm';
import type { BlockKernel } from '../../lib/memory/block-kernel';
import { defineThreadKind, type ThreadDescriptor } from '../../lib/common/thread-kinds';
import type { PageState } from '../../lib/tracker/state-change-channel';
import type { DmaExtent, DmaMapper } from '../../lib/vfio/dma-mapper';

export const PAGE = 4096;

/** Int32 slots of the fault plan and counters. */
export const enum Slot {
  AttrCalls,
  AttrFailAt,
  AttrDieAt,
  MapCalls,
  MapFailAt,
  MapDieAt,
  UnmapCalls,
  UnmapFailAt,
  UnmapDieAt,
  PunchCalls,
  /** Kernel calls made by a thread that did not hold the block's lock. */
  Violations,
  /** How long (spins) each call dwells, to widen the window for a second thread. */
  Dwell,
  Count,
}

function eio(syscall: string): Error {
  return Object.assign(new Error(`EIO: i/o error, ioctl(${syscall})`), { code: 'EIO', errno: -5, syscall });
}

/** The shared memory of one stand-in kernel: plan, attributes and mappings. */
export interface StandinMemory {
  plan: SharedArrayBuffer;
  attributes: SharedArrayBuffer;
  mappings: SharedArrayBuffer;
  /** The block's lock word lives here once the block exists (its header). */
  header: SharedArrayBuffer | null;
}

export class StandinKernelState {
  readonly plan: Int32Array;
  /** 1 = shared, per page. */
  readonly attributes: Uint8Array;
  /** 1 = mapped, per page (iova = gpa). */
  readonly mappings: Uint8Array;
  private lockWord: Int32Array | null;

  constructor(
    readonly memory: StandinMemory,
    readonly gpa: number,
    readonly pages: number,
  ) {
    this.plan = new Int32Array(memory.plan);
    this.attributes = new Uint8Array(memory.attributes);
    this.mappings = new Uint8Array(memory.mappings);
    this.lockWord = memory.header ? new Int32Array(memory.header, 0, 1) : null;
  }

  static create(gpa: number, pages: number): StandinKernelState {
    return new StandinKernelState(
      { plan: new SharedArrayBuffer(Slot.Count * 4), attributes: new SharedArrayBuffer(pages), mappings: new SharedArrayBuffer(pages), header: null },
      gpa,
      pages,
    );
  }

  /** Once the block exists: the lock every call must be made under. */
  watchLock(header: SharedArrayBuffer): void {
    this.memory.header = header;
    this.lockWord = new Int32Array(header, 0, 1);
  }

  /** Counts a call; fails it or ends the thread (after `act`) as the plan says. */
  call(calls: Slot, failAt: Slot, dieAt: Slot, syscall: string, act: () => void): void {
    if (this.lockWord && Atomics.load(this.lockWord, 0) !== threadId + 1) Atomics.add(this.plan, Slot.Violations, 1);
    const n = Atomics.add(this.plan, calls, 1) + 1;
    if (Atomics.load(this.plan, failAt) === n) throw eio(syscall);
    for (let i = 0, spins = this.plan[Slot.Dwell]!; i < spins; i++) Atomics.load(this.plan, Slot.Dwell);
    act();
    if (!isMainThread && Atomics.load(this.plan, dieAt) === n) process.exit(7);
  }

  page(gpa: number | bigint): number {
    return (Number(gpa) - this.gpa) / PAGE;
  }

  /** Runs of pages where `bytes` is 1. */
  static runs(bytes: Uint8Array): Array<[number, number]> {
    const runs: Array<[number, number]> = [];
    for (let i = 0; i < bytes.length; i++) {
      if (!bytes[i]) continue;
      const last = runs[runs.length - 1];
      if (last && last[0] + last[1] === i) last[1]++;
      else runs.push([i, 1]);
    }
    return runs;
  }
}

/** The stand-in's KVM calls for a block, as a BlockKernel (what a worker revives). */
export function standinKernel(state: StandinKernelState): BlockKernel {
  return {
    setMemoryAttributes: (gpa: number, size: number, to: PageState) =>
      state.call(Slot.AttrCalls, Slot.AttrFailAt, Slot.AttrDieAt, 'KVM_SET_MEMORY_ATTRIBUTES', () => state.attributes.fill(to === 'shared' ? 1 : 0, state.page(gpa), state.page(gpa + size))),
    discardShared: () => undefined,
    punchPrivate: () => void Atomics.add(state.plan, Slot.PunchCalls, 1),
  };
}

/** A VM for RamBlock on the main thread, over the stand-in: it describes itself for other threads. */
export class StandinVm {
  readonly closed = false;
  readonly type = 1;
  readonly supportsGuestMemfd = true;
  readonly memoryAttributes = 8n;
  readonly supportsPreFault = false;
  private readonly kernel: BlockKernel;

  constructor(readonly state: StandinKernelState) {
    this.kernel = standinKernel(state);
  }

  createGuestMemfd(size: number): GuestMemfd {
    const kernel = this.kernel;
    return { closed: false, offset: 0n, size: BigInt(size), punchHole: (offset: number, length: number) => kernel.punchPrivate(offset, length), close() {} } as unknown as GuestMemfd;
  }

  setUserMemoryRegion(): void {}
  deleteMemorySlot(): void {}
  preFaultMemory(): void {}

  setMemoryAttributes(gpa: number, size: number, to: PageState): void {
    // The block's creation marks everything private before any lock exists to hold.
    if (this.state.memory.header === null) {
      this.state.attributes.fill(to === 'shared' ? 1 : 0, this.state.page(gpa), this.state.page(gpa + size));
      return;
    }
    this.kernel.setMemoryAttributes(gpa, size, to);
  }

  /** The stand-in's own kind: its memory is the whole of its kernel (no fds to pass). */
  describeForThreads(): ThreadDescriptor {
    return { kind: 'standin', memory: this.state.memory, gpa: this.state.gpa, pages: this.state.pages };
  }
}

/** The stand-in IOMMU as a DmaMapper, type1's rules, one byte per page. */
export class StandinDmaMapper implements DmaMapper {
  readonly backend = 'type1' as const;
  readonly closed = false;

  constructor(readonly state: StandinKernelState) {}

  map(): void {
    throw new Error('unused');
  }

  unmap(): bigint {
    throw new Error('unused');
  }

  mapRuns(runs: DmaExtent[], granule: number): number {
    let made = 0;
    this.state.call(Slot.MapCalls, Slot.MapFailAt, Slot.MapDieAt, 'VFIO_IOMMU_MAP_DMA', () => {
      // All or nothing, as the native batch: a granule mapped already fails the whole batch first.
      for (const run of runs) {
        for (let p = this.state.page(run.iova); p < this.state.page(run.iova + run.size); p++) {
          if (this.state.mappings[p]) throw Object.assign(new Error('EEXIST: file exists, ioctl(VFIO_IOMMU_MAP_DMA)'), { code: 'EEXIST', errno: -17, syscall: 'ioctl(VFIO_IOMMU_MAP_DMA)' });
        }
      }
      for (const run of runs) {
        for (let p = this.state.page(run.iova); p < this.state.page(run.iova + run.size); p++, made++) this.state.mappings[p] = 1;
      }
    });
    void granule;
    return made;
  }

  unmapRuns(runs: DmaExtent[]): bigint {
    let total = 0n;
    this.state.call(Slot.UnmapCalls, Slot.UnmapFailAt, Slot.UnmapDieAt, 'VFIO_IOMMU_UNMAP_DMA', () => {
      for (const run of runs) {
        for (let p = this.state.page(run.iova); p < this.state.page(run.iova + run.size); p++) {
          if (this.state.mappings[p]) total += BigInt(PAGE);
          this.state.mappings[p] = 0;
        }
      }
    });
    return total;
  }

  mappingsAvailable(): null {
    return null;
  }

  toThreadDescriptor(): ThreadDescriptor {
    return { kind: 'standin-dma', memory: this.state.memory, gpa: this.state.gpa, pages: this.state.pages };
  }
}

function revived(d: ThreadDescriptor): StandinKernelState {
  return new StandinKernelState(d.memory as StandinMemory, d.gpa as number, d.pages as number);
}

defineThreadKind('kernel', 'standin', (d) => standinKernel(revived(d)));
defineThreadKind('dma-mapper', 'standin-dma', (d) => new StandinDmaMapper(revived(d)));
