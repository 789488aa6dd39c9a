/** Bad usage: the CLI prints the message with what to fix and exits with code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
  /** ERR_GUESTMEM_USAGE, or the code of the parser that found it (ERR_PARSE_ARGS_UNKNOWN_OPTION). */
  readonly code: string;

  constructor(message: string, code = 'ERR_GUESTMEM_USAGE') {
    super(message);
    this.code = code;
  }
}
