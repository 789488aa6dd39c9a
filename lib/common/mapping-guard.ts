// The two mmap requests the kernel grants but JavaScript cannot survive: a read-only
// mapping handed out as memory JS may write (a write is SIGSEGV), and a mapping that runs
// past the end of its file (a read there is SIGBUS). The raw addon is public, so these are
// refused here, in front of it, before the mapping exists: read-only mappings are not
// offered (no view rather than a view that kills the process), and a mapping of a regular
// file (a memfd) must end within the file's size as fstat sees it now. A file shrunk
// afterwards (ftruncate) can still fault: do not shrink a file that is mapped.

import fs from 'node:fs';
import { invalidArgValue, outOfRange } from './errors';

type Mmap = (fd: number, length: number | bigint, offset: number | bigint, writable: boolean) => unknown;

function isByteCount(value: unknown): value is number | bigint {
  return (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) || (typeof value === 'bigint' && value >= 0n);
}

/** Checks an mmap request, then makes it; arguments of the wrong type go on to the addon's own checks. */
export function guardedMmap(mmap: Mmap): Mmap {
  return (fd, length, offset, writable) => {
    if (writable !== true) {
      throw invalidArgValue(
        'mmap: a read-only mapping is not offered: its memory would reach JavaScript as writable, and a write would be SIGSEGV; map it writable',
      );
    }
    if (Number.isSafeInteger(fd) && fd >= 0 && isByteCount(length) && isByteCount(offset)) {
      const stat = fs.fstatSync(fd, { bigint: true });
      const end = BigInt(offset) + BigInt(length);
      if (stat.isFile() && end > stat.size) {
        throw outOfRange(
          `mmap: [0x${BigInt(offset).toString(16)}, +0x${BigInt(length).toString(16)}) runs past the end of the ${stat.size}-byte file ` +
            '(a read there would be SIGBUS); size the file first (ftruncate)',
        );
      }
    }
    return mmap(fd, length, offset, writable);
  };
}
