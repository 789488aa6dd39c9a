// Hostile input to the library: fast-check properties over the public API with arbitrary
// values (NaN, ±Infinity, negatives, fractions, strings, bigints past 2^64, null, objects
// with __proto__, symbols, listeners missing methods, listeners that re-enter or never
// settle), each asserting a correct result or a coded error within a time bound. Each
// group runs in its own child process: a crash or a hang fails its test, naming the case
// that was running, instead of killing mocha.

import assert from 'node:assert/strict';
import path from 'node:path';
import { GROUPS } from '../support/hostile-api-groups';
import { CHILD_CONCURRENCY, inPool, runNodeIsolated, type IsolatedResult } from '../support/isolated';

const CHILD = path.join(__dirname, '..', 'support', 'hostile-api-child.js');
const GROUP_TIMEOUT_MS = 60_000;
const MAX_RSS_MIB = 400;

describe('hostile input: the library API, each group in its own process', function () {
  this.timeout(240_000);
  const names = Object.keys(GROUPS);
  const results = new Map<string, IsolatedResult>();

  before(async () => {
    const outcomes = await inPool(names, CHILD_CONCURRENCY, (name) => runNodeIsolated(CHILD, [name], { timeoutMs: GROUP_TIMEOUT_MS }));
    names.forEach((name, i) => results.set(name, outcomes[i]!));
  });

  for (const name of names) {
    it(`${name}: a correct result or a coded error, no crash, no hang`, () => {
      const result = results.get(name)!;
      const lines = result.stderr.trimEnd().split('\n');
      const lastCase = [...lines].reverse().find((line) => line.startsWith('case ')) ?? '(none started)';
      const failure = lines.filter((line) => !line.startsWith('case ')).join('\n');
      assert.equal(result.timedOut, false, `hung for ${GROUP_TIMEOUT_MS} ms in ${lastCase}`);
      assert.equal(result.signal, null, `crashed with ${result.signal} in ${lastCase}`);
      assert.equal(result.status, 0, `exit ${result.status}; last case ${lastCase}\n${failure.slice(0, 4000)}`);
      assert.match(result.stdout, new RegExp(`group ${name}: every property held`));
      assert.ok(result.maxRssKiB !== null && result.maxRssKiB <= MAX_RSS_MIB * 1024, `peak memory ${result.maxRssKiB} KiB`);
    });
  }
});
