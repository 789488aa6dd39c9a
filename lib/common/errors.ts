// Errors shaped like Node's own: a `code` a program can switch on, and a message that
// says what to fix. Kernel errors (errno, syscall) are made in native/errors.h.

/** The codes a {@link GuestmemError} carries. */
export type GuestmemErrorCode =
  | 'ERR_GUESTMEM_LISTENER_FAILED'
  | 'ERR_GUESTMEM_LISTENER_TIMEOUT'
  | 'ERR_GUESTMEM_REENTRANT_CALL'
  | 'ERR_GUESTMEM_ROLLBACK_FAILED'
  | 'ERR_GUESTMEM_ALREADY_REGISTERED'
  | 'ERR_GUESTMEM_NOT_REGISTERED'
  | 'ERR_GUESTMEM_CLOSED'
  | 'ERR_GUESTMEM_CONVERSION_FAILED'
  | 'ERR_GUESTMEM_CONVERSION_REJECTED'
  | 'ERR_GUESTMEM_REPAIR_FAILED'
  | 'ERR_GUESTMEM_SHUTDOWN_INCOMPLETE'
  | 'ERR_GUESTMEM_DMA_LIMIT'
  | 'ERR_GUESTMEM_UNSUPPORTED'
  | 'ERR_GUESTMEM_NATIVE_UNAVAILABLE'
  | 'ERR_GUESTMEM_VCPU_FAILED'
  | 'ERR_GUESTMEM_ASYNC_LISTENER'
  | 'ERR_GUESTMEM_ASYNC_DELEGATE'
  | 'ERR_GUESTMEM_BUSY'
  | 'ERR_GUESTMEM_LOCK_TIMEOUT'
  | 'ERR_GUESTMEM_EXIT_MISMATCH'
  | 'ERR_GUESTMEM_LAUNCH_ORDER'
  | 'ERR_GUESTMEM_LAUNCH_FAILED';

/**
 * An error guestmem found itself (not a failed syscall), with a `code` a program can switch
 * on, like Node's `ERR_*` errors. Every code, what it leaves and what to do:
 * [the error reference](../../docs/errors.md).
 */
export class GuestmemError extends Error {
  readonly code: GuestmemErrorCode;
  // Details set where they apply (declared, not defined, so an error without them has no such
  // own property): a system call's failure beneath the error, and every failure of an
  // operation that went on past several (ERR_GUESTMEM_SHUTDOWN_INCOMPLETE,
  // ERR_GUESTMEM_REPAIR_FAILED, ERR_GUESTMEM_ROLLBACK_FAILED).
  /** The errno (negative, as Node's) of the system call that failed beneath this error, where one did. */
  declare errno?: number;
  /** The system call that failed beneath this error (`ioctl(KVM_SET_MEMORY_ATTRIBUTES)`, `open`), where one did. */
  declare syscall?: string;
  /** Every failure, where the operation went on past more than one. */
  declare errors?: unknown[];

  constructor(code: GuestmemErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'GuestmemError';
  }
}

/** A RangeError with Node's `ERR_OUT_OF_RANGE` code. */
export function outOfRange(message: string): RangeError & { code: string } {
  return Object.assign(new RangeError(message), { code: 'ERR_OUT_OF_RANGE' });
}

/** A TypeError with Node's `ERR_INVALID_ARG_TYPE` code. */
export function invalidArgType(message: string): TypeError & { code: string } {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_TYPE' });
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
export function shutdownIncomplete(what: string, errors: unknown[]): GuestmemError & { code: 'ERR_GUESTMEM_SHUTDOWN_INCOMPLETE'; errors: unknown[] } {
  const messages = errors.map(messageOf);
  const error = new GuestmemError('ERR_GUESTMEM_SHUTDOWN_INCOMPLETE', `shutting down ${what} released all it could, but ${errors.length} thing(s) failed: ${messages.join('; ')}`);
  error.errors = errors;
  return error as GuestmemError & { code: 'ERR_GUESTMEM_SHUTDOWN_INCOMPLETE'; errors: unknown[] };
}

/**
 * A system error made in JS, shaped as the addon's (and Node's fs) are: "EIO: short read of
 * region 0, pread" with `code`, negative `errno` and `syscall`.
 */
export function systemError(code: string, errno: number, syscall: string, detail: string): Error & { code: string; errno: number; syscall: string } {
  return Object.assign(new Error(`${code}: ${detail}, ${syscall}`), { code, errno: -Math.abs(errno), syscall });
}

export function closedError(what: string): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_CLOSED', `${what} is closed`);
}

/** A TypeError with Node's `ERR_INVALID_ARG_VALUE` code: the right type, a value that cannot be. */
export function invalidArgValue(message: string): TypeError & { code: string } {
  return Object.assign(new TypeError(message), { code: 'ERR_INVALID_ARG_VALUE' });
}
