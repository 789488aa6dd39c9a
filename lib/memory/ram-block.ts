// One RAM block of a confidential VM: its shared backing (a memfd mapping), its private
// backing (a guest_memfd), the memslot that joins them at a guest physical address, and
// the tracker of which granules are shared. It owns the fds and the main thread's API
// (async convert, async listeners, repair, shutdown); the conversion itself is
// block-conversion.ts, which a worker's AttachedBlock runs too, over the same state in
// shared memory (block-state.ts), under the block's lock (block-lock.ts). Agreement after a
// failure and repair are block-reconcile.ts.

import { describeDisagreements, type Disagreement } from '../tracker/block-agreement';
import { checkSafeBytes, type Bytes } from '../common/byte-range';
import { ConversionStats } from './conversion-stats';
import { GuestmemError, invalidArgType, invalidArgValue, outOfRange, shutdownIncomplete } from '../common/errors';
import { messageOf as describe } from '../common/errors';
import { GuestMemfd } from '../kvm/kvm';
import type { GuestMemfdSource } from '../kvm/kvm';
import type { MemoryVm } from '../kvm/memory-vm';
import type { Run } from '../tracker/page-bitmap';
import { checkListener, listenerName, type RamDiscardListener } from '../tracker/ram-discard-listener';
import { RamBlockAttributes, type SectionInput, type StateChangeResult } from '../tracker/ram-block-attributes';
import type { GranuleRange } from '../common/byte-range';
import { Serializer } from '../common/serializer';
import { runAsync, runSync } from '../common/steps';
import { SharedMemory, type SharedMemorySource } from '../kvm/shared-memory';
import type { PageState } from '../tracker/state-change-channel';
import { mergeRuns } from './block-reconcile';
import { BlockConversion, formatRuns } from './block-conversion';
import { describeKernel, ownedKernel } from './block-kernel';
import { type Intent } from './block-lock';
import { BlockState } from './block-state';
import { BlockPlug, type PlugResult } from './block-plug';
import { PlugSource, type PlugState } from '../tracker/plug-source';
import { RegistryBroadcast, registrySnapshot, threadDescriptorOf, type BlockDescriptor } from './block-sharing';
import { checkSetUpOptions, markPrivate, type BlockSetUpOptions } from './block-set-up';

/** The constructor's third argument from RamBlock.create: the marking is left to it. */
const MARKED_LATER = Symbol('marked later');

/** Gives a vCPU fd of the block's VM, for vCPU ioctls such as KVM_PRE_FAULT_MEMORY. */
export type VcpuFdProvider = () => number;

/**
 * How {@link GuestMemory.addBlock} makes a block: where, how big, its granule and name; and
 * for a big block, a progress callback and an AbortSignal for the time KVM takes to mark it private.
 */
export interface RamBlockOptions extends BlockSetUpOptions {
  slot: number;
  /** Guest physical address and size: numbers or bigints, kept as numbers (both < 2^53). */
  gpa: Bytes;
  size: Bytes;
  granularity?: number;
  name?: string;
  /**
   * After each conversion, KVM_PRE_FAULT_MEMORY over the converted range on this vCPU, so
   * the guest's first touch does not fault; only where the VM has KVM_CAP_PRE_FAULT_MEMORY,
   * and a failure is ignored (counted in stats.prefaultFailed), as QEMU does.
   */
  prefault?: VcpuFdProvider;
  /**
   * Embedding: use this shared memory (a memfd at an offset, or memory mapped here by
   * address) instead of creating a memfd. Not closed or unmapped unless `close: true`.
   */
  shared?: SharedMemorySource;
  /** Embedding: use this guest_memfd from `offset` instead of creating one. Not closed unless `close: true`. */
  guestMemfd?: GuestMemfdSource;
  /**
   * Embedding: the memslot `slot` already joins these backings at `gpa` (the VMM made it):
   * it is not created, and not deleted on close unless `close: true`.
   */
  memslot?: { adopt: true; close?: boolean };
  /**
   * How long a conversion, repair or registration waits for the block's lock (held by a
   * conversion on another thread) before it fails with ERR_GUESTMEM_LOCK_TIMEOUT; default
   * 10 s. Nothing waits longer.
   */
  lockTimeoutMs?: number;
  /**
   * The plug block size in bytes (virtio-mem's block size): a power of two, a multiple of
   * the granularity, dividing the block's size; default the granularity. The block starts
   * plugged everywhere; plug() and unplug() change it in these units.
   */
  plugBlockSize?: number;
}

