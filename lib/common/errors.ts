// Errors shaped like Node's own: a `code` a program can switch on, and a message that
// says what to fix. Kernel errors (errno, syscall) are made in native/errors.h.
//
// Every guestmem code is declared once, in GuestmemErrorDetails below, with the details an
// error of that code carries (as Node's own table of `E(code, message, Base)` calls in
// lib/internal/errors.js): a reader finds every code, and every field it may have, in one
// place, and a program that tests `error.code` reaches those fields without a cast. The types named by the details are
// imported as types only (erased from the JavaScript), so this module still depends on no
// other folder of lib/ when it runs.

import type { ConversionStep } from '../memory/conversion-stats';
import type { Intent } from '../memory/block-lock';
import type { PlugStep } from '../memory/block-plug';
import type { Disagreement } from '../tracker/block-agreement';
import type { Run } from '../tracker/page-bitmap';
import type { Bytes } from './byte-range';
import type { VcpuExit } from '../vmm/vcpu-exit';

/** The system call that failed beneath an error, where one did. */
export interface KernelFacts {
  /** The errno (negative, as Node's) of the system call that failed beneath this error. */
  errno?: number;
  /** The system call that failed (`ioctl(KVM_SET_MEMORY_ATTRIBUTES)`, `open`, `fstat`). */
  syscall?: string;
}

/** What a confidential launch's firmware said beneath a failed step, where it said anything. */
export interface FirmwareFacts extends KernelFacts {
  /** The SEV firmware's error code (SEV-SNP). */
  firmwareError?: bigint;
  /** The TDX module's status (TDX). */
  hwError?: bigint;
}

/** What a failed conversion, plug or unplug tells its caller, besides its message. */
export interface ConversionFacts extends KernelFacts {
  /** The step that failed. */
  step: ConversionStep | PlugStep;
  /** Each error met while undoing it. */
  errors: unknown[];
  /** Runs [first, count] of granules that stayed converted, in agreement. */
  applied: Run[];
  /** Plug or unplug, where the failed change was one. */
  operation?: 'plug' | 'unplug';
}

/**
 * Every code a {@link GuestmemError} can have, each once, with the details an error of that
 * code carries beside `code`, `message` and `cause` (an empty row: none). What each code
 * means, what it leaves and what to do: [the error reference](../../docs/errors.md).
 */
export interface GuestmemErrorDetails {
  /** A listener threw or rejected; a tracker's error names it, the change and its ranges. */
  ERR_GUESTMEM_LISTENER_FAILED: {
    /** The listener's name. */
    listener: string;
    /** What it was told to do. */
    operation?: 'populate' | 'discard' | 'attach';
    /** The ranges it was told of, in bytes from the block's start. */
    ranges?: Array<{ offset: Bytes; size: Bytes }>;
    /** Runs it still holds after failing to unregister (null: it cannot say). */
    held?: Run[] | null;
  };
  ERR_GUESTMEM_LISTENER_TIMEOUT: object;
  ERR_GUESTMEM_REENTRANT_CALL: object;
  /** An undo failed: `errors` holds each failure; a block's names what disagrees until repair(). */
  ERR_GUESTMEM_ROLLBACK_FAILED: Partial<ConversionFacts> & {
    errors: unknown[];
    /** What KVM, the tracker and each listener say where they disagree. */
    disagreements?: Disagreement[];
    /** The memslot that could not be deleted again. */
    slot?: number;
  };
  ERR_GUESTMEM_ALREADY_REGISTERED: object;
  ERR_GUESTMEM_NOT_REGISTERED: object;
  ERR_GUESTMEM_CLOSED: KernelFacts;
  ERR_GUESTMEM_CONVERSION_FAILED: ConversionFacts;
  /** Refused before any step; a range holding unsettled granules names them. */
  ERR_GUESTMEM_CONVERSION_REJECTED: {
    /** Runs [first, count] that disagree or are in doubt until repair(). */
    unsettled?: Run[];
  };
  /** A repair that left disagreements names them, with each failure; one listener's failure inside it has none. */
  ERR_GUESTMEM_REPAIR_FAILED: {
    errors?: unknown[];
    disagreements?: Disagreement[];
  };
  /** Each failure of a shutdown that went on past them. */
  ERR_GUESTMEM_SHUTDOWN_INCOMPLETE: {
    errors: unknown[];
  };
  ERR_GUESTMEM_DMA_LIMIT: {
    /** type1 DMA entries the mapping needs. */
    needed: number;
    /** type1 DMA entries left. */
    available: number;
  };
  ERR_GUESTMEM_UNSUPPORTED: FirmwareFacts;
  ERR_GUESTMEM_NATIVE_UNAVAILABLE: object;
  ERR_GUESTMEM_VCPU_FAILED: {
    /** The vCPU's id. */
    vcpu: number;
    /** The exit it could not handle, where one was the reason. */
    exit?: VcpuExit;
  };
  ERR_GUESTMEM_ASYNC_LISTENER: object;
  ERR_GUESTMEM_ASYNC_DELEGATE: object;
  ERR_GUESTMEM_BUSY: object;
  /** `using` on memory whose listeners are still registered: refused, nothing closed. */
  ERR_GUESTMEM_LISTENERS_REGISTERED: {
    /** The names of the listeners still registered. */
    listeners: string[];
  };
  ERR_GUESTMEM_LOCK_TIMEOUT: {
    /** The thread holding the lock (0: the main thread). */
    holder: number;
    /** What that thread said it was doing (null: nothing yet). */
    intent: Intent | null;
  };
  ERR_GUESTMEM_EXIT_MISMATCH: object;
  ERR_GUESTMEM_LAUNCH_ORDER: object;
  ERR_GUESTMEM_LAUNCH_FAILED: FirmwareFacts;
}

