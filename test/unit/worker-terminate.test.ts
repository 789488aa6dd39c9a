// A Worker terminated while it calls the addon must not take the process with it. It runs
// in a child process: the failure this guards against is an abort no catch can see.

import assert from 'node:assert/strict';
import path from 'node:path';
import { runNodeIsolated } from '../support/isolated';

const CHILD = path.resolve(__dirname, '..', 'support', 'terminated-worker-child.js');

describe('a Worker terminated mid-call (child process)', () => {
  it('ends the worker and leaves the process running, however the call was failing', async function () {
    this.timeout(120_000);
    const child = await runNodeIsolated(CHILD, [], { timeoutMs: 110_000, env: { GUESTMEM_TERMINATE_ROUNDS: '200' } });
    assert.equal(child.timedOut, false, 'the child hung');
    assert.equal(child.signal, null, `the child was killed by ${child.signal}: ${child.stderr}`);
    assert.equal(child.status, 0, child.stderr);
    assert.deepEqual(JSON.parse(child.stdout.trim()), { terminated: 200 });
  });
});
