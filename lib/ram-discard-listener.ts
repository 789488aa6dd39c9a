// The listener side of QEMU's RamDiscardManager, as guestmem uses it for confidential
// memory: populate = the range became shared, discard = the range became private.

import type { GranuleRange } from './byte-range';
import type { Run } from './page-bitmap';

export interface RamDiscardListener {
  /** Shown in errors and reports; defaults to the constructor's name. */
  readonly name?: string;
  /**
   * A listener that can discard a range of which parts are already discarded (VFIO: one
   * unmap over a range of many mappings) gets a single whole-section discard when it is
   * unregistered, instead of one per shared run.
   */
  readonly doubleDiscardSupported?: boolean;
  /** The range (clipped to the listener's section) became shared. May throw or reject. */
  populate(range: GranuleRange): void | PromiseLike<void>;
  /** The range (clipped to the listener's section) became private. */
  discard(range: GranuleRange): void | PromiseLike<void>;
  /**
   * Optional batch forms: every run of one change (a mixture, a replay) in one call, so a
   * listener that crosses into the kernel can do it once. All or nothing: when one throws,
   * the listener must hold exactly what it held before the call.
   */
  populateRuns?(ranges: GranuleRange[]): void | PromiseLike<void>;
  discardRuns?(ranges: GranuleRange[]): void | PromiseLike<void>;
  /**
   * Optional: the granules it holds now (maps, for VFIO) inside [first, first + count), as
   * maximal runs of block granule indices. A listener that can say so lets its RAM block
   * check after a failure that it agrees with the tracker and KVM, and repair it if not.
   */
  heldRuns?(first: number, count: number): Run[];
}

export function listenerName(listener: RamDiscardListener): string {
  return listener.name ?? listener.constructor?.name ?? 'listener';
}
