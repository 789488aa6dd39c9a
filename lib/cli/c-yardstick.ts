// The C yardsticks of `guestmem bench` (bench/*.c): compiled at bench time into a
// temporary directory with the host's cc, so that both sides of a ratio run on the same
// machine in the same run. They ship with the repository, not the package.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PACKAGE_ROOT } from './vm-command';

/** A compiled yardstick, or why there is none. */
export type Yardstick = { binary: string } | { note: string };

/** Compiles bench/`name`.c; a note (why) where it cannot. */
export function buildYardstick(name: string): Yardstick {
  const source = path.join(PACKAGE_ROOT, 'bench', `${name}.c`);
  if (!fs.existsSync(source)) return { note: `no ${source} (the C yardstick ships with the repository, not the package)` };
  const binary = path.join(fs.mkdtempSync(path.join(os.tmpdir(), `guestmem-${name}-`)), name);
  const result = spawnSync('cc', ['-O2', '-o', binary, source], { encoding: 'utf8' });
  if (result.status !== 0) return { note: `cannot compile the C yardstick: ${result.error?.message ?? result.stderr.trim()}` };
  return { binary };
}

/** Removes a compiled yardstick's directory. */
export function removeYardstick(yardstick: Yardstick): void {
  if ('binary' in yardstick) fs.rmSync(path.dirname(yardstick.binary), { recursive: true, force: true });
}
