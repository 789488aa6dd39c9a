// What every thread converting one RAM block must see alike, in SharedArrayBuffers: the lock
// and its intent, the block's record of KVM's attributes, the granules refused until
// repair(), whether the block is closed, and the generation of its listener registry. The
// tracker's bitmap and shared count live in the tracker's own memory (RamBlockAttributes);
// what a VFIO listener holds, in the listener's. Everything else (stats, the listeners'
// objects, the queue of the main thread's asynchronous calls) is each thread's own.

import { BlockLock, LOCK_BYTES } from './block-lock';
import { PageBitmap, type Run } from '../tracker/page-bitmap';

/** The SharedArrayBuffers of a block's state, as a descriptor carries them to a thread. */
export interface BlockMemory {
  /** The lock, its intent, the flags and the registry's generation. */
  header: SharedArrayBuffer;
  /** KVM's memory attributes as the block set them (1 = shared). */
  kvmShared: SharedArrayBuffer;
  /** Granules refused until repair(). */
  unsettled: SharedArrayBuffer;
}

/** Int32 slots after the lock's memory. */
const GENERATION = LOCK_BYTES / 4;
const FLAGS = GENERATION + 1;
const HEADER_BYTES = LOCK_BYTES + 8;

const CLOSED = 1;
/** Set while some granule may be unsettled: a conversion skips the check of its range otherwise. */
const MAY_BE_UNSETTLED = 2;

/** A block's shared state, over memory made here (create) or carried from another thread. */
export class BlockState {
  readonly lock: BlockLock;
  /**
   * KVM's memory attributes as this block set them (1 = shared). 6.12 cannot read them
   * back; a KVM_SET_MEMORY_ATTRIBUTES that fails changes nothing (KVM reserves its xarray
   * entries before it stores any), so this record follows every call that succeeded.
   */
  readonly kvmShared: PageBitmap;
  /** Granules that disagree (a failed rollback) or are in doubt (a dead thread): refused until repair(). */
  readonly unsettled: PageBitmap;
  private readonly words: Int32Array;

  constructor(
    readonly memory: BlockMemory,
    readonly granules: number,
    name: string,
    lockTimeoutMs?: number,
  ) {
    this.lock = new BlockLock(memory.header, 0, name, lockTimeoutMs);
    this.words = new Int32Array(memory.header, 0, HEADER_BYTES / 4);
    this.kvmShared = new PageBitmap(granules, { buffer: memory.kvmShared });
    this.unsettled = new PageBitmap(granules, { buffer: memory.unsettled });
  }

  /** Fresh memory for a block of `granules` granules: unlocked, open, every granule private in the record, none unsettled. */
  static create(granules: number, name: string, lockTimeoutMs?: number): BlockState {
    const bytes = PageBitmap.bytesFor(granules);
    const memory: BlockMemory = {
      header: PageBitmap.sharedMemory(HEADER_BYTES, 'a block lock'),
      kvmShared: PageBitmap.sharedMemory(bytes, 'a record of KVM attributes'),
      unsettled: PageBitmap.sharedMemory(bytes, 'an unsettled-granule bitmap'),
    };
    return new BlockState(memory, granules, name, lockTimeoutMs);
  }

  get closed(): boolean {
    return (Atomics.load(this.words, FLAGS) & CLOSED) !== 0;
  }

  /** Marks the block closed for every thread: taken under the lock, so no conversion is half-way. */
  markClosed(): void {
    Atomics.or(this.words, FLAGS, CLOSED);
  }

  /** False while no granule is unsettled: a conversion then skips the check of its range. */
  get mayBeUnsettled(): boolean {
    return (this.words[FLAGS]! & MAY_BE_UNSETTLED) !== 0;
  }

  /** Refuses conversions of these runs until repair() (under the lock). */
  markUnsettled(runs: ReadonlyArray<Readonly<Run>>): void {
    for (const [first, count] of runs) this.unsettled.setRange(first, count);
    if (runs.length > 0) Atomics.or(this.words, FLAGS, MAY_BE_UNSETTLED);
  }

  /** Accepts conversions of every granule again (repair, under the lock). */
  clearUnsettled(): void {
    this.unsettled.clearRange(0, this.granules);
    Atomics.and(this.words, FLAGS, ~MAY_BE_UNSETTLED);
  }

  /** Runs of unsettled granules in [first, first + count), ascending. */
  unsettledRuns(first = 0, count = this.granules): Run[] {
    return this.unsettled.runs(first, count, true);
  }

  /** The listener registry's generation: bumped (under the lock) by each register and unregister. */
  get generation(): number {
    return Atomics.load(this.words, GENERATION);
  }

  bumpGeneration(): number {
    return Atomics.add(this.words, GENERATION, 1) + 1;
  }
}
