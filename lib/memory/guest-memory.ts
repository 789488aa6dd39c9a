// The guest memory of one VM: its RAM blocks, each with its own memslot, and conversions
// by guest physical address. A range must lie inside one block: QEMU converts per RAM
// block too, and a range that spans two would need two transactions.

import { checkSpan, type Bytes } from '../common/byte-range';
import { GuestmemError, invalidArgType, invalidArgValue, outOfRange, shutdownIncomplete } from '../common/errors';
import { describeValue } from '../common/validators';
import { KVM_MEMORY_ATTRIBUTE_PRIVATE } from '../kvm/kvm-constants';
import type { Vm } from '../kvm/kvm';
import type { MemoryVm } from '../kvm/memory-vm';
import { RamBlock, type RamBlockOptions, type VcpuFdProvider } from './ram-block';
import type { StateChangeResult } from '../tracker/ram-block-attributes';
import type { BlockDescriptor } from './block-sharing';
import type { PageState } from '../tracker/state-change-channel';

/** How a GuestMemory numbers its memslots and pre-faults conversions. */
export interface GuestMemoryOptions {
  /** Every block pre-faults what it converts on that vCPU (see RamBlockOptions). */
  prefault?: VcpuFdProvider;
  /**
   * The memslot numbers blocks may take, in order (an embedding VMM keeps the others for
   * itself); a block past the list is refused. Default: from `firstSlot` up.
   */
  slots?: readonly number[];
  /** The first memslot number to use, counting up (default 0); not with `slots`. */
  firstSlot?: number;
}

/** A block of GuestMemory.addBlock: where, how big, and for an embedding VMM what it already has. */
export type AddBlockOptions = Omit<RamBlockOptions, 'slot' | 'prefault'> & {
  /** This memslot number rather than the next free one (an adopted memslot's number). */
  slot?: number;
};

function checkSlot(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > 0xffff) {
    throw outOfRange(`${what} must be a memslot number in 0..65535, got ${String(value)}`);
  }
  return value;
}

/**
 * The guest memory of one VM: its RAM blocks, each with a memslot of its own, and conversions
 * by guest physical address. Dispose of it (or `close()`) before the VM and devices.
 */
export class GuestMemory<V extends MemoryVm = Vm> implements Disposable {
  readonly blocks: RamBlock[] = [];
  /** Slot numbers given out, and those of blocks whose memslot KVM kept after a failure. */
  private readonly usedSlots = new Set<number>();
  private readonly slotList: readonly number[] | null;
  /** The ranges of blocks addBlockAsync is making: no other block may overlap them meanwhile. */
  private readonly adding: Array<{ gpa: bigint; size: bigint }> = [];
  private nextSlot: number;

  /**
   * Checks first that the VM can have private memory: guest_memfd and the PRIVATE memory
   * attribute, which KVM gives SW-protected, SNP and TDX VMs but not default ones.
   */
  constructor(readonly vm: V, private readonly options: GuestMemoryOptions = {}) {
    if (vm === null || typeof vm !== 'object' || typeof vm.setMemoryAttributes !== 'function' || typeof vm.createGuestMemfd !== 'function') {
      throw invalidArgType(`the VM must be a Vm or a DelegatedVm, got ${describeValue(vm)}`);
    }
    if (options === null || typeof options !== 'object') throw invalidArgType(`GuestMemory options must be an object, got ${describeValue(options)}`);
    if (options.slots !== undefined && !Array.isArray(options.slots as unknown)) throw invalidArgType(`slots must be an array of memslot numbers, got ${describeValue(options.slots)}`);
    if (options.prefault !== undefined && typeof options.prefault !== 'function') throw invalidArgType(`prefault must be a function returning a vCPU fd, got ${describeValue(options.prefault)}`);
    if (options.slots !== undefined && options.firstSlot !== undefined) throw outOfRange('give slots or firstSlot, not both');
    this.slotList = options.slots === undefined ? null : [...options.slots].map((slot, i) => checkSlot(slot, `slots[${i}]`));
    if (this.slotList && new Set(this.slotList).size !== this.slotList.length) throw outOfRange(`slots must not repeat a number: ${this.slotList.join(', ')}`);
    this.nextSlot = options.firstSlot === undefined ? 0 : checkSlot(options.firstSlot, 'firstSlot');
    if (!vm.supportsGuestMemfd || (vm.memoryAttributes & KVM_MEMORY_ATTRIBUTE_PRIVATE) === 0n) {
      throw new GuestmemError(
        'ERR_GUESTMEM_UNSUPPORTED',
        `this VM (type ${vm.type < 0 ? 'unknown' : vm.type}) has ${vm.supportsGuestMemfd ? '' : 'no guest_memfd and '}no KVM_MEMORY_ATTRIBUTE_PRIVATE: ` +
          "create it as 'sw-protected' (or 'snp', 'tdx'); guestmem probe says what this host supports",
      );
    }
  }

