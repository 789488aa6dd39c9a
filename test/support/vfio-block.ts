// The fixture of the kernel suites that fault a block with a VFIO listener on the edu
// device (fault-matrix.test.ts, plug.test.ts): a SW-protected VM, one block, its DMA
// listener, a DMA probe of the device's reach, fault injection cleared.

import { AssignedDevice } from '../../lib/vfio/assigned-device';
import type { DmaBackend } from '../../lib/vfio/dma-mapper';
import { DmaProbe } from '../../lib/vmm/dma-probe';
import { injectFaults } from '../../lib/common/fault-injection';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { Kvm } from '../../lib/kvm/kvm';
import type { RamBlock } from '../../lib/memory/ram-block';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import { findEdu } from './edu';

const MiB = 1 << 20;

export interface Fixture {
  kvm: Kvm;
  memory: GuestMemory;
  assigned: AssignedDevice;
  block: RamBlock;
  listener: VfioDmaListener;
  probe: DmaProbe;
  /** type1's dma_avail with nothing but the probe's scratch page mapped. */
  baseline: number | null;
}

export async function setUp(backend: DmaBackend, gpa = 16 * MiB, size = MiB, plugBlockSize?: number): Promise<Fixture> {
  injectFaults('');
  const kvm = Kvm.open();
  const memory = new GuestMemory(kvm.createVm('sw-protected'));
  const assigned = AssignedDevice.open(findEdu()!, { backend });
  const probe = new DmaProbe(assigned);
  const block = memory.addBlock({ gpa, size, plugBlockSize });
  const listener = new VfioDmaListener(assigned.dma, { sharedAddress: block.shared.address, gpa: BigInt(block.gpa) });
  await block.register(listener);
  return { kvm, memory, assigned, block, listener, probe, baseline: assigned.dma.mappingsAvailable() };
}

export async function tearDown(f: Fixture | undefined): Promise<void> {
  injectFaults('');
  if (!f) return;
  await f.memory.shutdown();
  f.probe.close();
  f.assigned.close();
  f.kvm.close();
}

/** The fault sites of each step, as GUESTMEM_FAULTS names them, on this DMA back end. */
export function sites(backend: DmaBackend): Record<'attributes' | 'backing' | 'map' | 'unmap', string> {
  return {
    attributes: 'ioctl:KVM_SET_MEMORY_ATTRIBUTES',
    backing: 'fallocate',
    map: backend === 'type1' ? 'ioctl:VFIO_IOMMU_MAP_DMA' : 'ioctl:IOMMU_IOAS_MAP',
    unmap: backend === 'type1' ? 'ioctl:VFIO_IOMMU_UNMAP_DMA' : 'ioctl:IOMMU_IOAS_UNMAP',
  };
}
