// QEMU's "edu" PCI device (1234:11e8) as a DMA probe: its DMA engine copies between a bus
// address and its 4 KiB internal buffer, so a round trip RAM page A → buffer → RAM page B
// proves whether the device can reach A (and B) through the IOMMU. Its registers, from
// QEMU's docs/specs/edu.rst: 0x00 id, 0x04 liveness (reads back inverted), 0x80 DMA
// source, 0x88 destination, 0x90 count, 0x98 command (bit 0 run, bit 1 device → RAM).
// edu masks DMA addresses to 28 bits by default: keep IOVAs below 256 MiB.

import { outOfRange, systemError } from '../common/errors';
import { vfioPciDevices, type PciDeviceInfo } from './vfio-sysfs';
import { VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, type VfioDevice } from './vfio-device';

export const EDU_VENDOR = '0x1234';
export const EDU_DEVICE = '0x11e8';
export const EDU_BUFFER_ADDRESS = 0x40000;
export const EDU_BUFFER_SIZE = 4096;
/**
 * QEMU's edu (7.2) checks that a transfer's end lies strictly inside its buffer, so a full
 * 4096-byte transfer aborts QEMU with "DMA range ... out of bounds": one byte less is the most.
 */
export const EDU_MAX_DMA = EDU_BUFFER_SIZE - 1;
export const EDU_DMA_LIMIT = 1 << 28;

const REG_ID = 0x00;
const REG_LIVENESS = 0x04;
const REG_DMA_SOURCE = 0x80;
const REG_DMA_DESTINATION = 0x88;
const REG_DMA_COUNT = 0x90;
const REG_DMA_COMMAND = 0x98;
const DMA_RUN = 1;
const DMA_TO_RAM = 2;
const PCI_COMMAND = 0x04;
const PCI_COMMAND_MASTER = 1 << 2;

/** The first edu device bound to vfio-pci, or undefined. */
export function findEduDevice(): PciDeviceInfo | undefined {
  return vfioPciDevices().find((d) => d.vendor === EDU_VENDOR && d.device === EDU_DEVICE);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * QEMU's edu device through its VFIO BAR: DMA copies between I/O addresses, as the proofs of
 * reach use them.
 */
export class EduDevice {
  constructor(readonly device: VfioDevice) {}

  /** The identification register: 0x010000ed for edu 1.0. */
  id(): number {
    return this.device.read32(VFIO_PCI_BAR0_REGION_INDEX, REG_ID);
  }

  /** Writes a value to the liveness register and returns what the device answers (~value). */
  liveness(value: number): number {
    this.device.write32(VFIO_PCI_BAR0_REGION_INDEX, REG_LIVENESS, value);
    return this.device.read32(VFIO_PCI_BAR0_REGION_INDEX, REG_LIVENESS);
  }

  /** Sets PCI bus mastering, without which the device may not DMA at all. */
  enableBusMaster(): void {
    const config = this.device.read(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, 2);
    config.writeUInt16LE(config.readUInt16LE(0) | PCI_COMMAND_MASTER, 0);
    this.device.write(VFIO_PCI_CONFIG_REGION_INDEX, PCI_COMMAND, config);
  }

  /** One DMA transfer between a bus address (an IOVA) and the device's buffer. */
  async dma(direction: 'to-device' | 'to-ram', iova: number, length: number, timeoutMs = 10_000): Promise<void> {
    if (!Number.isInteger(iova) || iova < 0 || iova + length > EDU_DMA_LIMIT) {
      throw outOfRange(`edu can only reach IOVAs below 0x${EDU_DMA_LIMIT.toString(16)}, got ${iova}`);
    }
    if (!Number.isInteger(length) || length <= 0 || length > EDU_MAX_DMA) throw outOfRange(`edu DMA length must be 1..${EDU_MAX_DMA}, got ${length}`);
    const toRam = direction === 'to-ram';
    this.write(REG_DMA_SOURCE, toRam ? EDU_BUFFER_ADDRESS : iova);
    this.write(REG_DMA_DESTINATION, toRam ? iova : EDU_BUFFER_ADDRESS);
    this.write(REG_DMA_COUNT, length);
    this.write(REG_DMA_COMMAND, DMA_RUN | (toRam ? DMA_TO_RAM : 0));
    // edu completes a transfer on a 100 ms virtual-time timer: poll the run bit.
    const deadline = Date.now() + timeoutMs;
    while (this.device.read32(VFIO_PCI_BAR0_REGION_INDEX, REG_DMA_COMMAND) & DMA_RUN) {
      if (Date.now() > deadline) throw systemError('ETIMEDOUT', 110, 'edu DMA', `the transfer did not complete within ${timeoutMs} ms`);
      await sleep(5);
    }
  }

  /** Copies `length` bytes from IOVA `from` to IOVA `to` through the device's buffer. */
  async copy(from: number, to: number, length: number): Promise<void> {
    await this.dma('to-device', from, length);
    await this.dma('to-ram', to, length);
  }

  private write(register: number, value: number): void {
    this.device.write32(VFIO_PCI_BAR0_REGION_INDEX, register, value);
  }
}
