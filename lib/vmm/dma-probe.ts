// Asks the edu device whether it can read a guest page: it copies the page's first bytes to
// a scratch page that stays DMA-mapped (at an IOVA above the blocks, below edu's 256 MiB
// reach), and the scratch page tells whether they arrived. The demo and the tests use it.

import type { AssignedDevice } from '../vfio/assigned-device';
import { EduDevice } from '../vfio/edu-device';
import { SharedMemory } from '../kvm/shared-memory';
import type { RamBlock } from '../memory/ram-block';

export const SCRATCH_IOVA = 200 * (1 << 20);
const PROBE_BYTES = 64;

/**
 * Proves what a device can reach: the edu device copies bytes by DMA from a guest address into
 * a scratch page the host reads.
 */
export class DmaProbe implements Disposable {
  readonly edu: EduDevice;
  private readonly scratch: SharedMemory;

  constructor(private readonly assigned: AssignedDevice) {
    this.edu = new EduDevice(assigned.device);
    this.edu.enableBusMaster();
    this.scratch = SharedMemory.create(4096, 'dma-probe-scratch');
    assigned.dma.map(this.scratch.address, SCRATCH_IOVA, 4096);
  }

  /** True if the device read the page at `offset` of `block` (through iova = gpa). */
  async canRead(block: RamBlock, offset: number, marker: number): Promise<boolean> {
    const page = block.shared.view(offset, PROBE_BYTES);
    const scratch = this.scratch.view(0, PROBE_BYTES);
    scratch.fill(marker ^ 0xff);
    page.fill(marker);
    await this.edu.copy(block.gpa + offset, SCRATCH_IOVA, PROBE_BYTES);
    return scratch.every((b) => b === marker);
  }

  /** The first `length` bytes (at most EDU_MAX_DMA) of what the device reads at `iova`. */
  async read(iova: number, length: number): Promise<Buffer> {
    const scratch = this.scratch.view(0, length);
    scratch.fill(0);
    await this.edu.copy(iova, SCRATCH_IOVA, length);
    return Buffer.from(scratch);
  }

  /** Unmaps the scratch page from the device and frees it. */
  close(): void {
    this.assigned.dma.unmap(SCRATCH_IOVA, 4096);
    this.scratch.close();
  }

  /** Closes it: `using` calls this at the end of its scope. */
  [Symbol.dispose](): void {
    this.close();
  }
}
