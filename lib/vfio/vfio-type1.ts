// VFIO type1: a container (/dev/vfio/vfio) holding groups (/dev/vfio/N), with the type1v2
// IOMMU set on it. The container is the DmaMapper.

import fs from 'node:fs';
import type { Bytes } from '../common/byte-range';
import { GuestmemError } from '../common/errors';
import { FdOwner } from '../common/fd-owner';
import { DmaBatches, type DmaExtent, type DmaMapper } from './dma-mapper';
import { native, type Type1IommuInfo } from '../common/native';
import { VfioDevice } from './vfio-device';

export const VFIO_API_VERSION = 0;
/** The VFIO IOMMU type set on a container: type1 version 2. */
export const VFIO_TYPE1v2_IOMMU = 3;
export const VFIO_GROUP_FLAGS_VIABLE = 1;

/**
 * A VFIO type1 container (/dev/vfio/vfio) with its groups: the type1 DMA back end. Owns its fd
 * and its groups'.
 */
export class VfioContainer extends FdOwner implements DmaMapper {
  readonly backend = 'type1' as const;
  private iommuSet = false;
  private readonly batches = new DmaBatches({
    map: (extents, granule) => native().vfioMapDmaRuns(this.fd, extents, granule),
    unmap: (extents, granule) => native().vfioUnmapDmaRuns(this.fd, extents, granule),
  }, 'DMA');

  private constructor(fd: number) {
    super(fd, 'VFIO container');
  }

  /** Opens a container (/dev/vfio/vfio, or `path`) and checks its VFIO API version. */
  static open(path = '/dev/vfio/vfio'): VfioContainer {
    const container = new VfioContainer(fs.openSync(path, 'r+'));
    const version = container.apiVersion;
    if (version !== VFIO_API_VERSION) {
      container.close();
      throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `VFIO API version ${version}, expected ${VFIO_API_VERSION}`);
    }
    return container;
  }

  get apiVersion(): number {
    return native().vfioGetApiVersion(this.fd);
  }

  /** VFIO_CHECK_EXTENSION: whether the container supports an IOMMU type or feature. */
  checkExtension(extension: number): boolean {
    return native().vfioCheckExtension(this.fd, extension) > 0;
  }

  /** VFIO_SET_IOMMU; needs at least one group in the container first. */
  setIommu(type = VFIO_TYPE1v2_IOMMU): void {
    native().vfioSetIommu(this.fd, type);
    this.iommuSet = true;
  }

  get hasIommu(): boolean {
    return this.iommuSet;
  }

  /** Page sizes, usable IOVA ranges and dma-avail, from VFIO_IOMMU_GET_INFO's capability chain. */
  iommuInfo(): Type1IommuInfo {
    return native().vfioIommuGetInfo(this.fd);
  }

  mappingsAvailable(): number | null {
    return this.iommuInfo().dmaAvailable ?? null;
  }

  /** How another thread reaches this container: its fd by number (borrowed-dma-mapper.ts). */
  toThreadDescriptor(): { kind: 'type1'; fd: number } {
    return { kind: 'type1', fd: this.fd };
  }

  /** Maps [iova, iova + size) to the host range at vaddr, as one mapping (one dma entry). */
  map(vaddr: Bytes, iova: Bytes, size: Bytes): void {
    this.batches.map(vaddr, iova, size);
  }

  /** Maps each extent as size / granule mappings in one native call, all or nothing. */
  mapRuns(extents: DmaExtent[], granule: number): number {
    return this.batches.mapRuns(extents, granule);
  }

  /** Unmaps every whole mapping inside [iova, iova + size); returns the bytes unmapped. */
  unmap(iova: Bytes, size: Bytes): bigint {
    return this.batches.unmap(iova, size);
  }

  /** type1 answers 0 bytes for an extent with nothing mapped, so absentOk changes nothing. */
  unmapRuns(extents: DmaExtent[], granule: number): bigint {
    return this.batches.unmapRuns(extents, granule);
  }

  /** Opens the IOMMU group of a device and puts it in this container. */
  addGroup(group: number): VfioGroup {
    return this.own(VfioGroup.open(group, this));
  }
}

/** A VFIO group (/dev/vfio/N) in a container; opens its devices. Closed with its container. */
export class VfioGroup extends FdOwner {
  readonly group: number;

  private constructor(fd: number, group: number) {
    super(fd, `VFIO group ${group}`);
    this.group = group;
  }

  /** @internal use VfioContainer.addGroup */
  static open(group: number, container: VfioContainer): VfioGroup {
    const vfioGroup = new VfioGroup(fs.openSync(`/dev/vfio/${group}`, 'r+'), group);
    try {
      if (!vfioGroup.viable) {
        throw new GuestmemError(
          'ERR_GUESTMEM_UNSUPPORTED',
          `VFIO group ${group} is not viable: every device in it must be bound to vfio-pci (or no driver)`,
        );
      }
      native().vfioGroupSetContainer(vfioGroup.fd, container.fd);
      return vfioGroup;
    } catch (error) {
      vfioGroup.close();
      throw error;
    }
  }

  get viable(): boolean {
    return (native().vfioGroupGetStatus(this.fd) & VFIO_GROUP_FLAGS_VIABLE) !== 0;
  }

  /** The device's fd through the group path; its owner closes with this group. */
  openDevice(bdf: string): VfioDevice {
    return this.own(new VfioDevice(native().vfioGroupGetDeviceFd(this.fd, bdf), bdf));
  }
}
