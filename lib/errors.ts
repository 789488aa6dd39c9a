// Errors shaped like Node's own: a `code` a program can switch on, and a message that
// says what to fix. Kernel errors (errno, syscall) are made in native/errors.h.

export type GuestmemErrorCode =
  | 'ERR_GUESTMEM_LISTENER_FAILED'
  | 'ERR_GUESTMEM_ROLLBACK_FAILED'
  | 'ERR_GUESTMEM_ALREADY_REGISTERED'
  | 'ERR_GUESTMEM_NOT_REGISTERED'
  | 'ERR_GUESTMEM_CLOSED'
  | 'ERR_GUESTMEM_CONVERSION_FAILED'
  | 'ERR_GUESTMEM_DMA_LIMIT'
  | 'ERR_GUESTMEM_UNSUPPORTED'
  | 'ERR_GUESTMEM_NATIVE_UNAVAILABLE'
  | 'ERR_GUESTMEM_VCPU_FAILED';

export class GuestmemError extends Error {
  readonly code: GuestmemErrorCode;

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

export function closedError(what: string): GuestmemError {
  return new GuestmemError('ERR_GUESTMEM_CLOSED', `${what} is closed`);
}
