// How a descriptor's parts come back to life in another thread: each part names its kind
// (the KVM calls of a block, a DMA mapper, a listener), and the thread makes the object of
// that kind from the plain values the descriptor carries (fd numbers, addresses, shared
// memory). The built-in kinds register themselves with their classes; a test registers its
// stand-ins the same way, in the worker, before it attaches a block.

import { GuestmemError } from './errors';

/** A part of a descriptor: its kind, and the structured-cloneable values its kind needs. */
export interface ThreadDescriptor {
  readonly kind: string;
  readonly [key: string]: unknown;
}

type Reviver = (descriptor: ThreadDescriptor) => unknown;

const families = {
  kernel: new Map<string, Reviver>(),
  'dma-mapper': new Map<string, Reviver>(),
  listener: new Map<string, Reviver>(),
};

export type ThreadKindFamily = keyof typeof families;

/**
 * Teaches this thread to make objects of `kind` from descriptors: block kernels ('kernel'),
 * DMA mappers ('dma-mapper') or listeners ('listener'). Registering a kind again replaces it.
 */
export function defineThreadKind(family: ThreadKindFamily, kind: string, revive: (descriptor: ThreadDescriptor) => unknown): void {
  families[family].set(kind, revive);
}

/** The object a descriptor describes; ERR_GUESTMEM_UNSUPPORTED for a kind this thread does not know. */
export function revive<T>(family: ThreadKindFamily, descriptor: ThreadDescriptor): T {
  const reviver = families[family].get(descriptor?.kind);
  if (!reviver) {
    throw new GuestmemError(
      'ERR_GUESTMEM_UNSUPPORTED',
      `this thread cannot make a ${family} of kind "${String(descriptor?.kind)}": define it first (defineThreadKind('${family}', ...))`,
    );
  }
  return reviver(descriptor) as T;
}
