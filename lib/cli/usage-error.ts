/**
 * Bad usage: the CLI prints the message with what to fix and exits with code 2. A file the
 * user named that cannot be read is bad usage too, and keeps the system error's code, errno,
 * syscall and path (ENOENT, not ERR_GUESTMEM_USAGE), as Node's fs errors have them.
 */
export class UsageError extends Error {
  override name = 'UsageError';
  /** ERR_GUESTMEM_USAGE, the code of the parser that found it (ERR_PARSE_ARGS_UNKNOWN_OPTION), or a system error's (ENOENT). */
  readonly code: string;
  /** The system error's errno (negative, as Node's), where a system call failed. */
  readonly errno?: number;
  /** The system call that failed, where one did. */
  readonly syscall?: string;
  /** The file the system call was given, where it was. */
  readonly path?: string;

  constructor(message: string, code = 'ERR_GUESTMEM_USAGE', cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.code = code;
    const system = cause as NodeJS.ErrnoException | undefined;
    if (typeof system?.errno === 'number') this.errno = system.errno;
    if (typeof system?.syscall === 'string') this.syscall = system.syscall;
    if (typeof system?.path === 'string') this.path = system.path;
  }
}
