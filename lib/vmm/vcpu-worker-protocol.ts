// What the main thread and a vCPU's worker thread say to each other, and how a worker
// loads the port handlers given to it as modules.

import path from 'node:path';
import type { MessagePort } from 'node:worker_threads';
import { invalidArgType, invalidArgValue } from '../common/errors';
import type { PortHandler } from './guest-ports';
import type { BlockDescriptor } from '../memory/block-sharing';
import type { CrossedError, MainThreadCall } from './main-thread-calls';
import type { VmmReport } from './vmm-loop';
import type { PackedEvents } from './conversion-event-batch';

/**
 * Port handlers that run on each vCPU's own thread: a CommonJS module (an absolute path, or
 * a package name) whose export `export` (default: the module itself) is a factory called
 * once per vCPU thread with `options` and the vCPU's number, returning the handlers by port.
 * A handler here answers an exit with no thread hop; its state is its thread's own.
 */
export interface PortModule {
  module: string;
  export?: string;
  /** Given to the factory; must survive a structured clone. */
  options?: unknown;
}

/** The factory a {@link PortModule} exports. */
export type PortModuleFactory = (options: unknown, vcpu: number) => PortHandlers | Promise<PortHandlers>;

/** Handlers by port, as a Map or any iterable of [port, handler]. */
export type PortHandlers = Map<number, PortHandler> | Iterable<readonly [number, PortHandler]>;

/** The worker's start: its vCPU, the main thread's handlers it must call, and the shared words. */
export interface VcpuWorkerData {
  fd: number;
  mmapSize: number;
  vcpu: number;
  /** Int32 words: [0] the number of the last call answered, [1] the VM is being stopped. */
  signal: SharedArrayBuffer;
  /** Where the main thread posts answers to this worker's calls. */
  replies: MessagePort;
  portModules: PortModule[];
  /** Ports that have a handler on the main thread. */
  mainPorts: number[];
  /** True when the main thread has an MMIO handler. */
  mmio: boolean;
  /** True when the main thread wants conversion events. */
  observe: boolean;
  /** True when the main thread's memory may refuse a memory fault's conversion (LoopMemory.faultRefusal). */
  faultRefusal: boolean;
  vmType?: number;
  /** The RAM blocks, for the loop's check that a request lies inside one. */
  blocks: Array<{ gpa: number; size: number }>;
  /** The blocks this thread converts itself (attachBlock); the others' conversions are calls. */
  sharedBlocks: BlockDescriptor[];
}

export const STOP_WORD = 1;
export const SIGNAL_WORDS = 2;
/** Conversion events a worker gathers before it posts them (and before any call, and at its end). */
export const EVENT_BATCH = 64;

/** A message from a vCPU's worker to the main thread. */
export type WorkerMessage =
  | MainThreadCall
  | { type: 'events'; packed: PackedEvents }
  | { type: 'post'; message: unknown }
  | { type: 'done'; report: VmmReport }
  | { type: 'failed'; error: CrossedError };

/** Checks port modules on the main thread, before any worker starts. */
export function checkPortModules(modules: unknown): PortModule[] {
  if (modules === undefined) return [];
  if (!Array.isArray(modules)) throw invalidArgType(`portModules must be an array, got ${typeof modules}`);
  for (const spec of modules as unknown[]) {
    const { module, export: name } = (spec ?? {}) as { module?: unknown; export?: unknown };
    if (spec === null || typeof spec !== 'object' || typeof module !== 'string' || module === '') {
      throw invalidArgType('each port module must be { module: string, export?: string, options?: unknown }');
    }
    if (name !== undefined && typeof name !== 'string') throw invalidArgType(`a port module's export must be a string, got ${typeof name}`);
    try {
      structuredClone((spec as PortModule).options);
    } catch {
      throw invalidArgValue(`the options of port module ${module} must survive a structured clone (they go to each vCPU's thread)`);
    }
    if (!path.isAbsolute(module) && module.startsWith('.')) throw invalidArgValue(`port module '${module}' must be an absolute path or a package name: a worker resolves it from guestmem's own directory`);
  }
  return modules as PortModule[];
}

/** On a vCPU's thread: loads each module and gathers the handlers its factory makes. */
export async function loadPortModules(modules: PortModule[], vcpu: number): Promise<Map<number, PortHandler>> {
  const ports = new Map<number, PortHandler>();
  for (const spec of modules) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- a CommonJS module named at run time
    const loaded = require(spec.module) as Record<string, unknown>;
    const factory = (spec.export === undefined ? loaded : loaded[spec.export]) as PortModuleFactory;
    if (typeof factory !== 'function') throw invalidArgType(`port module ${spec.module}${spec.export ? `#${spec.export}` : ''} is not a factory function`);
    for (const [port, handler] of await factory(spec.options, vcpu)) {
      if (typeof handler !== 'function') throw invalidArgType(`port module ${spec.module} gave port 0x${Number(port).toString(16)} a ${typeof handler}, not a handler`);
      ports.set(port, handler);
    }
  }
  return ports;
}
