// The guest programs as binutils sees them: each assembled again from guest/ with its labels
// (nm), linked flat as scripts/build-guests.sh links it, and disassembled by objdump, so a
// test can name a routine by its label and hold the shipped binary to the source.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..', '..');
const GUEST_SOURCES = path.join(ROOT, 'guest');

/** Why the guests cannot be assembled and disassembled here (a missing tool), or null. */
export function binutilsMissing(): string | null {
  const missing = ['as', 'ld', 'nm', 'objdump'].filter((tool) => {
    try {
      execFileSync(tool, ['--version'], { stdio: 'ignore' });
      return false;
    } catch {
      return true;
    }
  });
  return missing.length === 0 ? null : `binutils lacks ${missing.join(', ')} (apt-get install binutils)`;
}

/** A before() hook: pending with the reason where binutils is missing. */
export function requireBinutils(this: Mocha.Context): void {
  const missing = binutilsMissing();
  if (!missing) return;
  console.log(`      (skipped: ${missing})`);
  this.skip();
}

/** One instruction: its offset in the flat image, its bytes, and objdump's Intel-syntax text. */
export interface Instruction {
  offset: number;
  bytes: number[];
  text: string;
}

/** A guest source assembled: the flat image and each label's offset in it. */
export interface AssembledGuest {
  flat: Buffer;
  labels: Map<string, number>;
}

/** Assembles and links guest/`name`.s as build-guests.sh does, with its labels. */
export function assembleGuest(name: string): AssembledGuest {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-guest-'));
  try {
    const object = path.join(dir, `${name}.o`);
    const flat = path.join(dir, `${name}.bin`);
    execFileSync('as', ['--64', '-I', GUEST_SOURCES, '-o', object, path.join(GUEST_SOURCES, `${name}.s`)]);
    execFileSync('ld', ['-m', 'elf_x86_64', '-nostdlib', '--oformat', 'binary', '-Ttext', '0', '-e', 'start', '-o', flat, object]);
    const labels = new Map<string, number>();
    for (const line of execFileSync('nm', [object], { encoding: 'utf8' }).split('\n')) {
      const [value, type, label] = line.trim().split(/\s+/);
      if (label && (type === 't' || type === 'T')) labels.set(label, parseInt(value!, 16));
    }
    return { flat: fs.readFileSync(flat), labels };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** objdump's reading of `image[start, stop)` as `mode` code (offsets are the image's). */
export function disassemble(image: Uint8Array, mode: 'x86-64' | 'i386', start: number, stop: number): Instruction[] {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-disasm-'));
  try {
    const file = path.join(dir, 'image.bin');
    fs.writeFileSync(file, image);
    const machine = mode === 'x86-64' ? 'i386:x86-64' : 'i386';
    const out = execFileSync('objdump', ['-D', '-b', 'binary', `-m${machine}`, '-Mintel', '-w', `--start-address=${start}`, `--stop-address=${stop}`, file], { encoding: 'utf8' });
    const instructions: Instruction[] = [];
    for (const line of out.split('\n')) {
      const match = /^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t?(.*)$/.exec(line);
      if (!match) continue;
      instructions.push({ offset: parseInt(match[1]!, 16), bytes: match[2]!.trim().split(' ').map((b) => parseInt(b, 16)), text: match[3]!.replace(/\s+/g, ' ').trim() });
    }
    return instructions;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** The instructions of a guest between two of its labels. */
export function routine(guest: AssembledGuest, from: string, to: string, mode: 'x86-64' | 'i386' = 'x86-64'): Instruction[] {
  const start = guest.labels.get(from);
  const stop = guest.labels.get(to);
  if (start === undefined || stop === undefined) throw new Error(`no label ${start === undefined ? from : to} in the guest`);
  return disassemble(guest.flat, mode, start, stop);
}

/** The built image of a guest program (dist/guest/`name`.bin), as the VMM loads it. */
export function builtGuest(name: string): Buffer {
  return fs.readFileSync(path.join(ROOT, 'dist', 'guest', `${name}.bin`));
}

/** The `.set NAME, VALUE` numbers of an include file of guest/. */
export function includeNumbers(file: string): Map<string, bigint> {
  const numbers = new Map<string, bigint>();
  for (const line of fs.readFileSync(path.join(GUEST_SOURCES, file), 'utf8').split('\n')) {
    const match = /^\.set (\w+), (0x[0-9a-f]+|\d+)\b/i.exec(line);
    if (match) numbers.set(match[1]!, BigInt(match[2]!));
  }
  return numbers;
}
