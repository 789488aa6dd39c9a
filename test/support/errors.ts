import assert from 'node:assert/strict';

/** Asserts a Node-style system error: code, negative errno, syscall, and a message naming both. */
export function assertSystemError(fn: () => unknown, code: string, syscall: string): void {
  assert.throws(fn, (error: NodeJS.ErrnoException) => {
    assert.equal(error.code, code, error.message);
    assert.equal(error.syscall, syscall);
    assert.equal(typeof error.errno, 'number');
    assert.ok(error.errno! < 0, 'errno is negative, as in Node');
    assert.match(error.message, new RegExp(`^${code}: .*, ${syscall.replace(/[()]/g, '\\$&')}$`));
    return true;
  });
}
