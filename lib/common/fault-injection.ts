// Test-only: make the kernel fail on purpose. The addon injects faults only when the
// environment had GUESTMEM_FAULTS when it loaded (a spec, or empty for "none yet"); then a
// test re-arms it with injectFaults(spec). A spec is SITE:N:ERRNO rules, comma-separated:
// "ioctl:KVM_SET_MEMORY_ATTRIBUTES:3:EIO" fails the 3rd such call from now with EIO,
// "fallocate:2+:ENOMEM" the 2nd and every later one. Sites are listed in FAULT_SITES.

import { GuestmemError } from './errors';
import { native } from './native';

export const FAULT_SITES = [
  'ioctl:KVM_SET_MEMORY_ATTRIBUTES',
  'ioctl:KVM_SET_USER_MEMORY_REGION2',
  'fallocate',
  'ioctl:VFIO_IOMMU_MAP_DMA',
  'ioctl:VFIO_IOMMU_UNMAP_DMA',
  'ioctl:IOMMU_IOAS_MAP',
  'ioctl:IOMMU_IOAS_UNMAP',
] as const;

export type FaultSite = (typeof FAULT_SITES)[number];

export interface FaultCounts {
  /** Faults injected since the addon loaded. */
  fired: number;
  /** Calls per site since the rules were last armed. */
  calls: Partial<Record<FaultSite, number>>;
}

export function faultInjectionEnabled(): boolean {
  return typeof native().setFaults === 'function';
}

function enabledAddon(): Required<Pick<ReturnType<typeof native>, 'setFaults' | 'faultCounts'>> {
  const addon = native();
  if (!addon.setFaults || !addon.faultCounts) {
    throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', 'fault injection is off: set GUESTMEM_FAULTS (empty is fine) before the addon loads');
  }
  return { setFaults: addon.setFaults, faultCounts: addon.faultCounts };
}

/** Replaces the rules (an empty spec clears them) and restarts the per-site call counts. */
export function injectFaults(spec: string): void {
  enabledAddon().setFaults(spec);
}

export function faultCounts(): FaultCounts {
  return enabledAddon().faultCounts() as FaultCounts;
}