/** The codes a {@link GuestmemError} carries: the rows of {@link GuestmemErrorDetails}. */
export type GuestmemErrorCode = keyof GuestmemErrorDetails;

/** What the constructor takes for a code: `cause`, and the code's details (required where it has required ones). */
export type GuestmemErrorOptions<C extends GuestmemErrorCode> = { cause?: unknown } & GuestmemErrorDetails[C];

type OptionsArgument<C extends GuestmemErrorCode> = object extends GuestmemErrorDetails[C]
  ? [options?: GuestmemErrorOptions<C>]
  : [options: GuestmemErrorOptions<C>];

class GuestmemErrorBase extends Error {
  readonly code: GuestmemErrorCode;
  // Details are set where they apply (declared, not defined, so an error without them has no
  // such own property). errno and syscall may sit on any code: an error carried across a
  // thread keeps its facts whatever its code.
  /** The errno (negative, as Node's) of the system call that failed beneath this error, where one did. */
  declare errno?: number;
  /** The system call that failed beneath this error (`ioctl(KVM_SET_MEMORY_ATTRIBUTES)`, `open`), where one did. */
  declare syscall?: string;

  constructor(code: GuestmemErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options && 'cause' in options ? { cause: options.cause } : undefined);
    this.code = code;
    this.name = 'GuestmemError';
    if (options) {
      for (const [key, value] of Object.entries(options)) if (key !== 'cause') (this as Record<string, unknown>)[key] = value;
    }
  }
}

/**
 * An error guestmem found itself (not a failed syscall), with a `code` a program can switch
 * on, like Node's `ERR_*` errors. Testing the code narrows the error to that code's details:
 * after `error instanceof GuestmemError && error.code === 'ERR_GUESTMEM_VCPU_FAILED'`,
 * `error.vcpu` is a number. Every code, what it leaves and what to do:
 * [the error reference](../../docs/errors.md).
 */
export type GuestmemError<C extends GuestmemErrorCode = GuestmemErrorCode> = C extends GuestmemErrorCode
  ? GuestmemErrorBase & { readonly code: C } & Readonly<GuestmemErrorDetails[C]>
  : never;

/** The class of {@link GuestmemError}: made with a code, a message and that code's details. */
export interface GuestmemErrorConstructor {
  new <C extends GuestmemErrorCode>(code: C, message: string, ...options: OptionsArgument<C>): GuestmemError<C>;
  readonly prototype: GuestmemError;
}

