// The CLI's progress bar: on stderr only when it is a terminal and the work is long (a
// script's steps, or a large block's bytes marked private), never on stdout.

import assert from 'node:assert/strict';
import { progressBar } from '../../lib/cli/output';

/** Runs `body` with stderr taken for a terminal, returning what it wrote there. */
function onTerminal(body: () => void): string {
  const stderr = process.stderr as NodeJS.WriteStream & { isTTY: boolean };
  const { isTTY, write } = stderr;
  let written = '';
  stderr.isTTY = true;
  stderr.write = ((chunk: string | Uint8Array) => {
    written += String(chunk);
    return true;
  }) as typeof stderr.write;
  try {
    body();
  } finally {
    stderr.isTTY = isTTY;
    stderr.write = write;
  }
  return written;
}

describe('CLI progress bar', () => {
  it('is off when the work is shorter than its minimum, on from it', () => {
    onTerminal(() => {
      assert.equal(progressBar('steps', 999), undefined);
      assert.equal(typeof progressBar('steps', 1000), 'function');
      assert.equal(progressBar('bytes', 2 ** 33 - 1, 2 ** 33), undefined);
      assert.equal(typeof progressBar('bytes', 2 ** 33, 2 ** 33), 'function');
    });
  });

  it('is off when stderr is not a terminal', function () {
    if (process.stderr.isTTY) this.skip();
    assert.equal(progressBar('steps', 10_000), undefined);
  });

  it('writes each percent once, and ends its line when the work is done', () => {
    const GiB = 2 ** 30;
    const written = onTerminal(() => {
      const bar = progressBar('marking guest RAM private', 16 * GiB, 8 * GiB)!;
      for (let done = GiB; done <= 16 * GiB; done += GiB) {
        bar(done);
        bar(done); // the same percent again prints nothing
      }
    });
    const updates = written.split('\r').filter(Boolean);
    assert.equal(updates.length, 16);
    assert.match(updates[0]!, /^marking guest RAM private \[#+ +\] 6%$/);
    assert.match(updates[15]!, /^marking guest RAM private \[#{30}\] 100%\n$/);
  });
});
