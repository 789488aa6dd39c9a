// Where the harness kernels differ (6.12 and 7.2), each test asserts what the running
// kernel says about itself (its capabilities), never its version: guest_memfd flags
// (KVM_CAP_GUEST_MEMFD_FLAGS, 6.18+) and KVM_PRE_FAULT_MEMORY after a conversion. Each
// branch asserts something the kernel can get wrong, so no kernel passes by skipping.

import assert from 'node:assert/strict';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { HostMapping } from '../../lib/common/host-mapping';
import { Kvm } from '../../lib/kvm/kvm';
import { GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP, KVM_CAP_GUEST_MEMFD_FLAGS } from '../../lib/kvm/kvm-constants';
import { probe } from '../../lib/host/probe';
import { assertSystemError } from '../support/errors';
import { requires } from '../support/requires';
import { Vcpu } from '../../lib/vmm/vcpu';

const PAGE = 4096;
const MiB = 1 << 20;
const GPA = 16 * MiB;

describe('guest_memfd flags: the kernel does what KVM_CAP_GUEST_MEMFD_FLAGS says', () => {
  before(requires('sw-protected-vm', 'guest-memfd', 'memory-attributes'));

  for (const type of ['sw-protected', 'default'] as const) {
    for (const [name, flags] of [['MMAP', GUEST_MEMFD_FLAG_MMAP], ['MMAP | INIT_SHARED', GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED]] as const) {
      it(`${type} VM: a guest_memfd with ${name} can be created and mapped exactly when the capability lists it`, () => {
        using kvm = Kvm.open();
        const vm = kvm.createVm(type);
        const supported = vm.checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS);
        if ((supported & flags) !== flags) {
          assertSystemError(() => vm.createGuestMemfd(MiB, flags), 'EINVAL', 'ioctl(KVM_CREATE_GUEST_MEMFD)');
          return;
        }
        using gmem = vm.createGuestMemfd(MiB, flags);
        const mapping = HostMapping.map(gmem.fd, BigInt(MiB), 0n, 'guest_memfd');
        try {
          // Only pages that start shared may be touched: a private one would fault (SIGBUS).
          if (flags & GUEST_MEMFD_FLAG_INIT_SHARED) {
            mapping.write(PAGE + 1, Uint8Array.of(0x5a));
            assert.equal(mapping.read(PAGE + 1, 1)[0], 0x5a);
          }
        } finally {
          mapping.unmap();
        }
      });
    }
  }

  it('refuses to mmap a guest_memfd created without MMAP (ENODEV), on every kernel', () => {
    using kvm = Kvm.open();
    const vm = kvm.createVm('sw-protected');
    using gmem = vm.createGuestMemfd(MiB);
    assertSystemError(() => HostMapping.map(gmem.fd, BigInt(MiB), 0n, 'guest_memfd'), 'ENODEV', 'mmap');
  });

  it('probe reports the same flags, and in-place conversion only where a private VM may start shared', () => {
    using kvm = Kvm.open();
    const privateMask = kvm.createVm('sw-protected').checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS);
    const defaultMask = kvm.createVm('default').checkExtension(KVM_CAP_GUEST_MEMFD_FLAGS);
    const report = probe().guestMemfdFlags;
    if (privateMask === 0 && defaultMask === 0) {
      assert.equal(report.ok, false);
      assert.match(report.why!, /KVM_CAP_GUEST_MEMFD_FLAGS is 0/);
      return;
    }
    const names = (mask: number) => [...(mask & GUEST_MEMFD_FLAG_MMAP ? ['mmap'] : []), ...(mask & GUEST_MEMFD_FLAG_INIT_SHARED ? ['init-shared'] : [])];
    assert.deepEqual([report.privateVm, report.defaultVm], [names(privateMask), names(defaultMask)]);
    assert.equal(report.inPlaceConversion, (privateMask & 3) === 3);
  });
});

describe('KVM_PRE_FAULT_MEMORY after a conversion (RamBlockOptions.prefault)', () => {
  before(requires('sw-protected-vm', 'guest-memfd', 'memory-attributes'));

  it('maps a range turned shared ahead of the guest (its shared pages get populated), where the capability exists', async () => {
    using kvm = Kvm.open();
    const vm = kvm.createVm('sw-protected');
    using vcpu = Vcpu.create(kvm, vm, 0);
    if (!vm.supportsPreFault) {
      assert.throws(() => vm.preFaultMemory(vcpu.fd, GPA, PAGE), (e) => (e as NodeJS.ErrnoException).syscall === 'ioctl(KVM_PRE_FAULT_MEMORY)');
      return;
    }
    await using memory = new GuestMemory(vm, { prefault: () => vcpu.fd });
    const block = memory.addBlock({ gpa: GPA, size: 4 * MiB });
    // The same conversion without pre-fault, in a VM of its own (each GuestMemory numbers its slots from 0).
    const plain = new GuestMemory(kvm.createVm('sw-protected')).addBlock({ gpa: GPA, size: 4 * MiB });
    try {
      await block.convert(GPA + MiB, 64 * 1024, 'shared');
      await plain.convert(GPA + MiB, 64 * 1024, 'shared');
      assert.equal(block.stats.prefaultFailed, 0);
      assert.ok(block.stats.ns.prefault > 0n);
      assert.equal(block.shared.allocatedBytes(), 64 * 1024, 'pre-faulted: the 16 shared pages are in the memfd');
      assert.equal(plain.shared.allocatedBytes(), 0, 'without pre-fault nothing is populated until the guest touches it');

      // Back to private: the pre-fault now goes to guest_memfd (nothing to see from the host
      // there), and the shared pages are discarded as always.
      await block.convert(GPA + MiB, 64 * 1024, 'private');
      assert.equal(block.stats.prefaultFailed, 0);
      assert.equal(block.shared.allocatedBytes(), 0);
    } finally {
      plain.close();
    }
  });

  it('reports a range with no memslot as the kernel does (ENOENT), Node-style', () => {
    using kvm = Kvm.open();
    const vm = kvm.createVm('sw-protected');
    using vcpu = Vcpu.create(kvm, vm, 0);
    if (!vm.supportsPreFault) return assert.throws(() => vm.preFaultMemory(vcpu.fd, GPA, PAGE));
    assertSystemError(() => vm.preFaultMemory(vcpu.fd, 1 << 30, PAGE), 'ENOENT', 'ioctl(KVM_PRE_FAULT_MEMORY)');
    assertSystemError(() => vm.preFaultMemory(vcpu.fd, GPA + 1, PAGE), 'EINVAL', 'ioctl(KVM_PRE_FAULT_MEMORY)');
  });
});
