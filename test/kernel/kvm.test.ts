// The KVM side on a real kernel: SW-protected VM, guest_memfd, a guest_memfd memslot,
// attribute flips, punch-holes, and the kernel's errors for bad input, Node-style.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { Kvm, Vm, type GuestMemfd } from '../../lib/kvm/kvm';
import { native } from '../../lib/common/native';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { KVM_CAP_GUEST_MEMFD } from '../../lib/kvm/kvm-constants';
import { requires } from '../support/requires';
import { assertSystemError } from '../support/errors';
import { isCloexec } from '../support/cloexec';

const PAGE = 4096;
const MiB = 1 << 20;
const GPA = 16 * MiB;

describe('KVM: SW-protected VM, guest_memfd and memory attributes', () => {
  let kvm: Kvm;
  let vm: Vm;
  let gmem: GuestMemfd;
  let shared: SharedMemory;

  before(requires('sw-protected-vm', 'guest-memfd', 'memory-attributes'));

  beforeEach(() => {
    kvm = Kvm.open();
    vm = kvm.createVm('sw-protected');
    gmem = vm.createGuestMemfd(4 * MiB);
    shared = SharedMemory.create(4 * MiB);
  });

  afterEach(() => {
    shared?.close();
    kvm?.close();
  });

  it('opens every fd close-on-exec, guest_memfd included (6.12 hands it out without)', () => {
    for (const [what, fd] of [['/dev/kvm', kvm.fd], ['VM', vm.fd], ['guest_memfd', gmem.fd], ['memfd', shared.fd]] as const) {
      assert.equal(isCloexec(fd), true, what);
    }
  });

  it('registers a guest_memfd memslot and flips attributes on whole and partial ranges', () => {
    vm.setUserMemoryRegion({ slot: 0, gpa: GPA, size: 4 * MiB, userspaceAddress: shared.address, guestMemfd: gmem });
    vm.setMemoryAttributes(GPA, 4 * MiB, 'private');
    vm.setMemoryAttributes(GPA + PAGE, PAGE, 'shared');
    vm.setMemoryAttributes(GPA + MiB, MiB, 'shared');
    vm.setMemoryAttributes(GPA + MiB + 3 * PAGE, 2 * PAGE, 'private');
    vm.setMemoryAttributes(GPA, 4 * MiB, 'shared');
    vm.deleteMemorySlot(0);
  });

  it('punches holes in guest_memfd and preallocates it, only with KEEP_SIZE', () => {
    gmem.allocate(0, MiB);
    gmem.punchHole(0, PAGE);
    gmem.punchHole(MiB, 2 * MiB);
    // guest_memfd refuses fallocate without KEEP_SIZE with EOPNOTSUPP, which on Linux is
    // the same number as ENOTSUP, the name Node gives it.
    assertSystemError(() => native().fallocate(gmem.fd, 0, 0, PAGE), 'ENOTSUP', 'fallocate');
  });

  it('gives the kernel errno for what only the kernel judges', () => {
    vm.setUserMemoryRegion({ slot: 0, gpa: GPA, size: 4 * MiB, userspaceAddress: shared.address, guestMemfd: gmem });
    assertSystemError(() => vm.setMemoryAttributes(GPA + 1, PAGE, 'private'), 'EINVAL', 'ioctl(KVM_SET_MEMORY_ATTRIBUTES)');
    assertSystemError(() => vm.setMemoryAttributes(GPA, PAGE, 1n << 0n), 'EINVAL', 'ioctl(KVM_SET_MEMORY_ATTRIBUTES)');
    assertSystemError(() => gmem.punchHole(1, PAGE), 'EINVAL', 'fallocate');
    // A second slot over the same guest range.
    assertSystemError(
      () => vm.setUserMemoryRegion({ slot: 1, gpa: GPA, size: MiB, userspaceAddress: shared.address, guestMemfd: gmem, guestMemfdOffset: 0 }),
      'EEXIST',
      'ioctl(KVM_SET_USER_MEMORY_REGION2)',
    );
    // A slot whose guest_memfd range runs past the guest_memfd's end.
    assertSystemError(
      () => vm.setUserMemoryRegion({ slot: 2, gpa: 64 * MiB, size: 2 * MiB, userspaceAddress: shared.address, guestMemfd: gmem, guestMemfdOffset: 3 * MiB }),
      'EINVAL',
      'ioctl(KVM_SET_USER_MEMORY_REGION2)',
    );
    assertSystemError(
      () => vm.setUserMemoryRegion({ slot: 3, gpa: 64 * MiB + 1, size: MiB, userspaceAddress: shared.address, guestMemfd: gmem }),
      'EINVAL',
      'ioctl(KVM_SET_USER_MEMORY_REGION2)',
    );
  });

  it('rejects wrong types and 64-bit overflow in JS, before any syscall', () => {
    assert.throws(() => vm.setMemoryAttributes(2n ** 64n - 4096n, 8192, 'private'), /overflows past 2\^64/);
    assert.throws(() => vm.setMemoryAttributes('0' as unknown as number, PAGE, 'private'), TypeError);
    assert.throws(() => vm.setUserMemoryRegion({ slot: -1, gpa: 0, size: PAGE, userspaceAddress: shared.address }), /uint32/);
    assert.throws(() => kvm.createVm('nope' as 'default'), /unknown VM type/);
  });

  it('refuses every use after close, and the raw fd gives EBADF', () => {
    const fd = gmem.fd;
    gmem.close();
    gmem.close();
    assert.throws(() => gmem.punchHole(0, PAGE), { code: 'ERR_GUESTMEM_CLOSED' });
    assertSystemError(() => native().fallocate(fd, 3, 0, PAGE), 'EBADF', 'fallocate');
    vm.close();
    assert.throws(() => vm.setMemoryAttributes(GPA, PAGE, 'private'), { code: 'ERR_GUESTMEM_CLOSED' });
  });

  it('closes a VM\'s guest_memfds with it', () => {
    vm.close();
    assert.equal(gmem.closed, true);
  });

  it('refuses guest memory on a VM type without private memory, saying which type to use', () => {
    using plain = kvm.createVm('default');
    assert.throws(() => new GuestMemory(plain), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'ERR_GUESTMEM_UNSUPPORTED');
      assert.match(e.message, /VM \(type 0\) has (no guest_memfd and )?no KVM_MEMORY_ATTRIBUTE_PRIVATE: create it as 'sw-protected'/);
      return true;
    });
  });

  it('refuses a VM type this kernel does not have: what is missing and the fix, with the kernel\'s answer kept', () => {
    assert.throws(() => kvm.createVm('tdx'), (error: NodeJS.ErrnoException) => {
      assert.equal(error.code, 'ERR_GUESTMEM_UNSUPPORTED');
      assert.equal(error.errno, -22);
      assert.equal(error.syscall, 'ioctl(KVM_CREATE_VM)');
      assert.match(error.message, /^this host cannot create a tdx VM \(KVM_X86 type 5\): KVM_CAP_VM_TYPES is 0x3 .*; fix: .* \(EINVAL: Invalid argument, ioctl\(KVM_CREATE_VM\)\)$/);
      return true;
    });
  });

  it('adopts a VM fd made elsewhere, and refuses one that is not a VM', () => {
    const rawKvm = fs.openSync('/dev/kvm', 'r+');
    const rawVm = native().kvmCreateVm(rawKvm, 1);
    using adopted = Vm.adopt(rawVm);
    assert.notEqual(adopted.fd, rawVm);
    assert.equal(adopted.checkExtension(KVM_CAP_GUEST_MEMFD), 1);
    fs.closeSync(rawVm);
    adopted.createGuestMemfd(MiB).close();
    assert.throws(() => Vm.adopt(rawKvm), /is not a KVM VM \(it is \/dev\/kvm\)/);
    fs.closeSync(rawKvm);
  });
});