export type { Disagreement } from '../tracker/block-agreement';

/**
 * One RAM block: a guest_memfd memslot over a shared memfd, with its tracker. `convert()` is
 * QEMU's kvm_convert_memory, each step undone if a later one fails: to shared, KVM's
 * attributes, then the tracker (listeners map), then the guest_memfd's punch-hole; to
 * private, the tracker first (listeners unmap), then KVM's attributes, then the shared
 * backing's discard (block-conversion.ts says why the order differs).
 */
export class RamBlock implements Disposable {
  readonly name: string;
  readonly slot: number;
  readonly gpa: number;
  readonly size: number;
  readonly shared: SharedMemory;
  readonly guestMemfd: GuestMemfd;
  readonly attributes: RamBlockAttributes;
  /** Which plug blocks the guest has plugged (virtio-mem): listeners hold what is shared and plugged. */
  readonly plugSource: PlugSource;
  /** The main thread's counts and timings; each attached thread keeps its own. */
  readonly stats = new ConversionStats();
  /** What every thread converting the block sees: the lock, KVM's record, the unsettled granules. */
  private readonly state: BlockState;
  private readonly conversion: BlockConversion;
  private readonly plugging: BlockPlug;
  private closed = false;
  private released = false;
  /** Conversions, repairs, registrations and the shutdown: one at a time, in call order. */
  private readonly conversions = new Serializer();
  private pending = 0;
  /** Granules whose state nobody knows since a thread died converting them, until repair(). */
  private inDoubt: Run[] = [];
  /** The threads this block was shared with (share()), told of every registry change. */
  private broadcast: RegistryBroadcast | null = null;
  /** Whether close deletes the memslot: one this block made, or one it was told to. */
  private readonly ownsSlot: boolean;
  /** Whether conversions pre-fault (share() tells other threads to, on their own vCPU). */
  private readonly prefaults: boolean;

