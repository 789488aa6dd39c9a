// The code the command reports for anything thrown, under --json and in --history: the
// error's own (a GuestmemError's, Node's ERR_*, a system error's errno name), else
// ERR_GUESTMEM_FAILED (a listener's string, an error of user code): docs/errors.md has each.

/** The error's own string `code`, or `fallback` when it has none. */
export function errorCode(error: unknown, fallback = 'ERR_GUESTMEM_FAILED'): string {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : fallback;
}
