// 64-bit long mode for the guest programs, set up from outside as KVM's selftests do: an
// identity map of guest physical memory in 2 MiB pages (every x86-64 CPU has them; 1 GiB
// pages need PDPE1GB), and the control registers and flat segments of long mode. Guest
// programs are then plain 64-bit code that can reach any block below the map's end.

import type { SpecialRegisters } from './vcpu';
import { outOfRange } from '../common/errors';

const PAGE = 4096;
const GiB = 1n << 30n;
const TWO_MiB = 1n << 21n;
const ENTRIES = 512;

const PTE_PRESENT = 1n;
const PTE_WRITABLE = 2n;
const PTE_LARGE = 1n << 7n;

const CR0_PE = 1n;
const CR0_MP = 1n << 1n;
const CR0_ET = 1n << 4n;
const CR0_NE = 1n << 5n;
const CR0_WP = 1n << 16n;
const CR0_PG = 1n << 31n;
const CR4_PAE = 1n << 5n;
const EFER_LME = 1n << 8n;
const EFER_LMA = 1n << 10n;

/** Page tables that identity-map [0, end): their bytes and where the PML4 lies. */
export interface IdentityMap {
  /** Bytes to place at `gpa`: PML4, then the PDPTs, then the page directories. */
  bytes: Uint8Array;
  gpa: bigint;
  /** End of the mapped space: `end` rounded up to 1 GiB. */
  mappedEnd: bigint;
}

/** The size in bytes of the tables that map [0, end). */
export function identityMapSize(end: bigint): number {
  const directories = Number((end + GiB - 1n) / GiB);
  const pdpts = Math.ceil(directories / ENTRIES);
  if (pdpts > ENTRIES) throw outOfRange(`cannot identity-map past 256 TiB (asked for 0x${end.toString(16)})`);
  return (1 + pdpts + directories) * PAGE;
}

/**
 * Builds the tables for [0, end) to be loaded at `gpa` (4 KiB aligned). With `encryptionBit`
 * (an SEV-SNP guest's C-bit, snp-encryption-bit.ts) every entry has that bit set: the tables
 * themselves and all the memory they map are private, as the launch measured them; the guest
 * clears it where it shares a page.
 */
export function identityMap(end: bigint, gpa: bigint, encryptionBit?: number): IdentityMap {
  const c = encryptionMask(encryptionBit, end);
  const directories = Number((end + GiB - 1n) / GiB);
  const pdpts = Math.ceil(directories / ENTRIES);
  const bytes = new Uint8Array(identityMapSize(end));
  const words = new BigUint64Array(bytes.buffer);
  const pml4 = 0;
  const firstPdpt = 1;
  const firstDirectory = 1 + pdpts;
  const pageGpa = (index: number) => gpa + BigInt(index * PAGE);
  for (let p = 0; p < pdpts; p++) words[pml4 * ENTRIES + p] = pageGpa(firstPdpt + p) | PTE_PRESENT | PTE_WRITABLE | c;
  for (let d = 0; d < directories; d++) {
    words[firstPdpt * ENTRIES + d] = pageGpa(firstDirectory + d) | PTE_PRESENT | PTE_WRITABLE | c;
    const base = (firstDirectory + d) * ENTRIES;
    for (let e = 0; e < ENTRIES; e++) {
      words[base + e] = (BigInt(d) * GiB + BigInt(e) * TWO_MiB) | PTE_PRESENT | PTE_WRITABLE | PTE_LARGE | c;
    }
  }
  return { bytes, gpa, mappedEnd: BigInt(directories) * GiB };
}

/** The C-bit as a mask (0n without one); it must lie above every address the map covers. */
export function encryptionMask(encryptionBit: number | undefined, end: bigint): bigint {
  if (encryptionBit === undefined) return 0n;
  if (!Number.isInteger(encryptionBit) || encryptionBit < 32 || encryptionBit > 63) {
    throw outOfRange(`the encryption bit must be an integer in [32, 63], got ${encryptionBit}`);
  }
  const mask = 1n << BigInt(encryptionBit);
  if (((end + GiB - 1n) / GiB) * GiB > mask) throw outOfRange(`the identity map's end 0x${end.toString(16)} reaches the encryption bit ${encryptionBit}`);
  return mask;
}

function flatSegment(selector: number, code: boolean) {
  return {
    base: 0n,
    limit: 0xffffffff,
    selector,
    type: code ? 0xb : 0x3, // execute/read accessed; read/write accessed
    present: 1,
    dpl: 0,
    db: code ? 0 : 1, // a 64-bit code segment must have D clear
    s: 1,
    l: code ? 1 : 0,
    g: 1,
    avl: 0,
    unusable: 0,
  };
}

/** `sregs` (as KVM_GET_SREGS gave them) switched to long mode with paging at `pml4`. */
export function longModeRegisters(sregs: SpecialRegisters, pml4: bigint): SpecialRegisters {
  const data = flatSegment(0x10, false);
  return {
    ...sregs,
    cs: flatSegment(0x08, true),
    ds: data,
    es: data,
    fs: data,
    gs: data,
    ss: data,
    // VMX's entry checks want a busy 64-bit TSS; SVM does not mind one.
    tr: { ...sregs.tr, base: 0n, limit: 0x67, selector: 0x18, type: 0xb, present: 1, s: 0, unusable: 0 },
    // No descriptor tables: the programs never load a segment or take an interrupt, and an
    // exception with an empty IDT is a clean triple fault (KVM_EXIT_SHUTDOWN) instead of a
    // walk through whatever lies at address 0.
    gdt: { base: 0n, limit: 0 },
    idt: { base: 0n, limit: 0 },
    cr0: CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG,
    cr3: pml4,
    cr4: CR4_PAE,
    efer: EFER_LME | EFER_LMA,
  };
}
