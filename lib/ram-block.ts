// One RAM block of a confidential VM: its shared backing (a memfd mapping), its private
// backing (a guest_memfd), the memslot that joins them at a guest physical address, and
// the tracker of which granules are shared. Its convert() is QEMU's kvm_convert_memory
// for one block, with every step undone if a later one fails.

import { checkSafeBytes, checkSpan, type Bytes } from './byte-range';
import { ConversionStats, type ConversionStep } from './conversion-stats';
import { GuestmemError, invalidArgType } from './errors';
import type { GuestMemfd, Vm } from './kvm';
import type { RamDiscardListener } from './ram-discard-listener';
import { RamBlockAttributes, type SectionInput, type StateChangeResult } from './ram-block-attributes';
import { Serializer } from './serializer';
import { SharedMemory } from './shared-memory';
import type { PageState } from './state-change-channel';
import type { Run } from './page-bitmap';

/** Gives a vCPU fd of the block's VM, for vCPU ioctls such as KVM_PRE_FAULT_MEMORY. */
export type VcpuFdProvider = () => number;

export interface RamBlockOptions {
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
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class RamBlock implements Disposable {
  readonly name: string;
  readonly slot: number;
  readonly gpa: number;
  readonly size: number;
  readonly shared: SharedMemory;
  readonly guestMemfd: GuestMemfd;
  readonly attributes: RamBlockAttributes;
  readonly stats = new ConversionStats();
  private closed = false;
  private readonly conversions = new Serializer();
  private readonly prefaultVcpu: VcpuFdProvider | null;

  /**
   * Creates the backings and the memslot, then marks the whole block private in KVM, as
   * QEMU does for a guest_memfd block. Until that call returns, KVM sees the new slot as
   * shared (attributes default to 0) while the tracker already says private: nothing may
   * run the guest on the block in that window.
   */
  constructor(readonly vm: Vm, options: RamBlockOptions) {
    this.name = options.name ?? `ram-block@0x${options.gpa.toString(16)}`;
    this.attributes = new RamBlockAttributes(options.size, { granularity: options.granularity, name: this.name });
    this.slot = options.slot;
    // Numbers suffice: guest physical addresses stop at 2^52 and a memslot at 2^31 - 1 pages.
    this.gpa = checkSafeBytes(options.gpa, 'block gpa');
    this.size = checkSafeBytes(options.size, 'block size');
    if (options.prefault !== undefined && typeof options.prefault !== 'function') {
      throw invalidArgType(`prefault must be a function returning a vCPU fd, got ${typeof options.prefault}`);
    }
    this.prefaultVcpu = options.prefault && vm.supportsPreFault ? options.prefault : null;
    if (this.gpa % this.attributes.granularity !== 0) {
      throw new RangeError(`block gpa must be a non-negative multiple of ${this.attributes.granularity}, got ${options.gpa}`);
    }
    this.shared = SharedMemory.create(options.size, this.name);
    try {
      this.guestMemfd = vm.createGuestMemfd(options.size);
      try {
        vm.setUserMemoryRegion({ slot: this.slot, gpa: this.gpa, size: this.size, userspaceAddress: this.shared.address, guestMemfd: this.guestMemfd });
        vm.setMemoryAttributes(this.gpa, this.size, 'private');
      } catch (error) {
        this.guestMemfd.close();
        throw error;
      }
    } catch (error) {
      this.shared.close();
      throw error;
    }
  }

  /** True when [gpa, gpa + size) lies in this block. */
  contains(gpa: Bytes, size: Bytes): boolean {
    return BigInt(gpa) >= BigInt(this.gpa) && BigInt(gpa) + BigInt(size) <= BigInt(this.gpa + this.size);
  }

  get sharedPages(): number {
    return this.attributes.sharedGranules;
  }

  get privatePages(): number {
    return this.attributes.privateGranules;
  }

  register(listener: RamDiscardListener, section: SectionInput = { offset: 0, size: this.size }): Promise<void> {
    return this.attributes.register(listener, section);
  }

  unregister(listener: RamDiscardListener): Promise<void> {
    return this.attributes.unregister(listener);
  }

  /**
   * Converts [gpa, gpa + size) of this block: KVM attributes, then the tracker's state change
   * (listeners map or unmap), then the discard of the backing that was left. A failure at
   * any step undoes the earlier ones, so KVM, the tracker and every listener end as they were;
   * the error (ERR_GUESTMEM_CONVERSION_FAILED) names the step and carries the cause.
   */
  convert(gpa: Bytes, size: Bytes, to: PageState): Promise<StateChangeResult> {
    // One conversion at a time per block: each reads the tracker to know what to undo, and
    // KVM's attributes must change in the same order as the tracker's bitmap.
    return this.conversions.run(() => this.convertNow(gpa, size, to));
  }

  private async convertNow(gpaIn: Bytes, sizeIn: Bytes, to: PageState): Promise<StateChangeResult> {
    this.checkOpen();
    const [start, length] = checkSpan(gpaIn, sizeIn, 'conversion');
    if (start < BigInt(this.gpa)) {
      throw new RangeError(`gpa 0x${start.toString(16)} is below block ${this.name} at 0x${this.gpa.toString(16)}`);
    }
    // Inside the block (checked here), both are below 2^53.
    this.attributes.range(start - BigInt(this.gpa), length);
    const gpa = Number(start);
    const size = Number(length);
    const offset = gpa - this.gpa;
    if (to !== 'shared' && to !== 'private') throw new RangeError(`target state must be 'shared' or 'private', got ${String(to)}`);
    // The runs not yet in the target state: what an undo must put back.
    const before = this.attributes.runs(to === 'shared' ? 'private' : 'shared', { offset, size });
    this.stats.conversions++;
    let step: ConversionStep = 'kvmAttributes';
    let started = process.hrtime.bigint();
    try {
      this.vm.setMemoryAttributes(gpa, size, to);
      this.stats.add(step, started);

      step = 'listeners';
      started = process.hrtime.bigint();
      let result: StateChangeResult;
      try {
        result = await this.attributes.stateChange(offset, size, to);
      } catch (error) {
        this.restoreAttributes(before, to, error);
        throw error;
      }
      this.stats.add(step, started);

      step = 'discard';
      started = process.hrtime.bigint();
      try {
        if (to === 'private') this.shared.discard(offset, size);
        else this.guestMemfd.punchHole(offset, size);
      } catch (error) {
        await this.undoStateChange(before, to, error);
        this.restoreAttributes(before, to, error);
        throw error;
      }
      this.stats.add(step, started);
      this.prefault(gpa, size);
      return result;
    } catch (error) {
      this.stats.failed++;
      throw new GuestmemError(
        'ERR_GUESTMEM_CONVERSION_FAILED',
        `converting [0x${gpa.toString(16)}, +0x${size.toString(16)}) of ${this.name} to ${to} failed at step ${step}: ${describe(error)}`,
        { cause: error },
      );
    }
  }

  /** The optional KVM_PRE_FAULT_MEMORY after a conversion: opportunistic, never a failure. */
  private prefault(gpa: number, size: number): void {
    if (!this.prefaultVcpu) return;
    const started = process.hrtime.bigint();
    try {
      this.vm.preFaultMemory(this.prefaultVcpu(), gpa, size);
    } catch {
      this.stats.prefaultFailed++;
    }
    this.stats.add('prefault', started);
  }

  /**
   * Puts KVM's attributes back after the whole range was set to `to`: the runs in `before`
   * were in the other state, the rest already was `to`.
   */
  private restoreAttributes(before: Run[], to: PageState, cause: unknown): void {
    const other: PageState = to === 'shared' ? 'private' : 'shared';
    const g = this.attributes.granularity;
    try {
      for (const [first, count] of before) this.vm.setMemoryAttributes(this.gpa + first * g, count * g, other);
    } catch (error) {
      throw new GuestmemError(
        'ERR_GUESTMEM_ROLLBACK_FAILED',
        `${describe(cause)}; restoring the KVM attributes also failed, KVM may disagree with the tracker: ${describe(error)}`,
        { cause },
      );
    }
  }

  /** Flips back the runs a successful state change flipped. */
  private async undoStateChange(before: Run[], to: PageState, cause: unknown): Promise<void> {
    const other: PageState = to === 'shared' ? 'private' : 'shared';
    const g = this.attributes.granularity;
    try {
      for (const [first, count] of before) await this.attributes.stateChange(first * g, count * g, other);
    } catch (error) {
      throw new GuestmemError(
        'ERR_GUESTMEM_ROLLBACK_FAILED',
        `${describe(cause)}; undoing the listeners' change also failed: ${describe(error)}`,
        { cause },
      );
    }
  }

  private checkOpen(): void {
    if (this.closed || this.shared.closed || this.guestMemfd.closed) {
      throw new GuestmemError('ERR_GUESTMEM_CLOSED', `RAM block ${this.name} is closed`);
    }
  }

  /**
   * Unregisters every listener (a VFIO listener unmaps what it holds), then closes. Use this
   * (or `await using`) rather than close() while listeners are registered.
   */
  async shutdown(): Promise<void> {
    try {
      for (const listener of this.attributes.listeners) await this.attributes.unregister(listener);
    } finally {
      this.close();
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }

  /**
   * Deletes the memslot and closes both backings. It cannot wait for listeners: DMA mappings
   * they still hold stay (pinning the shared pages) until they are unregistered or their
   * container closes, so prefer shutdown().
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      if (!this.vm.closed) this.vm.deleteMemorySlot(this.slot);
    } finally {
      this.guestMemfd.close();
      this.shared.close();
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