  /**
   * Creates the backings and the memslot, then marks the whole block private in KVM, as
   * QEMU does for a guest_memfd block. Until that call returns, KVM sees the new slot as
   * shared (attributes default to 0) while the tracker already says private: nothing may
   * run the guest on the block in that window. If that call fails, the memslot is deleted
   * again: a guest_memfd slot cannot be changed, and one left behind would hold its number.
   * The marking goes in chunks (options.onProgress, options.signal: see BlockSetUpOptions);
   * RamBlock.create lets the event loop run between them.
   */
  constructor(readonly vm: MemoryVm, options: RamBlockOptions, marking?: typeof MARKED_LATER) {
    this.name = options.name ?? `ram-block@0x${Number(options.gpa).toString(16)}`;
    this.attributes = new RamBlockAttributes(options.size, { granularity: options.granularity, name: this.name });
    this.plugSource = new PlugSource(this.attributes.granules, this.attributes.granularity, options.plugBlockSize ?? this.attributes.granularity);
    this.attributes.addSource(this.plugSource);
    this.state = BlockState.create(this.attributes.granules, `RAM block ${this.name}`, options.lockTimeoutMs);
    this.slot = options.slot;
    // Numbers suffice: guest physical addresses stop at 2^52 and a memslot at 2^31 - 1 pages.
    this.gpa = checkSafeBytes(options.gpa, 'block gpa');
    this.size = checkSafeBytes(options.size, 'block size');
    if (options.prefault !== undefined && typeof options.prefault !== 'function') {
      throw invalidArgType(`prefault must be a function returning a vCPU fd, got ${typeof options.prefault}`);
    }
    const prefaultVcpu = options.prefault && vm.supportsPreFault ? options.prefault : null;
    this.prefaults = prefaultVcpu !== null;
    if (this.gpa % this.attributes.granularity !== 0) {
      throw outOfRange(`block gpa must be a non-negative multiple of ${this.attributes.granularity}, got ${options.gpa}`);
    }
    const memslot = options.memslot;
    if (memslot !== undefined && (memslot === null || typeof memslot !== 'object' || memslot.adopt !== true || (memslot.close !== undefined && typeof memslot.close !== 'boolean'))) {
      throw invalidArgType('memslot must be { adopt: true, close?: boolean }');
    }
    // The memslot a VMM made joins its own backings: new ones here would take this block's
    // punch-holes and DMA mappings while the guest used the VMM's memory.
    if (memslot !== undefined && (options.shared === undefined || options.guestMemfd === undefined)) {
      throw invalidArgValue('an adopted memslot needs the backings it joins: give shared and guestMemfd too');
    }
    this.ownsSlot = memslot === undefined || memslot.close === true;
    checkSetUpOptions(options, `adding ${this.name}`);
    this.shared = options.shared !== undefined ? SharedMemory.adopt(options.shared, options.size, this.name) : SharedMemory.create(options.size, this.name);
    try {
      this.guestMemfd = options.guestMemfd !== undefined ? GuestMemfd.adopt(options.guestMemfd, options.size) : vm.createGuestMemfd(options.size);
      try {
        if (memslot === undefined) {
          vm.setUserMemoryRegion({
            slot: this.slot, gpa: this.gpa, size: this.size, userspaceAddress: this.shared.address,
            guestMemfd: this.guestMemfd, guestMemfdOffset: this.guestMemfd.offset,
          });
        }
        try {
          if (marking !== MARKED_LATER) runSync(this.markPrivate(options, true), () => new Error('unreachable: the synchronous marking yields nothing'));
        } catch (error) {
          if (memslot === undefined) this.deleteSlotAfter(error);
          throw error;
        }
      } catch (error) {
        this.guestMemfd.close();
        throw error;
      }
    } catch (error) {
      this.shared.close();
      throw error;
    }
    this.conversion = new BlockConversion({
      name: this.name, gpa: this.gpa, tracker: this.attributes, state: this.state, stats: this.stats,
      kernel: ownedKernel(vm, this.shared, this.guestMemfd),
      prefault: prefaultVcpu ? (gpa, size) => vm.preFaultMemory(prefaultVcpu(), gpa, size) : null,
    });
    this.plugging = new BlockPlug({
      name: this.name, gpa: this.gpa, tracker: this.attributes, plug: this.plugSource, state: this.state,
      kernel: ownedKernel(vm, this.shared, this.guestMemfd), reconciler: this.conversion.reconciler,
    });
    this.attributes.registryGuard = {
      enter: (kind, section) => this.enterRegistryChange(kind, section),
      exit: (changed) => this.exitRegistryChange(changed),
    };
  }

  /**
   * A block made as the constructor makes it, with the event loop running between the chunks
   * of its marking, so that `options.signal` can abort it from a timer or a signal handler.
   * An abort or failure leaves nothing made: KVM's attributes back to shared, the memslot
   * deleted (unless adopted), the backings closed.
   */
  static async create(vm: MemoryVm, options: RamBlockOptions): Promise<RamBlock> {
    const block = new RamBlock(vm, options, MARKED_LATER);
    try {
      await runAsync(block.markPrivate(options, false));
    } catch (error) {
      try {
        if (options.memslot === undefined) block.deleteSlotAfter(error);
      } finally {
        block.closed = true;
        block.released = true;
        block.state.markClosed();
        block.guestMemfd.close();
        block.shared.close();
      }
      throw error;
    }
    return block;
  }

  private markPrivate(options: RamBlockOptions, sync: boolean) {
    return markPrivate(this.vm, this.gpa, this.size, this.attributes.granularity, options, `adding ${this.name}`, sync);
  }

  private deleteSlotAfter(cause: unknown): void {
    try {
      this.vm.deleteMemorySlot(this.slot);
    } catch (error) {
      throw new GuestmemError(
        'ERR_GUESTMEM_ROLLBACK_FAILED',
        `${describe(cause)}; deleting memslot ${this.slot} again also failed, it stays in the VM: ${describe(error)}`,
        { cause, slot: this.slot, errors: [error] },
      );
    }
  }

