// A PCI device made ready for DMA the way a VMM assigns it: through iommufd (preferred:
// no 65535-mapping limit) or a VFIO type1 container. One object owns every fd involved.

import fs from 'node:fs';
import type { DmaBackend, DmaMapper } from './dma-mapper';
import { GuestmemError } from '../common/errors';
import { Iommufd } from './iommufd';
import { VfioContainer, VFIO_TYPE1v2_IOMMU } from './vfio-type1';
import { VfioDevice } from './vfio-device';
import { pciDevice } from './vfio-sysfs';

/** How {@link AssignedDevice.open} reaches the device's DMA: iommufd, type1 or the best present. */
export interface AssignOptions {
  /** 'auto' takes iommufd where the device has a cdev and /dev/iommu exists, else type1. */
  backend?: DmaBackend | 'auto';
}

/**
 * A PCI device made ready for DMA as a VMM assigns it, through iommufd or a VFIO type1
 * container; one object owns every fd involved.
 */
export class AssignedDevice implements Disposable {
  private constructor(
    readonly bdf: string,
    readonly device: VfioDevice,
    readonly dma: DmaMapper,
    private readonly owners: Array<{ close(): void }>,
  ) {}

  get backend(): DmaBackend {
    return this.dma.backend;
  }

  /**
   * Opens the device at `bdf` (bound to vfio-pci) for DMA: through iommufd where the device
   * has a VFIO cdev and /dev/iommu exists (no mapping limit), else through a VFIO type1
   * container with its IOMMU group (`options.backend` chooses).
   *
   * @param bdf the PCI address, `0000:00:01.0`
   * @throws GuestmemError `ERR_GUESTMEM_UNSUPPORTED` saying what to do when the device is not
   *   bound to vfio-pci, has no IOMMU group, or cannot use the back end asked for
   */
  static open(bdf: string, options: AssignOptions = {}): AssignedDevice {
    const info = pciDevice(bdf);
    if (info.driver !== 'vfio-pci') {
      throw new GuestmemError(
        'ERR_GUESTMEM_UNSUPPORTED',
        `${info.bdf} is bound to ${info.driver ?? 'no driver'}, not vfio-pci: ` +
          `echo vfio-pci > /sys/bus/pci/devices/${info.bdf}/driver_override && echo ${info.bdf} > /sys/bus/pci/drivers_probe`,
      );
    }
    const wanted = options.backend ?? 'auto';
    const iommufdUsable = info.cdev !== null && fs.existsSync('/dev/iommu');
    if (wanted === 'iommufd' || (wanted === 'auto' && iommufdUsable)) {
      if (!iommufdUsable) {
        throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `${info.bdf} cannot use iommufd: ${info.cdev ? 'no /dev/iommu' : 'no VFIO cdev (CONFIG_VFIO_DEVICE_CDEV)'}`);
      }
      return AssignedDevice.openIommufd(info.bdf, info.cdev!);
    }
    if (info.iommuGroup === null) {
      throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `${info.bdf} has no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on)`);
    }
    return AssignedDevice.openType1(info.bdf, info.iommuGroup);
  }

  private static openIommufd(bdf: string, cdev: string): AssignedDevice {
    const iommufd = Iommufd.open();
    try {
      const device = VfioDevice.openCdev(cdev, bdf);
      try {
        device.bindIommufd(iommufd);
        const ioas = iommufd.allocIoas();
        device.attachIoas(ioas);
        // The device must close before the iommufd that its binding refers to.
        return new AssignedDevice(bdf, device, ioas, [device, iommufd]);
      } catch (error) {
        device.close();
        throw error;
      }
    } catch (error) {
      iommufd.close();
      throw error;
    }
  }

  private static openType1(bdf: string, group: number): AssignedDevice {
    const container = VfioContainer.open();
    try {
      if (!container.checkExtension(VFIO_TYPE1v2_IOMMU)) {
        throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', 'the VFIO container does not support the type1v2 IOMMU');
      }
      const vfioGroup = container.addGroup(group);
      container.setIommu(VFIO_TYPE1v2_IOMMU);
      const device = vfioGroup.openDevice(bdf);
      return new AssignedDevice(bdf, device, container, [container]);
    } catch (error) {
      container.close();
      throw error;
    }
  }

  /** Closes every fd it owns (the kernel drops the device's DMA mappings with them); idempotent. */
  close(): void {
    for (const owner of this.owners) owner.close();
  }

  /** Closes it: `using` calls this at the end of its scope. */
  [Symbol.dispose](): void {
    this.close();
  }
}
