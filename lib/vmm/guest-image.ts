// Where a guest program and what it needs sit in guest memory, from the boot address up:
// the boot-info page, the page tables of the identity map, the program, one stack per
// vCPU. All of it lies in one RAM block and is shared (the host writes it), so a program
// must never convert its own boot region private.

import fs from 'node:fs';
import path from 'node:path';
import { GuestmemError, invalidArgValue } from '../common/errors';
import { BOOT_INFO_SIZE } from './boot-info';
import { identityMapSize } from './long-mode';

const PAGE = 4096n;
export const STACK_SIZE = 16 * 1024;

/**
 * The programs in guest/, assembled into dist/guest/ by scripts/build-guests.sh. secret-snp
 * and secret-tdx run only on an SNP VM and a TD (programs/index.ts says which).
 */
export const GUEST_PROGRAMS = ['secret', 'random', 'loop', 'requests', 'misbehave', 'plug', 'secret-snp', 'secret-tdx'] as const;
/** The names of the guest programs built from guest/*.s. */
export type GuestProgramName = (typeof GUEST_PROGRAMS)[number];

const GUEST_DIRECTORY = path.resolve(__dirname, '..', '..', 'guest');

/** The flat binary of a built guest program. */
export function guestProgram(name: string): Buffer {
  if (!(GUEST_PROGRAMS as readonly string[]).includes(name)) {
    throw invalidArgValue(`unknown guest program '${name}'; known: ${GUEST_PROGRAMS.join(', ')}`);
  }
  return guestBinary(name);
}

/** A flat binary of dist/guest/ by name: a program, or a piece the VMM places (tdx-reset). */
export function guestBinary(name: string): Buffer {
  const file = path.join(GUEST_DIRECTORY, `${name}.bin`);
  try {
    return fs.readFileSync(file);
  } catch (error) {
    throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `guest program ${name} is not built (${file}): run \`npm run build:guests\` (needs binutils)`, { cause: error });
  }
}

export interface GuestLayout {
  bootInfo: bigint;
  pageTables: bigint;
  image: bigint;
  stacks: bigint;
  /** First byte after the region. */
  end: bigint;
  /** The identity map covers [0, mapEnd). */
  mapEnd: bigint;
}

function pageAlign(value: bigint): bigint {
  return ((value + PAGE - 1n) / PAGE) * PAGE;
}

export function guestLayout(bootGpa: bigint, imageSize: number, vcpus: number, mapEnd: bigint): GuestLayout {
  const pageTables = bootGpa + BigInt(BOOT_INFO_SIZE);
  const image = pageTables + BigInt(identityMapSize(mapEnd));
  const stacks = pageAlign(image + BigInt(imageSize));
  return { bootInfo: bootGpa, pageTables, image, stacks, end: stacks + BigInt(vcpus * STACK_SIZE), mapEnd };
}