  /** True when [gpa, gpa + size) lies in this block. */
  contains(gpa: Bytes, size: Bytes): boolean {
    // Numbers compare as they are (every conversion by a guest asks this): a sum past 2^53
    // rounds up, never below the block's end, which is below 2^53.
    if (Number.isSafeInteger(gpa) && Number.isSafeInteger(size)) return (gpa as number) >= this.gpa && (gpa as number) + (size as number) <= this.gpa + this.size;
    return BigInt(gpa) >= BigInt(this.gpa) && BigInt(gpa) + BigInt(size) <= BigInt(this.gpa + this.size);
  }

  get sharedPages(): number {
    return this.attributes.sharedGranules;
  }

  get privatePages(): number {
    return this.attributes.privateGranules;
  }

  /** Runs of granules refused until repair(), ascending; empty when everything agrees. */
  get unsettledRuns(): Run[] {
    return this.state.unsettledRuns();
  }

  /**
   * Runs of granules in doubt since a thread died converting them (recoverFrom), ascending:
   * refused (they are unsettled too) until repair() forgets what KVM and the listeners hold
   * there and derives it again from the tracker.
   */
  get doubtfulRuns(): Run[] {
    return this.inDoubt.map(([f, c]) => [f, c] as Run);
  }

  /** The threadId of the thread converting (or repairing, registering on) this block now, or null. */
  get lockHolder(): number | null {
    return this.state.lock.holder;
  }

  /** KVM's attributes as this block last set them: runs of shared granules. */
  kvmRuns(state: PageState = 'shared'): Run[] {
    return this.state.kvmShared.runs(0, this.state.kvmShared.bits, state === 'shared');
  }

  /**
   * Registers a listener on a section (default the whole block), replaying what is shared
   * now; after the conversions asked for before it, under the block's lock. Once the block
   * is shared with other threads, only a listener that can run there is taken (else
   * ERR_GUESTMEM_ASYNC_LISTENER), and every such thread converts with it from then on.
   */
  register(listener: RamDiscardListener, section: SectionInput = { offset: 0, size: this.size }): Promise<void> {
    // Called from inside a listener of this block: the tracker refuses it at once.
    if (this.attributes.inNotification) return this.attributes.register(listener, section);
    checkListener(listener);
    this.attributes.sectionRange(section);
    if (this.broadcast !== null) {
      const refusal = threadDescriptorOf(listener);
      if (refusal instanceof GuestmemError) throw refusal;
    }
    return this.serialized(() => this.attributes.register(listener, section));
  }

  /** Unregisters a listener, discarding what it holds (a VFIO listener unmaps its DMA); after the conversions asked for before it. */
  unregister(listener: RamDiscardListener): Promise<void> {
    if (this.attributes.inNotification || listener === null || (typeof listener !== 'object' && typeof listener !== 'function')) return this.attributes.unregister(listener);
    return this.serialized(() => this.attributes.unregister(listener));
  }

  /**
   * The lock around a registry change of a shared block: no thread converts while the
   * listeners change. A block never shared has no other thread, and its asynchronous
   * listeners may keep a change pending across turns of the event loop: it takes no lock.
   */
  private enterRegistryChange(kind: 'register' | 'unregister', section: GranuleRange | null): void {
    if (this.broadcast === null) return;
    this.state.lock.acquire(kind, section?.first ?? 0, section?.count ?? 0, null);
  }

  /** Tells every thread of the new registry before the lock goes: the message first, then the generation. */
  private exitRegistryChange(changed: boolean): void {
    if (this.broadcast === null) return;
    try {
      if (changed) {
        this.broadcast.publish(registrySnapshot(this.attributes, this.state.generation + 1));
        this.state.bumpGeneration();
      }
    } finally {
      this.state.lock.release();
    }
  }