  /** The memslot number the next block takes, without taking it; null when none is left. */
  get nextFreeSlot(): number | null {
    if (this.slotList) return this.slotList.find((slot) => !this.usedSlots.has(slot)) ?? null;
    let slot = this.nextSlot;
    while (this.usedSlots.has(slot)) slot++;
    return slot <= 0xffff ? slot : null;
  }

  /**
   * Adds a RAM block: a memslot at `gpa` of `size` bytes (numbers or bigints) backed by a new
   * guest_memfd (private pages) and a shared memfd, all private in the tracker and in KVM
   * once this returns, as QEMU starts a confidential guest's RAM. With `shared`, `guestMemfd`
   * and `memslot` it adopts what an embedding VMM made instead (see RamBlockOptions).
   *
   * @param options `gpa` (a multiple of the page size), `size` (a multiple of the
   *   granularity), `granularity` (bytes per tracked granule, a power of two, default 4096),
   *   `name` (in errors and on the state-change channel), `slot` (this memslot number rather
   *   than the next free one), and for an embedding VMM `shared`, `guestMemfd`, `memslot`
   * @returns the block, owned by this memory (closed with it)
   * @throws RangeError (`ERR_OUT_OF_RANGE`) for a range that is unaligned, empty or overlaps
   *   another block, or no memslot number left, before any syscall; a Node-style system
   *   error if KVM refuses; an AbortError (`ABORT_ERR`) when `signal` aborts (seen between
   *   chunks: from `onProgress`, or before the call; addBlockAsync hears a timer's too)
   */
  addBlock(options: AddBlockOptions): RamBlock {
    const slot = this.reserve(options);
    let block: RamBlock;
    try {
      block = new RamBlock(this.vm, { ...options, slot, prefault: this.options.prefault });
    } catch (error) {
      this.unreserve(slot, options, error);
      throw error;
    }
    return this.admit(block, options);
  }

  /**
   * addBlock with the event loop running while KVM marks the block private (over a minute
   * for 256 GiB in the harness VM): `onProgress` hears of each GiB, and `signal` aborts it
   * from a timer or a signal handler, leaving nothing made (KVM's attributes back to shared,
   * no memslot, no backings; the slot number free again). Another block may not take its
   * range or memslot meanwhile.
   *
   * @returns the block, owned by this memory (closed with it)
   * @throws (as a rejected promise) what addBlock throws; an AbortError (`ABORT_ERR`, the
   *   signal's reason as its cause) when `signal` aborts
   */
  async addBlockAsync(options: AddBlockOptions): Promise<RamBlock> {
    const slot = this.reserve(options);
    const range = { gpa: BigInt(options.gpa), size: BigInt(options.size) };
    this.adding.push(range);
    let block: RamBlock;
    try {
      block = await RamBlock.create(this.vm, { ...options, slot, prefault: this.options.prefault });
    } catch (error) {
      this.unreserve(slot, options, error);
      throw error;
    } finally {
      this.adding.splice(this.adding.indexOf(range), 1);
    }
    return this.admit(block, options);
  }

