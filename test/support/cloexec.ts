import fs from 'node:fs';

const O_CLOEXEC = 0o2000000;

/** Whether an fd of this process has O_CLOEXEC, from /proc/self/fdinfo. */
export function isCloexec(fd: number): boolean {
  const flags = /^flags:\s+([0-7]+)$/m.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1]!;
  return (Number.parseInt(flags, 8) & O_CLOEXEC) !== 0;
}