  /**
   * A descriptor of this block for another thread: attachBlock(descriptor) there gives a
   * converter that runs the same conversion as convertSync, over the same state, under the
   * same lock. Structured-cloneable, with a MessagePort to transfer (`transferList:
   * [descriptor.port]`); one per thread. Refused with ERR_GUESTMEM_ASYNC_LISTENER naming a
   * listener that can only run on the main thread (from then on, such listeners are
   * refused at register), ERR_GUESTMEM_UNSUPPORTED for a VM in another process,
   * ERR_GUESTMEM_BUSY while a registration or repair of the block is in flight.
   */
  share(): BlockDescriptor {
    if (this.closed) throw this.closedError();
    this.checkOpen();
    const lock = this.state.lock;
    if (lock.heldHere || this.pending > 0) {
      throw new GuestmemError('ERR_GUESTMEM_BUSY', `share on ${this.name}: a conversion, repair or registration is in flight; await it first`);
    }
    const kernel = describeKernel(this.vm, this.shared, this.guestMemfd);
    lock.acquire('share', 0, 0, null);
    try {
      const registry = registrySnapshot(this.attributes, this.state.generation);
      this.broadcast ??= new RegistryBroadcast();
      return {
        kind: 'guestmem-ram-block',
        name: this.name,
        gpa: this.gpa,
        size: this.size,
        granularity: this.attributes.granularity,
        granules: this.attributes.granules,
        lockTimeoutMs: lock.timeoutMs,
        prefaults: this.prefaults,
        plugBlockSize: this.plugSource.blockSize,
        memory: { ...this.state.memory, tracker: this.attributes.memory, plug: this.plugSource.memory },
        kernel,
        registry,
        port: this.broadcast.open(),
      };
    } finally {
      lock.release();
    }
  }

  /**
   * After a thread that converted this block died (a Worker's 'exit'), takes the block's
   * lock over if that thread still held it: the tracker's shared count is counted again,
   * and the granules it was converting are put in doubt (refused, ERR_GUESTMEM_CONVERSION_
   * REJECTED, until repair()). Returns what the thread was doing, or null (nothing done)
   * when it did not hold the lock. Call it only for a thread that is gone, with the id it
   * had (a Worker's threadId reads -1 once it has exited: keep it from the start).
   */
  recoverFrom(threadId: number): Intent | null {
    const lock = this.state.lock;
    const intent = lock.takeOverFrom(threadId);
    if (intent === null) return null;
    try {
      this.attributes.recount();
      if (intent.count > 0) {
        this.inDoubt = mergeRuns([...this.inDoubt, [intent.first, intent.count]]);
        this.state.markUnsettled([[intent.first, intent.count]]);
      }
    } finally {
      lock.release();
    }
    return intent;
  }