// The class is GuestmemError to every reader at run time (util.inspect, constructor.name).
Object.defineProperty(GuestmemErrorBase, 'name', { value: 'GuestmemError' });

/** The class of every error guestmem finds itself; see {@link GuestmemError}. */
export const GuestmemError = GuestmemErrorBase as GuestmemErrorConstructor;

/** A RangeError with Node's `ERR_OUT_OF_RANGE` code. */
export function outOfRange(message: string): RangeError & { code: 'ERR_OUT_OF_RANGE' } {
  return Object.assign(new RangeError(message), { code: 'ERR_OUT_OF_RANGE' as const });
}

/** A TypeError with Node's `ERR_INVALID_ARG_TYPE` code. */
export function invalidArgType(message: string): TypeError & { code: 'ERR_INVALID_ARG_TYPE' } {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' as const });
}

/** A TypeError with Node's `ERR_INVALID_ARG_VALUE` code: the right type, a value that cannot be. */
export function invalidArgValue(message: string): TypeError & { code: 'ERR_INVALID_ARG_VALUE' } {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_VALUE' as const });
}

/** A RangeError with Node's `ERR_MEMORY_ALLOCATION_FAILED` code: memory a request needed could not be had. */
export function allocationFailed(message: string, cause: unknown): RangeError & { code: 'ERR_MEMORY_ALLOCATION_FAILED' } {
  return Object.assign(new RangeError(message, { cause }), { code: 'ERR_MEMORY_ALLOCATION_FAILED' as const });
}

/**
 * Node's AbortError (name 'AbortError', code 'ABORT_ERR', the signal's reason as its cause),
 * as fs/promises and timers/promises throw when their AbortSignal fires.
 */
export function abortError(message: string, signal: AbortSignal): Error & { name: 'AbortError'; code: 'ABORT_ERR' } {
  const error = Object.assign(new Error(message, { cause: signal.reason }), { code: 'ABORT_ERR' as const });
  error.name = 'AbortError';
  return error as Error & { name: 'AbortError'; code: 'ABORT_ERR' };
}

/**
 * A conversion refused before any step ran: bad input (TypeError/RangeError), a range in no
 * block or across two, pages awaiting repair, a closed block. Nothing changed. Any other
 * error from a conversion is a failure: some step ran, and was undone (or the error says
 * which pages disagree).
 */
export function isRejection(error: unknown): boolean {
  if (error instanceof RangeError || error instanceof TypeError) return true;
  const code = (error as { code?: unknown } | null)?.code;
  return code === 'ERR_GUESTMEM_CONVERSION_REJECTED' || code === 'ERR_GUESTMEM_CLOSED';
}

/**
 * The message of anything thrown: an Error's own, else the value as a string (a listener may
 * throw a string or null).
 */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * What a shutdown could not release, all of it: a GuestmemError (so `instanceof GuestmemError`
 * finds it, as every other code) carrying each failure in `errors`, as an AggregateError would.
 */
export function shutdownIncomplete(what: string, errors: unknown[]): GuestmemError<'ERR_GUESTMEM_SHUTDOWN_INCOMPLETE'> {
  const messages = errors.map(messageOf);
  return new GuestmemError('ERR_GUESTMEM_SHUTDOWN_INCOMPLETE', `shutting down ${what} released all it could, but ${errors.length} thing(s) failed: ${messages.join('; ')}`, { errors });
}

/**
 * A system error made in JS, shaped as the addon's (and Node's fs) are: "EIO: short read of
 * region 0, pread" with `code`, negative `errno` and `syscall`.
 */
export function systemError(code: string, errno: number, syscall: string, detail: string): Error & { code: string; errno: number; syscall: string } {
  return Object.assign(new Error(`${code}: ${detail}, ${syscall}`), { code, errno: -Math.abs(errno), syscall });
}

export function closedError(what: string): GuestmemError<'ERR_GUESTMEM_CLOSED'> {
  return new GuestmemError('ERR_GUESTMEM_CLOSED', `${what} is closed`);
}
