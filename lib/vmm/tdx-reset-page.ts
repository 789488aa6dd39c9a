// The page a TD starts in (guest/tdx-reset.s): the TDX module starts every vCPU of a TD at
// the reset vector, 0xfffffff0, in 32-bit protected mode with paging off, and KVM cannot set
// its registers (the kernel's TDX selftests load their td_boot code so that its jump lies
// there, and boot parameters beside it). guestmem places the last 4 KiB below 4 GiB: the
// trampoline at its start, the reset vector's jump to it in its last 16 bytes, and at
// PARAMS what the trampoline needs to enter the program as the long-mode entry of the other
// VM types does. The page is private and measured with the boot region
// (KVM_TDX_INIT_MEM_REGION), so the parameters are part of the TD's measurement.

import { outOfRange } from '../common/errors';
import { guestBinary } from './guest-image';

/** The reset page's guest physical address. */
export const TDX_RESET_PAGE_GPA = 0xfffff000n;
/** Where a TD's vCPUs start (Intel TDX module specification, the initial vCPU state). */
export const TDX_RESET_VECTOR = 0xfffffff0n;
export const TDX_RESET_PAGE_SIZE = 4096;
/** Offset of the parameters in the page; guest/tdx-reset.s reads them there (PARAM_*). */
export const TDX_RESET_PARAMS = 0xf00;

/** What the trampoline needs, each at TDX_RESET_PARAMS + 8 × its index. */
export interface TdxResetParams {
  /** The identity map's PML4: loaded into CR3 by 32-bit code, so below 4 GiB. */
  pageTables: bigint;
  /** The program's first instruction. */
  entry: bigint;
  /** vCPU i's stack ends at stacks + (i + 1) × stackSize. */
  stacks: bigint;
  stackSize: number;
  vcpus: number;
  bootInfo: bigint;
}

/** The built trampoline (dist/guest/tdx-reset.bin). */
export function tdxResetImage(): Buffer {
  return guestBinary('tdx-reset');
}

/** The reset page: `image` (the trampoline) with `params` written in. */
export function tdxResetPage(params: TdxResetParams, image: Uint8Array = tdxResetImage()): Uint8Array {
  if (image.length !== TDX_RESET_PAGE_SIZE) throw outOfRange(`the TD reset image must be ${TDX_RESET_PAGE_SIZE} bytes (its reset vector at 0x${(TDX_RESET_VECTOR - TDX_RESET_PAGE_GPA).toString(16)}), got ${image.length}`);
  if (params.pageTables >= 1n << 32n) throw outOfRange(`a TD's page tables must lie below 4 GiB (its 32-bit start loads CR3), got 0x${params.pageTables.toString(16)}`);
  const page = Uint8Array.from(image);
  const view = new DataView(page.buffer);
  const values = [params.pageTables, params.entry, params.stacks, BigInt(params.stackSize), BigInt(params.vcpus), params.bootInfo];
  values.forEach((value, i) => view.setBigUint64(TDX_RESET_PARAMS + 8 * i, value, true));
  return page;
}
