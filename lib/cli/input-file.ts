// Script and trace files (or stdin), read with bounds: a command must not read /dev/zero
// until the process runs out of memory. The text is read in chunks and checked as it
// comes: a NUL byte or a line longer than any script or trace line stops it at once (the
// input is not text), and the whole is capped, with the option that lifts the cap named.

import fs from 'node:fs';
import { UsageError } from './usage-error';

/** Default cap on a script or trace: 64 MiB, about 2.5 million script lines. */
export const DEFAULT_MAX_INPUT_BYTES = 64 * 2 ** 20;
/** A script line is a few words and a trace line under 200 bytes; 64 KiB is no line of either. */
export const MAX_LINE_BYTES = 64 * 2 ** 10;
/** V8's longest string is just under 2^29 UTF-16 units; no cap may go past it. */
export const MAX_INPUT_LIMIT = 2 ** 29 - 2 ** 20;

const NEWLINE = 0x0a;

/**
 * Reads `file` ('-' for stdin) as UTF-8 text of at most `maxBytes` bytes. Every problem is a
 * UsageError (exit 2) that says what to do: a missing file (with the system error's code,
 * ENOENT), a NUL byte or an overlong line
 * (with its line number), a file over the cap (with the --max-input option that lifts it).
 */
export async function readInputText(file: string | undefined, what: string, maxBytes = DEFAULT_MAX_INPUT_BYTES): Promise<string> {
  if (file === undefined) throw new UsageError(`give the ${what} file (or - for stdin)`);
  if (file === '') throw new UsageError(`the ${what} file name is empty (give a file, or - for stdin)`);
  const name = file === '-' ? `the ${what} on stdin` : `${what} '${file}'`;
  const stream = file === '-' ? process.stdin : fs.createReadStream(file, { highWaterMark: 1 << 20 });
  const chunks: Buffer[] = [];
  let total = 0;
  let line = 1;
  let lineBytes = 0;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer | string>) {
      const buffer = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      const nul = buffer.indexOf(0);
      // Line accounting up to the NUL (or the whole chunk), so errors name the right line.
      const scanEnd = nul === -1 ? buffer.length : nul;
      let start = 0;
      for (let newline = buffer.indexOf(NEWLINE, start); newline !== -1 && newline < scanEnd; newline = buffer.indexOf(NEWLINE, start)) {
        if (lineBytes + newline - start > MAX_LINE_BYTES) break;
        line++;
        lineBytes = 0;
        start = newline + 1;
      }
      lineBytes += scanEnd - start;
      if (lineBytes > MAX_LINE_BYTES) {
        throw new UsageError(`${name}: line ${line} is longer than ${MAX_LINE_BYTES / 1024} KiB; no ${what} line is (is it the right file?)`);
      }
      if (nul !== -1) throw new UsageError(`${name}: line ${line} holds a NUL byte; a ${what} is text (is it the right file?)`);
      total += buffer.length;
      if (total > maxBytes) {
        throw new UsageError(
          `${name} is larger than ${maxBytes} bytes (the --max-input cap): split it, or give --max-input with a larger size (up to ${MAX_INPUT_LIMIT})`,
        );
      }
      chunks.push(buffer);
    }
  } catch (error) {
    if (error instanceof UsageError) throw error;
    // The system error's code (ENOENT, EISDIR, EACCES) stays the code: the path is what to fix.
    const code = (error as NodeJS.ErrnoException).code;
    throw new UsageError(`cannot read ${name}: ${(error as Error).message}`, typeof code === 'string' ? code : undefined, error);
  } finally {
    if (stream !== process.stdin) (stream as fs.ReadStream).destroy();
  }
  return Buffer.concat(chunks, total).toString('utf8');
}
