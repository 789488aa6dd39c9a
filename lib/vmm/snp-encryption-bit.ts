// Where an SEV-SNP guest's page tables mark memory private: the C-bit, a physical-address bit
// whose position CPUID Fn8000_001F EBX[5:0] gives (AMD APM vol. 2, "Secure Encrypted
// Virtualization"; KVM reports the host's in KVM_GET_SUPPORTED_CPUID when it supports SEV).
// A page-table entry with the C-bit set maps (or points to) encrypted, private memory; one
// without maps shared memory, and so does CR3 for the PML4 itself. An SNP guest whose tables
// lack it reads its measured private pages as shared: KVM raises a shared memory fault, and
// the contents the launch measured are not what it sees (measured-pages.ts stops that).

import { GuestmemError } from '../common/errors';
import { findCpuidEntry } from '../kvm/tdx-cpuid';

const LEAF = 0x8000001f;
const SEV = 1 << 1;
const SEV_SNP = 1 << 4;

/** The C-bit's position from `cpuid` (raw kvm_cpuid_entry2 records); why not, as a coded error. */
export function snpEncryptionBit(cpuid: Uint8Array): number {
  const entry = findCpuidEntry(cpuid, LEAF, 0);
  const eax = entry?.readUInt32LE(12) ?? 0;
  if (!entry || (eax & SEV) === 0) {
    throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `KVM's CPUID has no SEV leaf 0x8000001f (EAX 0x${eax.toString(16)}): an SNP guest's page tables need the C-bit position it gives`);
  }
  const bit = entry.readUInt32LE(16) & 0x3f;
  if (bit < 32) throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', `CPUID 0x8000001f gives C-bit ${bit}, below bit 32: not a position SEV uses`);
  if ((eax & SEV_SNP) === 0) throw new GuestmemError('ERR_GUESTMEM_UNSUPPORTED', "KVM's CPUID 0x8000001f does not list SEV-SNP (EAX bit 4)");
  return bit;
}
