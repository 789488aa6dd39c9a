// The two mmap requests the kernel grants but JavaScript cannot survive: a read-only
// mapping handed out as memory JS may write (a write is SIGSEGV), and a mapping that runs
// past the end of its file (a read there is SIGBUS). Every mmap the package makes goes
// through HostMapping (host-mapping.ts), which asks these checks before the addon, so such a
// request is refused before the mapping exists: read-only mappings are not
// offered (no view rather than a view that kills the process), and a mapping of a regular
// file (a memfd) must end within the file's size as fstat sees it now. A file shrunk
// afterwards (ftruncate) can still fault: do not shrink a file that is mapped.

import fs from 'node:fs';
import { invalidArgValue, outOfRange } from './errors';

function isByteCount(value: unknown): value is number | bigint {
  return (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) || (typeof value === 'bigint' && value >= 0n);
}

/** Refuses an mmap request JavaScript could not survive; arguments of the wrong type go on to the addon's own checks. */
export function checkMmap(fd: unknown, length: unknown, offset: unknown, writable: unknown): void {
  if (writable !== true) {
    throw invalidArgValue(
      'mmap: a read-only mapping is not offered: its memory would reach JavaScript as writable, and a write would be SIGSEGV; map it writable',
    );
  }
  if (typeof fd === 'number' && Number.isSafeInteger(fd) && fd >= 0 && isByteCount(length) && isByteCount(offset)) {
    const stat = fs.fstatSync(fd, { bigint: true });
    const end = BigInt(offset) + BigInt(length);
    if (stat.isFile() && end > stat.size) {
      throw outOfRange(
        `mmap: [0x${BigInt(offset).toString(16)}, +0x${BigInt(length).toString(16)}) runs past the end of the ${stat.size}-byte file ` +
          '(a read there would be SIGBUS); size the file first (ftruncate)',
      );
    }
  }
}

/**
 * True when [address, address + length) lies in shared, readable and writable mappings of
 * this process, end to end (/proc/self/maps "rw-s": a memfd, shmem, a file): memory
 * JavaScript may be given windows over, or told to discard, without SIGSEGV. Private
 * mappings are refused: they include V8's heap and malloc's, which a write or a discard
 * through a window would corrupt. Guest RAM shared with KVM and a device is a shared mapping.
 */
export function isMappedSharedReadWrite(address: bigint, length: bigint): boolean {
  let text: string;
  try {
    text = fs.readFileSync('/proc/self/maps', 'utf8');
  } catch {
    return false;
  }
  const end = address + length;
  let covered = address;
  const areas = text.split('\n').filter(Boolean).map((line) => {
    const [range = '', perms = ''] = line.split(' ');
    const [start = '0', stop = '0'] = range.split('-');
    return { start: BigInt(`0x${start}`), stop: BigInt(`0x${stop}`), rw: perms.startsWith('rw') && perms[3] === 's' };
  }).sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  for (const area of areas) {
    if (area.stop <= covered) continue;
    if (area.start > covered || !area.rw) return false;
    covered = area.stop;
    if (covered >= end) return true;
  }
  return covered >= end;
}

/**
 * Refuses an address range that is not this process's shared read-write memory (adoptMapping,
 * madvise): anything else could be unmapped under a window (SIGSEGV) or be the heap.
 */
export function checkOurMemory(address: unknown, length: unknown, what: string): void {
  if (!isByteCount(address) || !isByteCount(length)) return; // the addon's own checks name it
  if (BigInt(length) > 0n && !isMappedSharedReadWrite(BigInt(address), BigInt(length))) {
    throw invalidArgValue(
      `${what}: [0x${BigInt(address).toString(16)}, +0x${BigInt(length).toString(16)}) is not a shared read-write mapping of this process (/proc/self/maps "rw-s"); ` +
        'only such memory (a memfd, shmem) can be adopted: anything else could be unmapped (SIGSEGV) or be the heap',
    );
  }
}
