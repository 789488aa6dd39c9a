// An SEV-SNP guest's page tables as GuestVm builds them: every entry carries the C-bit at the
// position CPUID 0x8000001F EBX[5:0] gives (AMD APM vol. 2, SEV), so that the measured private
// pages read as private; without the leaf, or with a position SEV never uses, a coded error.

import assert from 'node:assert/strict';
import { identityMap, identityMapSize } from '../../lib/vmm/long-mode';
import { snpEncryptionBit } from '../../lib/vmm/snp-encryption-bit';

const GiB = 1n << 30n;

/** One kvm_cpuid_entry2 record for leaf 0x8000001f. */
function memoryEncryptionLeaf(eax: number, ebx: number): Uint8Array {
  const entry = Buffer.alloc(40);
  entry.writeUInt32LE(0x8000001f, 0);
  entry.writeUInt32LE(eax, 12);
  entry.writeUInt32LE(ebx, 16);
  return entry;
}

describe('SNP page tables: the C-bit', () => {
  it('reads the C-bit position from CPUID 0x8000001f (EBX[5:0]), SEV and SEV-SNP listed in EAX', () => {
    // EAX: SME | SEV | SEV-ES | SEV-SNP; EBX: C-bit 51, 1 bit of physical address reduction.
    assert.equal(snpEncryptionBit(memoryEncryptionLeaf(0x1b, (1 << 6) | 51)), 51);
    assert.equal(snpEncryptionBit(memoryEncryptionLeaf(0x1b, 47)), 47);
    for (const [cpuid, why] of [
      [new Uint8Array(0), /no SEV leaf 0x8000001f/],
      [memoryEncryptionLeaf(0x1, 51), /no SEV leaf 0x8000001f \(EAX 0x1\)/],
      [memoryEncryptionLeaf(0xb, 51), /does not list SEV-SNP/],
      [memoryEncryptionLeaf(0x1b, 12), /C-bit 12, below bit 32/],
    ] as const) {
      assert.throws(() => snpEncryptionBit(cpuid), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_UNSUPPORTED' && why.test(e.message));
    }
  });

  it('sets the C-bit in every entry (the PML4, the PDPTs, every 2 MiB page) and leaves addresses and flags as they were', () => {
    const base = 0x200000n;
    const plain = new BigUint64Array(identityMap(2n * GiB, base).bytes.buffer);
    const tagged = new BigUint64Array(identityMap(2n * GiB, base, 51).bytes.buffer);
    const c = 1n << 51n;
    assert.equal(tagged.length, plain.length);
    let present = 0;
    for (let i = 0; i < plain.length; i++) {
      if (plain[i] === 0n) {
        assert.equal(tagged[i], 0n, `entry ${i} stays empty`);
        continue;
      }
      present++;
      assert.equal(tagged[i], plain[i]! | c, `entry ${i}`);
    }
    // 1 PML4 entry, 2 PDPT entries, 2 x 512 directory entries.
    assert.equal(present, 1 + 2 + 1024);
    assert.equal(identityMap(2n * GiB, base, 51).bytes.length, identityMapSize(2n * GiB));
  });

  it('refuses a C-bit the map would reach, or outside [32, 63], before building anything', () => {
    assert.throws(() => identityMap(1n << 33n, 0n, 32), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => identityMap(GiB, 0n, 31), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => identityMap(GiB, 0n, 64), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => identityMap(GiB, 0n, 51.5), { code: 'ERR_OUT_OF_RANGE' });
  });
});
