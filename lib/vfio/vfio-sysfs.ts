// Where a PCI device's VFIO pieces live, read from sysfs: its IOMMU group, its driver, its
// VFIO cdev. Only reads files; no ioctl.

import fs from 'node:fs';
import path from 'node:path';
import { GuestmemError, invalidArgType, invalidArgValue } from '../common/errors';

const PCI_DEVICES = '/sys/bus/pci/devices';
const BDF = /^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/;

/** Accepts "0000:00:03.0" or "00:03.0". */
export function normalizeBdf(bdf: string): string {
  if (typeof bdf !== 'string') throw invalidArgType(`a PCI address must be a string, got ${typeof bdf}`);
  const full = /^[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$/i.test(bdf) ? `0000:${bdf}` : bdf;
  if (!BDF.test(full.toLowerCase())) {
    throw invalidArgValue(`'${bdf}' is not a PCI address like 0000:00:03.0`);
  }
  return full.toLowerCase();
}

/** What sysfs says of a PCI device: driver, IOMMU group, VFIO cdev, vendor and device ids. */
export interface PciDeviceInfo {
  bdf: string;
  vendor: string;
  device: string;
  driver: string | null;
  iommuGroup: number | null;
  /** /dev/vfio/devices/vfioN when the device is bound to a VFIO driver with cdev support. */
  cdev: string | null;
}

function readOrNull(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch {
    return null;
  }
}

function linkName(file: string): string | null {
  try {
    return path.basename(fs.readlinkSync(file));
  } catch {
    return null;
  }
}

/** What sysfs says of the PCI device at `bdf`. */
export function pciDevice(bdf: string): PciDeviceInfo {
  const address = normalizeBdf(bdf);
  const dir = path.join(PCI_DEVICES, address);
  if (!fs.existsSync(dir)) {
    throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `no PCI device ${address} (${dir} does not exist)`);
  }
  const group = linkName(path.join(dir, 'iommu_group'));
  let cdev: string | null = null;
  try {
    const entries = fs.readdirSync(path.join(dir, 'vfio-dev'));
    if (entries[0]) cdev = `/dev/vfio/devices/${entries[0]}`;
  } catch {
    cdev = null;
  }
  return {
    bdf: address,
    vendor: readOrNull(path.join(dir, 'vendor')) ?? '',
    device: readOrNull(path.join(dir, 'device')) ?? '',
    driver: linkName(path.join(dir, 'driver')),
    iommuGroup: group === null ? null : Number(group),
    cdev,
  };
}

/** Every PCI device on the host; empty where there is no sysfs PCI bus. */
export function pciDevices(): PciDeviceInfo[] {
  let names: string[];
  try {
    names = fs.readdirSync(PCI_DEVICES);
  } catch {
    return [];
  }
  return names.filter((name) => BDF.test(name)).sort().map(pciDevice);
}

/** Devices bound to vfio-pci, the ones a VMM can assign. */
export function vfioPciDevices(): PciDeviceInfo[] {
  return pciDevices().filter((d) => d.driver === 'vfio-pci');
}

export function iommuGroupCount(): number {
  try {
    return fs.readdirSync('/sys/kernel/iommu_groups').length;
  } catch {
    return 0;
  }
}