  /** Checks a block's options against the blocks there are and picks its slot, held until unreserve or admit. */
  private reserve(options: AddBlockOptions): number {
    if (options === null || typeof options !== 'object') throw invalidArgType(`block options must be an object, got ${describeValue(options)}`);
    const [gpa, size] = checkSpan(options.gpa, options.size, 'block');
    const adding = this.adding.find((b) => gpa < b.gpa + b.size && b.gpa < gpa + size);
    if (adding) throw outOfRange(`block [0x${options.gpa.toString(16)}, +0x${options.size.toString(16)}) overlaps a block being added at 0x${adding.gpa.toString(16)}`);
    const overlapping = this.blocks.find((b) => gpa < BigInt(b.gpa + b.size) && BigInt(b.gpa) < gpa + size);
    if (overlapping) {
      throw outOfRange(`block [0x${options.gpa.toString(16)}, +0x${options.size.toString(16)}) overlaps ${overlapping.name}`);
    }
    let slot: number;
    // An adopted memslot is the VMM's number: given as `slot`, or as this memory's list of
    // slots. A number picked from firstSlot would be another memslot, deleted on close in
    // its place.
    if (options.memslot !== undefined && options.slot === undefined && !this.slotList) {
      throw invalidArgValue('an adopted memslot needs its number: give slot (or the memory\'s slots)');
    }
    if (options.slot !== undefined) {
      slot = checkSlot(options.slot, 'slot');
      if (this.slotList && !this.slotList.includes(slot)) throw outOfRange(`slot ${slot} is not among this memory's slots (${this.slotList.join(', ')})`);
      if (this.usedSlots.has(slot)) throw outOfRange(`memslot ${slot} is taken already`);
    } else {
      const next = this.nextFreeSlot;
      if (next === null) throw outOfRange(`no memslot number left: all of ${this.slotList ? this.slotList.join(', ') : '0..65535'} are taken`);
      slot = next;
    }
    // Held while the block is made, so that a block added meanwhile (addBlockAsync) takes another.
    this.usedSlots.add(slot);
    return slot;
  }

  /** A block that was not made gives its slot back, unless KVM still holds the memslot. */
  private unreserve(slot: number, options: AddBlockOptions, error: unknown): void {
    this.usedSlots.delete(slot);
    // A slot number stays used only when KVM still holds it: the memslot was made and
    // deleting it again failed (ERR_GUESTMEM_ROLLBACK_FAILED naming the slot). A block refused
    // before that (bad granularity, a backing that failed, an abort) leaves the number free.
    if (error instanceof GuestmemError && error.code === 'ERR_GUESTMEM_ROLLBACK_FAILED' && error.slot !== undefined) this.takeSlot(slot, options.slot === undefined);
  }

  private admit(block: RamBlock, options: AddBlockOptions): RamBlock {
    this.takeSlot(block.slot, options.slot === undefined);
    this.blocks.push(block);
    return block;
  }

  /**
   * Every block for one other thread (RamBlock.share), in block order: a vCPU thread
   * attaches each (attachBlock) and converts the one that covers a request. Transfer their
   * ports with them (`transferList: descriptors.map((d) => d.port)`).
   */
  share(): BlockDescriptor[] {
    return this.blocks.map((block) => block.share());
  }

  private takeSlot(slot: number, counted: boolean): void {
    this.usedSlots.add(slot);
    if (counted && !this.slotList) this.nextSlot = slot + 1;
  }

