import { EDU_DEVICE, EDU_VENDOR } from '../../lib/edu-device';
import { pciDevices } from '../../lib/vfio-sysfs';

/** The first edu device bound to vfio-pci, or null. */
export function findEdu(): string | null {
  const edu = pciDevices().find((d) => d.vendor === EDU_VENDOR && d.device === EDU_DEVICE && d.driver === 'vfio-pci');
  return edu?.bdf ?? null;
}
