import { spawnSync } from 'node:child_process';
import path from 'node:path';

export const GUESTMEM = path.resolve(__dirname, '..', '..', '..', 'bin', 'guestmem.js');

export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the guestmem command as a user would, from the package's bin. */
export function guestmem(args: string[], input?: string, env: Record<string, string> = {}): CliResult {
  const result = spawnSync(process.execPath, [GUESTMEM, ...args], {
    input,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    timeout: 600_000,
  });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}
