// A RAM block converted from another thread: attachBlock(descriptor) in a Worker (a vCPU
// thread) gives a converter that runs the block's one conversion (block-conversion.ts) over
// the state the main thread's RamBlock shares with it (block-state.ts, the tracker's
// memory, the plug source's, each VFIO listener's held bitmap), under the same lock. Its
// listeners are replicas made from the registry's descriptors, brought up to date under the
// lock whenever the registry's generation moved (block-sharing.ts). Its stats are its own.

import { receiveMessageOnPort, MessagePort } from 'node:worker_threads';
import { GranuleRange, type Bytes } from '../common/byte-range';
import { ConversionStats } from './conversion-stats';
import { GuestmemError, invalidArgType } from '../common/errors';
import { checkInteger } from '../common/validators';
import { native } from '../common/native';
import { BlockConversion } from './block-conversion';
import type { BlockKernel } from './block-kernel';
import { BlockState } from './block-state';
import type { BlockDescriptor, RegistrySnapshot } from './block-sharing';
import { PlugSource } from '../tracker/plug-source';
import { RamBlockAttributes, type StateChangeResult } from '../tracker/ram-block-attributes';
import type { RamDiscardListener } from '../tracker/ram-discard-listener';
import { revive } from '../common/thread-kinds';
import type { PageState } from '../tracker/state-change-channel';
// The built-in kinds a descriptor may name: each module defines its own on load.
import './block-kernel';
import '../vfio/vfio-dma-listener';
import '../vfio/borrowed-dma-mapper';
import '../tracker/recording-listener';

/** How this thread converts an attached block. */
export interface AttachOptions {
  /**
   * A vCPU of the block's VM that this thread may use (its own vCPU, stopped while it
   * converts): a block that pre-faults what it converts (descriptor.prefaults) pre-faults
   * through it, as the main thread's RamBlock does through its `prefault` vCPU. Without it,
   * conversions here do not pre-fault.
   */
  prefaultVcpuFd?: number;
}

/** Ports already attached in this thread: each carries the registry to one converter only. */
const attachedPorts = new WeakSet<MessagePort>();

/**
 * One RAM block as a thread other than its owner's converts it: `convertSync` gives the same
 * results, steps, order, undo and error reports as RamBlock.convertSync, taking turns with
 * every other thread under the block's lock.
 */
export class AttachedBlock {
  readonly name: string;
  readonly gpa: number;
  readonly size: number;
  readonly granularity: number;
  /** This thread's conversions: counts and (with `timing`) time per step. */
  readonly stats = new ConversionStats();
  private readonly tracker: RamBlockAttributes;
  private readonly state: BlockState;
  private readonly conversion: BlockConversion;
  private readonly port: MessagePort;
  private generation: number;
  /** The listener replicas by registration id: a registration keeps its replica while it lasts. */
  private replicas = new Map<number, RamDiscardListener>();
  private detached = false;
  private readonly prepare = (): void => {
    if (this.detached) throw new GuestmemError('ERR_GUESTMEM_CLOSED', `${this.name} was detached from this thread`);
    if (this.state.generation !== this.generation) this.refresh();
  };

  /** @internal use attachBlock */
  constructor(descriptor: BlockDescriptor, options: AttachOptions = {}) {
    this.name = descriptor.name;
    this.gpa = descriptor.gpa;
    this.size = descriptor.size;
    this.granularity = descriptor.granularity;
    this.tracker = new RamBlockAttributes(descriptor.size, { granularity: descriptor.granularity, name: descriptor.name, memory: descriptor.memory.tracker });
    // What is unplugged, as the main thread's plug and unplug leave it (under the lock): a
    // conversion here tells the listeners only of what is plugged.
    this.tracker.addSource(new PlugSource(descriptor.granules, descriptor.granularity, descriptor.plugBlockSize, descriptor.memory.plug), { inEffect: true });
    this.state = new BlockState(descriptor.memory, descriptor.granules, `RAM block ${descriptor.name}`, descriptor.lockTimeoutMs);
    this.port = descriptor.port;
    this.generation = descriptor.registry.generation;
    this.takeSnapshot(descriptor.registry);
    this.conversion = new BlockConversion({
      name: this.name, gpa: this.gpa, tracker: this.tracker, state: this.state, stats: this.stats,
      kernel: revive<BlockKernel>('kernel', descriptor.kernel), prefault: prefaultThrough(descriptor, options),
    });
  }

