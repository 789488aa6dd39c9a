/** Bad usage: the CLI prints the message with what to fix and exits with code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}