  /** The block holding all of [gpa, gpa + size), or a rejection (nothing has run yet). */
  blockFor(gpa: Bytes, size: Bytes): RamBlock {
    // Numbers (every guest's request): no bigint on the way to the block.
    if (typeof gpa === 'number' && typeof size === 'number' && Number.isSafeInteger(gpa) && Number.isSafeInteger(size) && gpa >= 0 && size >= 0) {
      for (let i = 0; i < this.blocks.length; i++) if (this.blocks[i]!.contains(gpa, size)) return this.blocks[i]!;
    }
    const [start, length] = checkSpan(gpa, size, 'range');
    const block = this.blocks.find((b) => b.contains(start, length));
    if (block) return block;
    const touching = this.blocks.filter((b) => start < BigInt(b.gpa + b.size) && BigInt(b.gpa) < start + length);
    const where = `[0x${gpa.toString(16)}, +0x${size.toString(16)})`;
    throw new GuestmemError(
      'ERR_GUESTMEM_CONVERSION_REJECTED',
      touching.length > 0
        ? `${where} spans ${touching.map((b) => b.name).join(' and ')}${touching.length === 1 ? ' and unbacked memory' : ''}: convert each block's part separately`
        : `${where} is in no RAM block`,
    );
  }

  /**
   * Converts [gpa, gpa + size) to `to`, in the one block that holds it, as QEMU's
   * kvm_convert_memory (RamBlock.convert): KVM's memory attributes and the tracker's state
   * change, whose listeners map or unmap (a VFIO listener the device's DMA), in the order
   * that never leaves a device mapping a private page (to private, listeners first), then
   * the punch-hole of the backing left; a failed step undoes those before it. Conversions of
   * one block run one at a time.
   *
   * @returns what changed (the range's state before, granules changed)
   * @throws (as a rejected promise) `ERR_GUESTMEM_CONVERSION_REJECTED` for a range in no
   *   block or across two, a TypeError or RangeError for bad input (nothing changed), or
   *   `ERR_GUESTMEM_CONVERSION_FAILED` when a step failed and was undone
   */
  convert(gpa: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult> {
    try {
      return this.blockFor(gpa, size).convert(gpa, size, to);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * convert, done before it returns (RamBlock.convertSync, whose contract holds for the
   * block that holds the range): throws what convert would reject with, or
   * ERR_GUESTMEM_BUSY / ERR_GUESTMEM_ASYNC_LISTENER when that block cannot convert
   * synchronously now (check `blockFor(gpa, size).canConvertSync` first).
   */
  convertSync(gpa: Bytes, size: Bytes, to: PageState): StateChangeResult {
    return this.blockFor(gpa, size).convertSync(gpa, size, to);
  }

  /** Repairs every block that has granules in disagreement (see RamBlock.repair). */
  async repair(): Promise<{ repaired: number }> {
    let repaired = 0;
    for (const block of this.blocks) repaired += (await block.repair()).repaired;
    return { repaired };
  }

  /**
   * Shuts every block down, each after its conversions in flight: listeners unregistered
   * (DMA unmapped), then memslots and backings. A block that fails does not stop the others;
   * everything that could not be released is reported at the end in one
   * ERR_GUESTMEM_SHUTDOWN_INCOMPLETE (a GuestmemError; `errors` holds each).
   */
  async shutdown(): Promise<void> {
    const results = await Promise.allSettled(this.blocks.splice(0).map((block) => block.shutdown()));
    const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
    if (errors.length > 0) throw shutdownIncomplete('guest memory', errors);
  }

  /** Shuts every block down, listeners first (`await using`). */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }

  /** Closes every block at once; see RamBlock.close for listeners still registered. */
  close(): void {
    const errors: unknown[] = [];
    for (const block of this.blocks.splice(0)) {
      try {
        block.close();
      } catch (error) {
        errors.push(error);
      }
    }
    if (errors.length > 0) throw shutdownIncomplete('guest memory', errors);
  }

  /**
   * What `using` calls: close(), when no block has listeners registered. Otherwise it refuses
   * before closing any block (ERR_GUESTMEM_LISTENERS_REGISTERED, naming the first such block's
   * listeners), as RamBlock's does: use `await using`, whose shutdown() unregisters them first.
   */
  [Symbol.dispose](): void {
    for (const block of this.blocks) {
      const refusal = block.disposeRefusal();
      if (refusal) throw refusal;
    }
    this.close();
  }
}