  /** True when [gpa, gpa + size) lies in this block (numbers, as a guest's request gives them). */
  covers(gpa: number, size: number): boolean {
    return gpa >= this.gpa && gpa + size <= this.gpa + this.size;
  }

  /**
   * RamBlock.convertSync from this thread: the same conversion, on the same state, under
   * the block's lock (waiting at most its lockTimeoutMs, then ERR_GUESTMEM_LOCK_TIMEOUT
   * naming the holder). ERR_GUESTMEM_CLOSED once the block is closed or detached here.
   */
  convertSync(gpa: Bytes, size: Bytes, to: PageState): StateChangeResult {
    return this.conversion.convertSync(gpa, size, to, this.prepare);
  }

  get sharedPages(): number {
    return this.tracker.sharedGranules;
  }

  /** The replicas of the block's listeners in this thread, newest first, as of this thread's last conversion. */
  get listeners(): RamDiscardListener[] {
    return this.tracker.listeners;
  }

  /** Stops converting here: the port closes, and convertSync is refused from now on. */
  detach(): void {
    if (this.detached) return;
    this.detached = true;
    this.port.close();
  }

  /**
   * Under the lock, with the generation moved: the main thread posted the registry before
   * it moved the generation and released the lock, so the last message waiting is the
   * registry of now. No event loop turn is needed (receiveMessageOnPort).
   */
  private refresh(): void {
    let latest: RegistrySnapshot | null = null;
    for (let message = receiveMessageOnPort(this.port); message !== undefined; message = receiveMessageOnPort(this.port)) {
      latest = message.message as RegistrySnapshot;
    }
    const generation = this.state.generation;
    if (latest === null || latest.generation !== generation) {
      throw new GuestmemError(
        'ERR_GUESTMEM_UNSUPPORTED',
        `${this.name}: the listener registry moved to generation ${generation} but its message ${latest === null ? 'is missing' : `says ${latest.generation}`}: was this descriptor's port transferred to this thread, and attached once?`,
      );
    }
    this.takeSnapshot(latest);
  }

  private takeSnapshot(snapshot: RegistrySnapshot): void {
    const replicas = new Map<number, RamDiscardListener>();
    const registrations = snapshot.registrations.map(({ id, first, count, listener }) => {
      const replica = this.replicas.get(id) ?? revive<RamDiscardListener>('listener', listener);
      replicas.set(id, replica);
      return { id, listener: replica, section: new GranuleRange(first, count, this.granularity) };
    });
    this.tracker.replaceRegistrations(registrations);
    this.replicas = replicas;
    this.generation = snapshot.generation;
  }
}

/**
 * The block a descriptor from RamBlock.share() describes, ready to convert from this thread.
 * The descriptor's port must have been transferred here (and is attached once).
 */
export function attachBlock(descriptor: BlockDescriptor, options: AttachOptions = {}): AttachedBlock {
  if (descriptor === null || typeof descriptor !== 'object' || descriptor.kind !== 'guestmem-ram-block') {
    throw invalidArgType('attachBlock takes the descriptor RamBlock.share() made');
  }
  if (!(descriptor.port instanceof MessagePort)) throw invalidArgType('the descriptor has no MessagePort: transfer it with the descriptor (transferList: [descriptor.port])');
  if (attachedPorts.has(descriptor.port)) {
    throw new GuestmemError('ERR_GUESTMEM_BUSY', `${descriptor.name} is attached in this thread with this descriptor already: share() once per thread`);
  }
  if (options === null || typeof options !== 'object') throw invalidArgType('attachBlock options must be an object');
  const block = new AttachedBlock(descriptor, options);
  attachedPorts.add(descriptor.port);
  return block;
}

/** KVM_PRE_FAULT_MEMORY on this thread's vCPU, when the block pre-faults and the kernel is KVM's. */
function prefaultThrough(descriptor: BlockDescriptor, options: AttachOptions): ((gpa: number, size: number) => void) | null {
  if (options.prefaultVcpuFd === undefined) return null;
  const vcpuFd = checkInteger(options.prefaultVcpuFd, 'prefaultVcpuFd', 0, 0x7fffffff);
  if (!descriptor.prefaults || descriptor.kernel.kind !== 'kvm') return null;
  return (gpa, size) => native().kvmPreFaultMemory(vcpuFd, BigInt(gpa), BigInt(size));
}
