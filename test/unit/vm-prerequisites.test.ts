// A machine without QEMU or the kernel build tools: `guestmem vm` (and so `guestmem demo`)
// and the kernel build say which Debian packages to install, and exit 2.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GUESTMEM } from '../support/cli';

const ROOT = path.resolve(__dirname, '..', '..', '..');

/** A PATH holding only the named tools, so that everything else is "not installed". */
function pathWith(tools: string[]): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-path-'));
  for (const tool of tools) {
    const found = spawnSync('bash', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim();
    assert.ok(found, `${tool} is on this machine`);
    fs.symlinkSync(found, path.join(dir, tool));
  }
  return dir;
}

describe('harness prerequisites', () => {
  const basics = ['bash', 'dirname', 'cat', 'tr', 'node'];

  it('guestmem vm without QEMU names the packages and exits 2', () => {
    const bin = pathWith(basics);
    const result = spawnSync(process.execPath, [GUESTMEM, 'vm', '--', 'probe'], { encoding: 'utf8', env: { ...process.env, PATH: bin } });
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /qemu-system-x86_64 is missing; install the harness's packages: apt-get install qemu-system-x86 busybox-static/);
    fs.rmSync(bin, { recursive: true });
  });

  it('the kernel build without its tools names the packages and exits 2', () => {
    const bin = pathWith([...basics, 'sha256sum', 'cut', 'dpkg-query', 'stat']);
    const cache = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-cache-'));
    const result = spawnSync(path.join(ROOT, 'scripts', 'vm', 'build-kernel.sh'), [], {
      encoding: 'utf8',
      env: { ...process.env, PATH: bin, GUESTMEM_CACHE: cache },
    });
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /missing '\w+'; install: apt-get install make gcc flex bison bc libelf-dev libssl-dev cpio xz-utils linux-source-6.12/);
    fs.rmSync(bin, { recursive: true });
    fs.rmSync(cache, { recursive: true });
  });

  it('the kernel build names the kernels it knows when given another, and exits 2', () => {
    for (const [args, env] of [[['--kernel', '6.1'], {}], [[], { GUESTMEM_KERNEL: '7' }]] as const) {
      const result = spawnSync(path.join(ROOT, 'scripts', 'vm', 'build-kernel.sh'), args, { encoding: 'utf8', env: { ...process.env, ...env } });
      assert.equal(result.status, 2, result.stderr);
      assert.match(result.stderr, /unknown kernel '(6\.1|7)' \(GUESTMEM_KERNEL or --kernel\): choose 6\.12 or 7\.2/);
      assert.equal(result.stdout, '');
    }
  });
});
