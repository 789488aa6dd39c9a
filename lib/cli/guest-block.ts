// Where a real VM's RAM block may lie: below x86's widest guest physical address. KVM
// refuses a memslot past the host's MAXPHYADDR (kvm_arch_prepare_memory_region), and a
// gpa + size past 2^64 wraps; both are found here, before any syscall, as usage errors
// (exit 2) naming the options or the line to fix, not as a failed ioctl after the VM exists.

import { formatBytes } from './sizes';
import { GUEST_PHYS_LIMIT } from './qemu-trace';
import { UsageError } from './usage-error';

/** Refuses a block at `gpa` of `size` bytes that no guest can hold; `where` names what set them. */
export function checkGuestBlock(gpa: number | bigint, size: number | bigint, where: string): void {
  const end = BigInt(gpa) + BigInt(size);
  if (end <= GUEST_PHYS_LIMIT) return;
  throw new UsageError(
    `${where}: a block of ${formatBytes(size)} at gpa 0x${gpa.toString(16)} ends at 0x${end.toString(16)}, ` +
      `past 2^52 (x86's widest guest physical address${end >= 1n << 64n ? '; it even wraps past 2^64' : ''}): no VM can map it`,
  );
}
