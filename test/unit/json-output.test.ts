// --json output: one object, whose long arrays are written a slice at a time (a 10 M-entry
// --history as one string passed V8's longest string, and the run's work was lost at the
// end with "Invalid string length"), and whose text is what JSON.stringify would give.

import assert from 'node:assert/strict';
import { failureJson, jsonText, printJson } from '../../lib/cli/output';

function captured(run: () => void): string[] {
  const writes: string[] = [];
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((chunk: string) => writes.push(chunk) > 0) as typeof process.stdout.write;
  try {
    run();
  } finally {
    process.stdout.write = write;
  }
  return writes;
}

describe('--json output', () => {
  it('streams long arrays in slices, with the text JSON.stringify gives', () => {
    const report = { granule: 4096, big: 2n ** 64n, skipped: undefined, history: Array.from({ length: 10_000 }, (_, i) => ({ offset: i, to: 'shared' })), tail: [] };
    const writes = captured(() => printJson(report));
    assert.ok(writes.length > 3, `${writes.length} writes`);
    assert.ok(writes.every((w) => w.length < 1 << 20), 'no write holds the whole array');
    assert.equal(writes.join(''), `${jsonText(report)}\n`);
  });

  it('writes short objects, empty ones and non-objects as before', () => {
    for (const value of [{}, { a: [1, 2] }, [1, 2], null, 'text']) assert.equal(captured(() => printJson(value)).join(''), `${jsonText(value)}\n`);
  });

  it('gives a failing report one error member: the first code, every message', () => {
    assert.deepEqual(failureJson([]), {});
    assert.deepEqual(failureJson([{ code: 'ENOSPC', message: 'a' }, { code: 'X', message: 'b' }]), { error: { code: 'ENOSPC', message: 'a; b' } });
  });
});
