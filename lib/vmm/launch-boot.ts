// A confidential (SNP or TDX) guest's boot region goes into private memory through its VM's
// launch, not into shared memory: the bytes are staged in a page-aligned host mapping of
// their own, the region is converted to private (tracker, KVM attributes, VFIO listener, as
// any conversion), and the launch copies and measures the staged bytes into the
// guest_memfd pages. The staging mapping is unmapped afterwards.

import { SharedMemory } from '../kvm/shared-memory';
import type { ConfidentialLaunch, PrivateMemoryCheck } from '../kvm/vm-launch';
import type { GuestMemory } from '../memory/guest-memory';

/** What the library knows of [gpa, gpa + size): private in KVM's attributes and in a guest_memfd RAM block, or why not. */
export function privateMemoryCheck(memory: GuestMemory): PrivateMemoryCheck {
  return (gpa, size) => {
    const block = memory.blocks.find((b) => b.contains(gpa, size));
    if (!block) return 'it is not inside one RAM block (no guest_memfd of this memory backs it)';
    const offset = Number(gpa) - block.gpa;
    const shared = block.attributes.countShared({ offset, size: Number(size) });
    if (shared > 0) return `${shared} granule(s) of it are shared`;
    // KVM's attributes as the block last set them, and pages held back until repair().
    const granule = block.attributes.granularity;
    const first = Math.floor(offset / granule);
    const end = Math.ceil((offset + Number(size)) / granule);
    const overlaps = ([start, count]: [number, number]): boolean => start < end && start + count > first;
    if (block.kvmRuns('shared').some(overlaps)) return "part of it is shared in KVM's attributes";
    if (block.unsettledRuns.some(overlaps)) return 'part of it awaits repair() (the tracker and the kernel disagree)';
    return null;
  };
}

/**
 * Converts [gpa, gpa + size) private and has `launch` copy `parts` (each at its guest address
 * inside the region; the rest is zeroes) into it, measured.
 */
export async function measureIntoPrivate(launch: ConfidentialLaunch, memory: GuestMemory, gpa: bigint, size: bigint, parts: ReadonlyArray<readonly [bigint, Uint8Array]>): Promise<void> {
  await memory.convert(gpa, size, 'private');
  const staging = SharedMemory.create(size, 'guestmem-launch');
  try {
    for (const [at, bytes] of parts) staging.write(at - gpa, bytes);
    launch.measure({ gpa, size, source: staging.address }, privateMemoryCheck(memory));
  } finally {
    staging.close();
  }
}
