// The checks of what a caller hands a tracker, apart from the tracker: every one throws
// Node's codes (ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE) before
// anything is allocated or changed, and a caller (the CLI, a VM about to make a block) can
// run blockGeometry first to refuse bad input before it touches anything else.

import { approximateBytes, checkGranularity, toGranuleRange, type Bytes } from '../common/byte-range';
import { invalidArgType, invalidArgValue, outOfRange } from '../common/errors';
import { describeValue } from '../common/validators';
import { PageBitmap } from './page-bitmap';

/** A section of a block (offset and size in bytes) as a listener registers on it. */
export interface SectionInput {
  offset: Bytes;
  size: Bytes;
}

export interface RamBlockAttributesOptions {
  /** Bytes per tracked granule: a power of two, default 4096. */
  granularity?: number;
  name?: string;
  /**
   * The most memory the bitmap may take, default 256 MiB (2^31 granules: 8 TiB of 4 KiB
   * pages). A block that needs more is refused before anything is allocated, with the
   * granularity that would fit.
   */
  maxBitmapBytes?: number;
  /**
   * How long a listener's promise may take to settle, in ms; default none. When it runs
   * out, the change rolls back and fails with ERR_GUESTMEM_LISTENER_FAILED (cause
   * ERR_GUESTMEM_LISTENER_TIMEOUT) naming the listener, and later operations proceed.
   */
  listenerTimeoutMs?: number;
  /**
   * The tracker's memory, made by another tracker of the same geometry (its `memory`): the
   * bitmap and shared count are then that tracker's, seen from this thread (a block attached
   * in a worker). Its registrations are this tracker's own. Default: fresh memory.
   */
  memory?: SharedArrayBuffer;
}

/** The default bound on a bitmap's memory: 256 MiB. */
export const DEFAULT_MAX_BITMAP_BYTES = 256 * 2 ** 20;

const DEFAULT_GRANULARITY = 4096;

/**
 * Checks a block's geometry without allocating anything: the size (a positive multiple
 * of the granularity, below 2^64), the granularity (a power of two) and the memory its
 * bitmap would take against the bound. The constructor calls it; a caller can call it
 * first to refuse bad input before it touches anything else (a VM, a file).
 */
export function blockGeometry(size: unknown, options: RamBlockAttributesOptions = {}): { granularity: number; granules: number } {
  if (options === null || typeof options !== 'object') throw invalidArgType(`options must be an object, got ${describeValue(options)}`);
  const granularity = checkGranularity(options.granularity ?? DEFAULT_GRANULARITY);
  const bound = options.maxBitmapBytes ?? DEFAULT_MAX_BITMAP_BYTES;
  if (typeof bound !== 'number') throw invalidArgType(`maxBitmapBytes must be a number, got ${describeValue(bound)}`);
  if (!Number.isSafeInteger(bound) || bound <= 0) throw outOfRange(`maxBitmapBytes must be a positive integer, got ${bound}`);
  const granules = toGranuleRange(0, size, granularity, Number.MAX_SAFE_INTEGER, 'block').count;
  const bitmapBytes = Math.ceil(granules / 8);
  if (bitmapBytes > bound || granules > PageBitmap.MAX_BITS) {
    let fits = granularity;
    while (fits < 2 ** 52 && Math.ceil(granules / (fits / granularity) / 8) > bound) fits *= 2;
    throw outOfRange(
      `a block of ${approximateBytes(granules * granularity)} in ${granularity}-byte granules needs a ${approximateBytes(bitmapBytes)} bitmap, ` +
        `above the bound of ${approximateBytes(bound)} (maxBitmapBytes): use a granularity of ${fits} or more, or raise the bound`,
    );
  }
  return { granularity, granules };
}

export function checkTimeout(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number') throw invalidArgType(`listenerTimeoutMs must be a number, got ${describeValue(value)}`);
  // setTimeout's own limit: above 2^31 - 1 ms it fires at once.
  if (!Number.isInteger(value) || value <= 0 || value > 0x7fffffff) {
    throw outOfRange(`listenerTimeoutMs must be an integer in [1, 2147483647], got ${value}`);
  }
  return value;
}

export function checkName(name: unknown): string {
  if (typeof name !== 'string') throw invalidArgType(`name must be a string, got ${describeValue(name)}`);
  return name;
}

/** 'shared' → true, 'private' → false; anything else is refused with Node's codes. */
export function checkState(state: unknown, what = 'state'): boolean {
  if (state === 'shared') return true;
  if (state === 'private') return false;
  if (typeof state !== 'string') throw invalidArgType(`${what} must be 'shared' or 'private', got ${describeValue(state)}`);
  throw invalidArgValue(`${what} must be 'shared' or 'private', got '${state}'`);
}

export function checkSection(section: unknown, what: string): SectionInput {
  if (section === null || typeof section !== 'object') {
    throw invalidArgType(`${what} must be an object { offset, size }, got ${describeValue(section)}`);
  }
  return section as SectionInput;
}

/** A listener to unregister: an object (or a function), else ERR_INVALID_ARG_TYPE before anything is queued. */
export function checkListenerObject(listener: unknown): void {
  if (listener === null || (typeof listener !== 'object' && typeof listener !== 'function')) {
    throw invalidArgType(`listener must be an object, got ${describeValue(listener)}`);
  }
}

/** The replay callback: a function. */
export function checkReplayCallback(fn: unknown): void {
  if (typeof fn !== 'function') throw invalidArgType(`the replay callback must be a function, got ${describeValue(fn)}`);
}

/**
 * Shared memory of `bytes` bytes that another object of the same geometry made (`of`
 * describes it: "a tracker of 64 granules"), checked; or fresh memory, zeroed, where none is
 * given (`allocating` names it in an allocation failure).
 */
export function givenOrFreshMemory(memory: unknown, bytes: number, of: string, allocating: string): SharedArrayBuffer {
  if (memory === undefined) return PageBitmap.sharedMemory(bytes, allocating);
  if (!(memory instanceof SharedArrayBuffer) || memory.byteLength !== bytes) {
    throw invalidArgType(`memory must be the SharedArrayBuffer of ${of} (${bytes} bytes), got ${describeValue(memory)}`);
  }
  return memory;
}

/**
 * The memory a tracker of `granules` granules is handed (`bytes` long, another tracker's
 * `memory`), or fresh memory where none is.
 */
export function trackerMemory(memory: unknown, granules: number, bytes: number): SharedArrayBuffer {
  return givenOrFreshMemory(memory, bytes, `a tracker of ${granules} granules`, 'a tracker');
}
