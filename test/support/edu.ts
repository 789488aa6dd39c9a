import { findEduDevice } from '../../lib/vfio/edu-device';

/** The PCI address of the first edu device bound to vfio-pci, or null. */
export function findEdu(): string | null {
  return findEduDevice()?.bdf ?? null;
}
