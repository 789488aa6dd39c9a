// Hostile input to the library: fast-check properties over the public API with arbitrary
// values (NaN, ±Infinity, negatives, fractions, strings, bigints past 2^64, null, objects
// with __proto__, symbols, listeners missing methods, listeners that re-enter or never
// settle), each asserting a correct result or a coded error within a time bound. Each
// group runs in its own child process: a crash or a hang fails its test, naming the case
// that was running, instead of killing mocha.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
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

  const lastCases = new Map<string, string>();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-hostile-api-'));

  before(async () => {
    const outcomes = await inPool(names, CHILD_CONCURRENCY, (name) =>
      runNodeIsolated(CHILD, [name], { timeoutMs: GROUP_TIMEOUT_MS, env: { GUESTMEM_TEST_PROGRESS_FILE: path.join(dir, name) } }),
    );
    names.forEach((name, i) => {
      results.set(name, outcomes[i]!);
      const log = fs.existsSync(path.join(dir, name)) ? fs.readFileSync(path.join(dir, name), 'utf8').trimEnd() : '';
      lastCases.set(name, log.slice(log.lastIndexOf('\n') + 1) || '(none started)');
    });
  });

  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const name of names) {
    it(`${name}: a correct result or a coded error, no crash, no hang`, () => {
      const result = results.get(name)!;
      const lastCase = lastCases.get(name)!;
      const failure = result.stderr;
      assert.equal(result.timedOut, false, `hung for ${GROUP_TIMEOUT_MS} ms in ${lastCase}`);
      assert.equal(result.signal, null, `crashed with ${result.signal} in ${lastCase}`);
      assert.equal(result.status, 0, `exit ${result.status}; last case ${lastCase}\n${failure.slice(0, 4000)}`);
      assert.match(result.stdout, new RegExp(`group ${name}: every property held`));
      assert.ok(result.maxRssKiB !== null && result.maxRssKiB <= MAX_RSS_MIB * 1024, `peak memory ${result.maxRssKiB} KiB`);
    });
  }
});
