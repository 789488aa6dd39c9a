// Run in a child process by test/unit/big-memory.test.ts, so that a crash (an abort, a
// double free) fails that test instead of killing mocha. Exercises shared memory of sizes
// past Node's buffer limit and prints one JSON line of what it saw.

import fs from 'node:fs';
import v8 from 'node:v8';
import vm from 'node:vm';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { maxWindowBytes } from '../../lib/common/host-mapping';
import { native } from '../../lib/common/native';

const GiB = 1024 ** 3;
const PAGE = 4096;

function caught(fn: () => unknown): { name: string; code?: string } | null {
  try {
    fn();
    return null;
  } catch (error) {
    const e = error as Error & { code?: string };
    return { name: e.name, code: e.code };
  }
}

const size = 8 * GiB;
const memory = SharedMemory.create(size);
const pages = [0, size / 2, size - PAGE];
pages.forEach((offset, i) => memory.write(offset, Uint8Array.of(0x10 + i, 0x20 + i)));
const readBack = pages.map((offset) => [...memory.read(offset, 2)]);
const farWindow = memory.view(size - PAGE, PAGE);
farWindow[PAGE - 1] = 0x7f;
const tera = SharedMemory.create(1n << 40n);
tera.write((1n << 40n) - 1n, Uint8Array.of(0x33));

/** Whether a memfd of this name is still mapped in this process. */
function mapped(name: string): boolean {
  return fs.readFileSync('/proc/self/maps', 'utf8').includes(`/memfd:${name} `);
}

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

/** Collects garbage until `done` holds (finalizers run after the GC, on later turns). */
async function collectUntil(done: () => boolean): Promise<boolean> {
  for (let i = 0; i < 50 && !done(); i++) {
    gc();
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return done();
}

/** A window outlives its owner, and the mapping goes once the window is collected too. */
async function lifetime(): Promise<Record<string, unknown>> {
  let ownerCollected = false;
  const registry = new FinalizationRegistry(() => (ownerCollected = true));
  let window: Uint8Array | null = (() => {
    const owner = SharedMemory.create(size, 'lifetime-probe');
    registry.register(owner, null);
    owner.write(size - 1, Uint8Array.of(0x44));
    return owner.view(size - PAGE, PAGE);
  })();
  await collectUntil(() => ownerCollected);
  window[PAGE - 2] = 0x45;
  const result = { ownerCollected, afterOwnerGone: [window[PAGE - 2], window[PAGE - 1]], mappedWhileReferenced: mapped('lifetime-probe') };
  // eslint-disable-next-line no-useless-assignment -- dropping the last reference lets the GC collect the window
  window = null;
  return { ...result, unmappedOnceCollected: await collectUntil(() => !mapped('lifetime-probe')) };
}

const report = {
  size: memory.size.toString(),
  readBack,
  farByte: memory.read(size - 1, 1)[0],
  allocated: memory.allocatedBytes(),
  teraByte: tera.read((1n << 40n) - 1n, 1)[0],
  teraAllocated: tera.allocatedBytes(),
  maxWindow: maxWindowBytes(),
  wholeView: caught(() => memory.view(0, size)),
  wholeRead: caught(() => memory.read(0, size)),
  pastLimitRead: caught(() => memory.read(0, maxWindowBytes() + 1)),
  nativeNotAHandle: caught(() => native().mapWindow({} as never, 0, 2 ** 33)),
  nativeHugeWindow: (() => {
    // The addon alone, past every JS check: it must refuse, not abort.
    const fd = native().memfdCreate('past-limit');
    native().ftruncate(fd, size);
    const { handle } = native().mmap(fd, size, 0, true);
    const result = [caught(() => native().mapWindow(handle, 0, size)), caught(() => native().mapWindow(handle, 0, 2n ** 64n - 1n))];
    native().munmap(handle);
    return result;
  })(),
  // Past the address space (128 TiB on x86-64): the kernel's ENOMEM, not a crash.
  petabyte: caught(() => SharedMemory.create(1n << 50n)),
  pastOffT: caught(() => SharedMemory.create(1n << 63n)),
};
memory.close();
tera.close();
void lifetime().then((result) => process.stdout.write(JSON.stringify({ ...report, lifetime: result }) + '\n'));
