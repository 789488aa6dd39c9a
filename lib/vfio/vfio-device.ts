// A VFIO device fd: info, regions, register access by pread/pwrite at a region's offset,
// BAR mmap, and (for a cdev) binding to iommufd and attaching to an IOAS.

import fs from 'node:fs';
import { checkBytes, type Bytes } from '../common/byte-range';
import { GuestmemError, outOfRange, systemError } from '../common/errors';
import { FdOwner } from '../common/fd-owner';
import { HostMapping } from '../common/host-mapping';
import type { Ioas, Iommufd } from './iommufd';
import { native } from '../common/native';

/** vfio-pci's fixed region indices. */
export const VFIO_PCI_BAR0_REGION_INDEX = 0;
export const VFIO_PCI_CONFIG_REGION_INDEX = 7;
export const VFIO_REGION_INFO_FLAG_MMAP = 1 << 2;

/** A VFIO device region (a BAR, the config space) as VFIO_DEVICE_GET_REGION_INFO describes it. */
export interface RegionInfo {
  index: number;
  flags: number;
  size: bigint;
  offset: bigint;
}

/**
 * A mapped region (a BAR, of any size the device has), valid until unmap(). JS reaches it
 * through windows, never one buffer over all of it (a 64-bit BAR may pass Node's 4 GiB
 * limit). Registers are read and written through `words`: a typed-array element is one
 * 32-bit access, as MMIO needs, while a DataView may split it into byte accesses (edu then
 * answers 0). unmap() empties every window still alive.
 */
export interface RegionMapping {
  /** Host virtual address of the mapping. */
  readonly address: bigint;
  readonly size: bigint;
  /** A byte window onto [offset, offset + length) (see HostMapping.view). */
  view(offset: Bytes, length: number): Uint8Array;
  /** `count` 32-bit registers from `offset` (a multiple of 4). */
  words(offset: Bytes, count: number): Uint32Array;
  /** Unmaps the region now, emptying every window still alive; idempotent. */
  unmap(): void;
}

/** A VFIO device fd: its regions, BAR mappings and config space. */
export class VfioDevice extends FdOwner {
  readonly name: string;
  private readonly mappings = new Set<RegionMapping>();

  /** @internal made by VfioGroup.openDevice or VfioDevice.openCdev */
  constructor(fd: number, name: string) {
    super(fd, `VFIO device ${name}`);
    this.name = name;
  }

  /** Opens a device's cdev (/dev/vfio/devices/vfioN), for use with iommufd. */
  static openCdev(path: string, name = path): VfioDevice {
    return new VfioDevice(fs.openSync(path, 'r+'), name);
  }

  /** VFIO_DEVICE_GET_INFO: the device's flags and its counts of regions and interrupts. */
  info(): { flags: number; numRegions: number; numIrqs: number } {
    return native().vfioDeviceGetInfo(this.fd);
  }

  /** VFIO_DEVICE_GET_REGION_INFO of region `index` (a BAR, the config space). */
  regionInfo(index: number): RegionInfo {
    return native().vfioDeviceGetRegionInfo(this.fd, index);
  }

  private checkedOffset(region: RegionInfo, offset: number, length: number): number {
    if (!Number.isSafeInteger(offset) || offset < 0 || BigInt(offset + length) > region.size) {
      throw outOfRange(`[${offset}, +${length}) is outside region ${region.index} (${region.size} bytes)`);
    }
    return Number(region.offset) + offset;
  }

  /** Reads `length` bytes at `offset` of a region (pread on the device fd). */
  read(regionIndex: number, offset: number, length: number): Buffer {
    const region = this.regionInfo(regionIndex);
    const buffer = Buffer.alloc(length);
    const done = fs.readSync(this.fd, buffer, 0, length, this.checkedOffset(region, offset, length));
    if (done !== length) throw systemError('EIO', 5, 'pread', `short read of region ${regionIndex}: ${done} of ${length} bytes`);
    return buffer;
  }

  /** Writes `data` at `offset` of a region (pwrite on the device fd). */
  write(regionIndex: number, offset: number, data: Buffer): void {
    const region = this.regionInfo(regionIndex);
    const done = fs.writeSync(this.fd, data, 0, data.length, this.checkedOffset(region, offset, data.length));
    if (done !== data.length) throw systemError('EIO', 5, 'pwrite', `short write to region ${regionIndex}: ${done} of ${data.length} bytes`);
  }

  /** Reads one little-endian 32-bit register at `offset` of a region. */
  read32(regionIndex: number, offset: number): number {
    return this.read(regionIndex, offset, 4).readUInt32LE(0);
  }

  /** Writes one little-endian 32-bit register at `offset` of a region. */
  write32(regionIndex: number, offset: number, value: number): void {
    const data = Buffer.alloc(4);
    data.writeUInt32LE(value >>> 0, 0);
    this.write(regionIndex, offset, data);
  }

  /** mmap of a region (a BAR); unmap it before binding the device through its cdev. */
  mapRegion(regionIndex: number): RegionMapping {
    const region = this.regionInfo(regionIndex);
    if ((region.flags & VFIO_REGION_INFO_FLAG_MMAP) === 0) {
      throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `region ${regionIndex} of ${this.name} cannot be mmapped`);
    }
    const host = HostMapping.map(this.fd, region.size, region.offset, `region ${regionIndex} of ${this.name}`);
    const mappings = this.mappings;
    const mapping: RegionMapping = {
      address: host.address,
      size: host.size,
      view: (offset, length) => host.view(offset, length),
      words(offset, count) {
        if (checkBytes(offset, 'register offset') % 4n !== 0n) throw outOfRange(`register offset ${offset} is not a multiple of 4`);
        if (!Number.isSafeInteger(count) || count < 0) throw outOfRange(`register count must be a non-negative integer, got ${count}`);
        const bytes = host.view(offset, count * 4);
        return new Uint32Array(bytes.buffer, bytes.byteOffset, count);
      },
      unmap() {
        if (!mappings.delete(mapping)) return;
        host.unmap();
      },
    };
    mappings.add(mapping);
    return mapping;
  }

  /** VFIO_DEVICE_BIND_IOMMUFD; returns the device id in that iommufd. */
  bindIommufd(iommufd: Iommufd): number {
    return native().vfioDeviceBindIommufd(this.fd, iommufd.fd);
  }

  /** VFIO_DEVICE_ATTACH_IOMMUFD_PT: the device's DMA goes through `ioas` from now on. */
  attachIoas(ioas: Ioas): void {
    native().vfioDeviceAttachIommufdPt(this.fd, ioas.id);
  }

  protected override beforeClose(): void {
    for (const mapping of [...this.mappings]) mapping.unmap();
  }
}
