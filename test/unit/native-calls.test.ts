// Counting crossings into C++ is asked for (a benchmark, convert's report, a test), not paid
// by every call: with counting off, native() is the addon itself; on, a counting copy.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native, nativeCalls } from '../../lib/common/native';

describe('native calls are counted where asked for', () => {
  afterEach(() => {
    nativeCalls.enabled = false;
  });

  it('off: native() is one object whose calls count nothing; on: each call counts once', () => {
    const addon = native();
    assert.equal(native(), addon);
    const before = nativeCalls.count;
    fs.closeSync(native().memfdCreate('uncounted'));
    assert.equal(nativeCalls.count, before);
    nativeCalls.enabled = true;
    const counting = native();
    assert.notEqual(counting, addon);
    assert.equal(native(), counting, 'one counting copy, made once');
    fs.closeSync(native().memfdCreate('counted'));
    assert.equal(nativeCalls.count, before + 1);
    // Constants and classes are the addon's own.
    assert.equal(counting.maxWindow, addon.maxWindow);
    nativeCalls.enabled = false;
    assert.equal(native(), addon);
  });
});