  /**
   * Converts [gpa, gpa + size) of this block: KVM attributes, the tracker's state change
   * (listeners map or unmap) and the discard of the backing that was left, in the order
   * CONVERSION ORDER gives (block-conversion.ts). Refused before any step
   * (ERR_GUESTMEM_CONVERSION_REJECTED, or a RangeError for a bad range) changes nothing. A
   * failure at a step undoes the earlier ones: ERR_GUESTMEM_CONVERSION_FAILED when
   * everything agrees afterwards (`applied` lists any runs left converted because their
   * undo failed, consistently), ERR_GUESTMEM_ROLLBACK_FAILED with `disagreements` when not.
   * Conversions run one at a time, in call order, and take turns with other threads'
   * conversions of the block under its lock; when none is in flight and every listener is
   * synchronous, this one is done before convert returns (as convertSync does) and the
   * promise has settled.
   */
  convert(gpa: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult> {
    // Asked for after close() or shutdown(): refused; asked for before: they still run.
    if (this.closed) return Promise.reject(this.closedError());
    if (this.pending === 0 && this.attributes.canChangeSync) {
      try {
        return Promise.resolve(this.convertNow(gpa, size, to));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.serialized(async () => {
      if (this.attributes.canChangeSync) return this.convertNow(gpa, size, to);
      this.checkOpen();
      return this.conversion.convertAsync(this.conversion.range(gpa, size, to), to);
    });
  }

  /**
   * True when convertSync may be called now: no conversion, repair or shutdown of this
   * block in flight on this thread, no operation of its tracker queued, every listener
   * synchronous (`synchronous: true`, as VfioDmaListener and RecordingListener are) and the
   * block open.
   */
  get canConvertSync(): boolean {
    return !this.closed && this.pending === 0 && this.attributes.canChangeSync;
  }

  /**
   * convert, done before it returns: the same steps, order, undo and errors, with no promise.
   * For a VMM loop handling an exit. It waits (at most lockTimeoutMs) while another thread
   * converts the block.
   *
   * Contract: call it only when `canConvertSync` is true; otherwise it throws, changing
   * nothing, ERR_GUESTMEM_CLOSED (the block is closed), ERR_GUESTMEM_BUSY (a conversion,
   * repair, shutdown, register, unregister or replay is in flight: await it, or use
   * convert) or ERR_GUESTMEM_ASYNC_LISTENER (a listener does not declare `synchronous:
   * true`: use convert). Every other outcome is convert's, thrown instead of rejected:
   * ERR_GUESTMEM_CONVERSION_REJECTED or a RangeError/TypeError before any step, and
   * ERR_GUESTMEM_CONVERSION_FAILED or ERR_GUESTMEM_ROLLBACK_FAILED after one;
   * ERR_GUESTMEM_LOCK_TIMEOUT when another thread held the block for longer than the bound.
   * It must not be called from inside a listener of this block (ERR_GUESTMEM_REENTRANT_CALL).
   */
  convertSync(gpa: Bytes, size: Bytes, to: PageState): StateChangeResult {
    if (this.closed) throw this.closedError();
    if (this.pending !== 0) {
      throw new GuestmemError('ERR_GUESTMEM_BUSY', `convertSync on ${this.name}: a conversion, repair or shutdown is still in flight; await it first, or use convert`);
    }
    const refusal = this.attributes.canChangeSync ? null : this.attributes.syncRefusal('convertSync');
    if (refusal) throw refusal;
    return this.convertNow(gpa, size, to);
  }

  /**
   * The synchronous conversion (block-conversion.ts). It counts as in flight while it runs:
   * code it calls out to (a diagnostics subscriber, a delegated VM's VMM, the pre-fault's
   * vCPU provider) that converts or closes this block is queued behind it, never run in the
   * middle of it (which could leave a device mapping a page the outer conversion then
   * makes private).
   */
  private convertNow(gpa: Bytes, size: Bytes, to: PageState): StateChangeResult {
    this.checkOpen();
    this.pending++;
    try {
      return this.conversion.convertSync(gpa, size, to);
    } finally {
      this.pending--;
    }
  }

  /**
   * Plugs [gpa, gpa + size) (whole plug blocks): the listeners populate the parts that are
   * shared; KVM's attributes stay. After the conversions asked for before it. Bad input is
   * a RangeError/TypeError and changes nothing; a failure rolls back as convert's does
   * (ERR_GUESTMEM_CONVERSION_FAILED, or ERR_GUESTMEM_ROLLBACK_FAILED with `disagreements`).
   */
  plug(gpa: Bytes, size: Bytes): Promise<PlugResult> {
    return this.changePlug(gpa, size, 'plugged');
  }

  /**
   * Unplugs [gpa, gpa + size) (whole plug blocks): the listeners discard what they held of
   * it (a VFIO listener unmaps), then the memfd and the guest_memfd give the memory back
   * (punch-hole); KVM's attributes stay as the guest set them. Errors as plug's.
   */
  unplug(gpa: Bytes, size: Bytes): Promise<PlugResult> {
    return this.changePlug(gpa, size, 'unplugged');
  }

  /** plug, done before it returns; only while canConvertSync (else it throws as convertSync does). */
  plugSync(gpa: Bytes, size: Bytes): PlugResult {
    return this.changePlugSync(gpa, size, 'plugged');
  }

  /** unplug, done before it returns; only while canConvertSync. */
  unplugSync(gpa: Bytes, size: Bytes): PlugResult {
    return this.changePlugSync(gpa, size, 'unplugged');
  }

  /** Runs of granules in a plug state, ascending. */
  plugRuns(state: PlugState = 'plugged'): Run[] {
    return this.plugSource.runs(state);
  }

  private changePlug(gpa: Bytes, size: Bytes, to: PlugState): Promise<PlugResult> {
    if (this.closed) return Promise.reject(this.closedError());
    if (this.pending === 0 && this.attributes.canChangeSync) {
      try {
        return Promise.resolve(this.changePlugSync(gpa, size, to));
      } catch (error) {
        return Promise.reject(error);
      }
    }
    return this.serialized(async () => {
      this.checkOpen();
      const range = this.plugging.range(gpa, size, to);
      return runAsync(this.plugging.steps(range, to, false));
    });
  }

  private changePlugSync(gpa: Bytes, size: Bytes, to: PlugState): PlugResult {
    if (this.closed) throw this.closedError();
    if (this.pending !== 0) {
      throw new GuestmemError('ERR_GUESTMEM_BUSY', `${to === 'plugged' ? 'plug' : 'unplug'}Sync on ${this.name}: a conversion, repair or shutdown is still in flight; await it first`);
    }
    const refusal = this.attributes.canChangeSync ? null : this.attributes.syncRefusal(`${to === 'plugged' ? 'plug' : 'unplug'}Sync`);
    if (refusal) throw refusal;
    this.checkOpen();
    const range = this.plugging.range(gpa, size, to);
    this.pending++;
    try {
      return runSync(this.plugging.steps(range, to, true), () => new GuestmemError('ERR_GUESTMEM_ASYNC_LISTENER', `a listener of ${this.name} returned a promise during a synchronous plug`));
    } finally {
      this.pending--;
    }
  }

  private serialized<T>(op: () => Promise<T>): Promise<T> {
    this.pending++;
    return this.conversions.run(async () => {
      try {
        return await op();
      } finally {
        this.pending--;
      }
    });
  }

  /**
   * Re-derives KVM's attributes and every listener's mappings from the tracker's bitmap,
   * over the whole block (unmapping first; granules in doubt forgotten and derived again),
   * and accepts conversions of the granules that agree again; under the block's lock.
   * Resolves with the granules it found in disagreement or in doubt; rejects with
   * ERR_GUESTMEM_REPAIR_FAILED and `disagreements` for what still disagrees.
   */
  repair(): Promise<{ repaired: number }> {
    if (this.closed) return Promise.reject(this.closedError());
    return this.serialized(async () => {
      this.checkOpen();
      const lock = this.state.lock;
      lock.acquire('repair', 0, this.attributes.granules, null);
      try {
        const inDoubt = this.inDoubt;
        const { found, errors, left } = await runAsync(this.conversion.reconciler.repair(inDoubt));
        this.inDoubt = [];
        this.state.clearUnsettled();
        this.state.markUnsettled(left.map((d) => [d.first, d.count]));
        if (left.length > 0) {
          throw new GuestmemError(
            'ERR_GUESTMEM_REPAIR_FAILED',
            `repairing ${this.name} failed (${errors.map(describe).join('; ')}); still in disagreement: ${describeDisagreements(left, this.attributes.granularity)}`,
            { errors, disagreements: left },
          );
        }
        const doubtful = inDoubt.reduce((sum, [, count]) => sum + count, 0);
        return { repaired: Math.max(doubtful, found.reduce((sum, d) => sum + d.count, 0)) };
      } finally {
        lock.release();
      }
    });
  }

  /** What disagrees now over the whole block (empty when KVM, tracker and listeners agree). */
  disagreements(): Disagreement[] {
    return this.conversion.reconciler.disagreements();
  }

  private checkOpen(): void {
    if (this.released || this.shared.closed || this.guestMemfd.closed) throw this.closedError();
  }

  private closedError(): GuestmemError {
    return new GuestmemError('ERR_GUESTMEM_CLOSED', `RAM block ${this.name} is closed`);
  }

  /**
   * After the conversions already asked for: unregisters every listener (a VFIO listener
   * unmaps what it holds), then deletes the memslot and closes both backings. It goes on
   * past failures: a listener that fails to unregister has what it still holds unmapped
   * directly where it can say what that is; what could not be released is reported at the
   * end in one ERR_GUESTMEM_SHUTDOWN_INCOMPLETE (a GuestmemError; `errors` holds each).
   */
  shutdown(): Promise<void> {
    if (this.closed) return this.conversions.run(async () => undefined);
    this.closed = true;
    return this.conversions.run(async () => {
      const errors: unknown[] = [];
      for (const listener of this.attributes.listeners) {
        try {
          await this.attributes.unregister(listener);
        } catch (error) {
          const left = await this.releaseHoldings(listener);
          if (left === null || left.length > 0) {
            errors.push(new GuestmemError(
              'ERR_GUESTMEM_LISTENER_FAILED',
              `listener "${listenerName(listener)}" failed to unregister from ${this.name}: ${describe(error)}` +
                (left ? `; it still holds granules ${formatRuns(left)}` : ''),
              { cause: error, listener: listenerName(listener), held: left },
            ));
          }
        }
      }
      errors.push(...this.release());
      if (errors.length > 0) throw shutdownIncomplete(`RAM block ${this.name}`, errors);
    });
  }

  /** Discards what a listener holds, outside the tracker; the runs still held, or null if it cannot say. */
  private async releaseHoldings(listener: RamDiscardListener): Promise<Run[] | null> {
    if (!listener.heldRuns) return null;
    const held = listener.heldRuns(0, this.attributes.granules);
    if (held.length > 0) await runAsync(this.conversion.reconciler.tell(listener, 'discard', held, []));
    return listener.heldRuns(0, this.attributes.granules);
  }

  /** Shuts the block down: listeners first, then the memslot and backings (`await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }

  /**
   * Deletes the memslot and closes both backings; after a conversion in flight, if there is
   * one (conversions asked for after close() are refused, on every thread). It cannot wait
   * for listeners: DMA mappings they still hold stay (pinning the shared pages) until they
   * are unregistered or their container closes, so prefer shutdown().
   */
  close(): void {
    // Closed but not released: the wait for another thread's conversion ran out (that thread
    // died holding the lock); after recoverFrom, close() releases at last.
    if (this.closed && !(this.pending === 0 && !this.released && this.state.closed)) return;
    this.closed = true;
    if (this.pending === 0) {
      const errors = this.release();
      if (errors.length > 0) throw errors.length === 1 ? errors[0] : shutdownIncomplete(`RAM block ${this.name}`, errors);
      return;
    }
    void this.conversions.run(async () => {
      const errors = this.release();
      if (errors.length > 0) process.emitWarning(shutdownIncomplete(`RAM block ${this.name}`, errors));
    });
  }

  /**
   * Marks the block closed for every thread, then waits (bounded) for a conversion another
   * thread has in flight, so that no thread uses the fds once they are closed (a wait that
   * runs out throws ERR_GUESTMEM_LOCK_TIMEOUT, and nothing is closed yet); then the
   * memslot, then both fds: each is tried whatever happened to the one before.
   */
  private release(): unknown[] {
    if (this.released) return [];
    this.state.markClosed();
    if (this.broadcast !== null) {
      // A thread converting now finishes first; one that comes later sees the block closed.
      this.state.lock.acquire('close', 0, 0, null);
      this.state.lock.release();
      this.broadcast.close();
    }
    this.released = true;
    const errors: unknown[] = [];
    for (const step of [
      () => {
        if (this.ownsSlot && !this.vm.closed) this.vm.deleteMemorySlot(this.slot);
      },
      () => this.guestMemfd.close(),
      () => this.shared.close(),
    ]) {
      try {
        step();
      } catch (error) {
        errors.push(error);
      }
    }
    return errors;
  }

  /**
   * What `using` calls: close(), for a block without listeners. A block with listeners still
   * registered refuses (ERR_GUESTMEM_LISTENERS_REGISTERED, nothing closed): a synchronous
   * dispose cannot unregister them, and closing under them would leave their DMA mappings
   * pinning the block's pages. `await using` (shutdown()) is the teardown that unregisters them.
   */
  [Symbol.dispose](): void {
    const refusal = this.disposeRefusal();
    if (refusal) throw refusal;
    this.close();
  }

  /** @internal Why a synchronous dispose would be unsafe now (listeners registered on an open block), or null. */
  disposeRefusal(): GuestmemError<'ERR_GUESTMEM_LISTENERS_REGISTERED'> | null {
    if (this.closed) return null;
    const listeners = this.attributes.listeners.map(listenerName);
    if (listeners.length === 0) return null;
    return new GuestmemError(
      'ERR_GUESTMEM_LISTENERS_REGISTERED',
      `${this.name} still has listeners registered (${listeners.map((name) => `"${name}"`).join(', ')}): a synchronous dispose cannot unregister them, ` +
        'and closing under them would leave their DMA mappings pinning its pages; use `await using` (Symbol.asyncDispose) or await shutdown(), or close() to leave them',
      { listeners },
    );
  }
}
