// A RAM block as another thread receives it (BlockDescriptor: structured-cloneable, its
// MessagePort transferred), and how the listener registry follows it there. The registry
// is objects, not memory: each thread keeps replicas of the listeners, made from their
// descriptors, keyed by the registration's id (never by name). A register or unregister on
// the main thread happens under the block's lock; before releasing it, the main thread
// posts the new registry to every thread the block was shared with, then bumps the
// generation in shared memory. A thread converting takes the lock, sees the generation
// moved, and drains its port with receiveMessageOnPort: no event loop is needed, so a vCPU
// thread that never returns to its event loop still follows.

import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { GuestmemError } from '../common/errors';
import type { BlockMemory } from './block-state';
import { listenerName, type RamDiscardListener } from '../tracker/ram-discard-listener';
import type { RamBlockAttributes } from '../tracker/ram-block-attributes';
import type { ThreadDescriptor } from '../common/thread-kinds';

/** A listener that can run on another thread: it describes itself for a thread to rebuild. */
export interface ThreadListener extends RamDiscardListener {
  /** The descriptor another thread makes a replica from (defineThreadKind('listener', kind)). */
  toThreadDescriptor(): ThreadDescriptor;
}

/** One registration as the registry travels: its id, its section in granules, its listener's descriptor. */
export interface RegistrationDescriptor {
  readonly id: number;
  readonly first: number;
  readonly count: number;
  readonly listener: ThreadDescriptor;
}

/** The registry at one generation, newest registration first (the order of notification). */
export interface RegistrySnapshot {
  readonly generation: number;
  readonly registrations: readonly RegistrationDescriptor[];
}

/**
 * A RAM block for another thread (RamBlock.share()): send it to a Worker with its `port` in
 * the transfer list (`new Worker(file, { workerData: d, transferList: [d.port] })`), then
 * attachBlock(d) there. One descriptor per thread: its port carries the registry's changes
 * to that thread alone.
 */
export interface BlockDescriptor {
  readonly kind: 'guestmem-ram-block';
  readonly name: string;
  readonly gpa: number;
  readonly size: number;
  readonly granularity: number;
  readonly granules: number;
  readonly lockTimeoutMs: number;
  /**
   * The block pre-faults what it converts (RamBlockOptions.prefault, on a VM with
   * KVM_PRE_FAULT_MEMORY): a thread that attaches it with its own vCPU's fd does so too.
   */
  readonly prefaults: boolean;
  /** Bytes per plug block (virtio-mem's block size) of the block's plug source. */
  readonly plugBlockSize: number;
  /** The block's shared state, the tracker's memory and the plug source's. */
  readonly memory: BlockMemory & { readonly tracker: SharedArrayBuffer; readonly plug: SharedArrayBuffer };
  /** How the thread makes the block's kernel calls (defineThreadKind('kernel', kind)). */
  readonly kernel: ThreadDescriptor;
  readonly registry: RegistrySnapshot;
  readonly port: MessagePort;
}

/** The descriptor of a listener that can run on another thread, or why it cannot. */
export function threadDescriptorOf(listener: RamDiscardListener): ThreadDescriptor | GuestmemError {
  const candidate = listener as Partial<ThreadListener>;
  if (candidate.synchronous === true && typeof candidate.toThreadDescriptor === 'function') {
    const descriptor = candidate.toThreadDescriptor();
    if (descriptor !== null && typeof descriptor === 'object' && typeof descriptor.kind === 'string') return descriptor;
  }
  return new GuestmemError(
    'ERR_GUESTMEM_ASYNC_LISTENER',
    `listener "${listenerName(listener)}" can only run on the main thread (${candidate.synchronous === true ? 'it cannot describe itself for another thread: no toThreadDescriptor()' : 'it is not synchronous'}): ` +
      'a block with such a listener converts on the main thread only',
  );
}

/** The tracker's registry as it travels; ERR_GUESTMEM_ASYNC_LISTENER naming the first listener that cannot. */
export function registrySnapshot(tracker: RamBlockAttributes, generation: number): RegistrySnapshot {
  const registrations = tracker.registrations.map(({ id, listener, section }) => {
    const descriptor = threadDescriptorOf(listener);
    // instanceof Error, not GuestmemError: TypeScript narrows the other branch of a test
    // against a class alone, and GuestmemError is a union of one per code.
    if (descriptor instanceof Error) throw descriptor;
    return { id, first: section.first, count: section.count, listener: descriptor };
  });
  return { generation, registrations };
}

/** The main thread's side: one port per thread the block was shared with. */
export class RegistryBroadcast {
  private readonly ports: MessagePort[] = [];

  /** A new channel for one more thread: this side is kept, the other goes in the descriptor. */
  open(): MessagePort {
    const { port1, port2 } = new MessageChannel();
    // Posting needs no event loop, and a port kept here must not keep Node alive.
    port1.unref();
    this.ports.push(port1);
    return port2;
  }

  /** Sends the registry to every thread (the caller holds the lock, then bumps the generation). */
  publish(snapshot: RegistrySnapshot): void {
    for (const port of this.ports) port.postMessage(snapshot);
  }

  close(): void {
    for (const port of this.ports.splice(0)) port.close();
  }
}
