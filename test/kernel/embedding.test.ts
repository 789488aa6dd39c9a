// Embedding guestmem in a VMM that already exists, on a real kernel. In process: the VMM
// makes its VM, memfd, guest_memfd and memslot itself; guestmem adopts them in the memslot
// numbers it is given, converts with the device's VFIO listener, and on close leaves every
// one of them to the VMM. Across processes: examples/existing-vmm, a C VMM that hands its
// fds to a Node child converting through guestmem (built here with gcc), end to end.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Kvm } from '../../lib/kvm/kvm';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { AssignedDevice } from '../../lib/vfio/assigned-device';
import { DmaProbe } from '../../lib/vmm/dma-probe';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import { requires } from '../support/requires';
import { findEdu } from '../support/edu';

const KiB = 1024;
const MiB = 1024 * KiB;
const GPA = 16 * MiB;
const ROOT = path.resolve(__dirname, '..', '..', '..');

describe('embedding in an existing VMM, on a real kernel', function () {
  this.timeout(300_000);
  let edu: string;

  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device'));
  before(() => {
    edu = findEdu()!;
  });

  it('in process: adopts the VMM\'s memslot, memfd and guest_memfd at offsets, converts with VFIO, and closes none of them', async () => {
    using kvm = Kvm.open();
    const vm = kvm.createVm('sw-protected');
    // The VMM's own memory and memslot 9, made without guestmem's RamBlock.
    const vmmRam = SharedMemory.create(4 * MiB, 'vmm-ram');
    const gmem = vm.createGuestMemfd(4 * MiB);
    vm.setUserMemoryRegion({ slot: 9, gpa: GPA, size: 2 * MiB, userspaceAddress: vmmRam.address + BigInt(MiB), guestMemfd: gmem, guestMemfdOffset: 2 * MiB });
    const memory = new GuestMemory(vm, { slots: [9] });
    const block = memory.addBlock({
      gpa: GPA, size: 2 * MiB, shared: { fd: vmmRam.fd, offset: MiB }, guestMemfd: { fd: gmem.fd, offset: 2 * MiB }, memslot: { adopt: true },
    });
    assert.equal(block.slot, 9);
    using device = AssignedDevice.open(edu);
    const listener = new VfioDmaListener(device.dma, { sharedAddress: block.shared.address, gpa: BigInt(GPA) });
    await block.register(listener);
    const probe = new DmaProbe(device);
    try {
      await memory.convert(GPA, 64 * KiB, 'shared');
      assert.equal(listener.mappings, 16);
      assert.equal(await probe.canRead(block, 4 * KiB, 0x6b), true, 'the device reaches a shared page of the adopted memory');
      assert.equal(vmmRam.read(MiB + 4 * KiB, 1)[0], 0x6b, 'through the VMM\'s own mapping too');
      await memory.convert(GPA + 4 * KiB, 4 * KiB, 'private');
      assert.equal(await probe.canRead(block, 4 * KiB, 0x6c), false, 'and not a page made private');
      block.shared.discard(4 * KiB, 4 * KiB);
      assert.equal(vmmRam.read(MiB + 4 * KiB, 1)[0], 0, 'the punch-hole freed the VMM\'s page at its offset');
    } finally {
      probe.close();
      await memory.shutdown();
    }
    assert.equal(listener.mappings, 0, 'shutdown unmapped everything the listener held');
    // Everything is still the VMM's: its fds work and memslot 9 is still there to delete
    // (deleting a memslot that does not exist is EINVAL).
    assert.ok(!vmmRam.closed && !gmem.closed);
    vmmRam.write(0, Uint8Array.of(1));
    gmem.punchHole(0, 4096);
    vm.deleteMemorySlot(9);
    assert.throws(() => vm.deleteMemorySlot(9), { code: 'EINVAL' });
    vmmRam.close();
    vm.close();
  });

  it('examples/existing-vmm: a C VMM hands its fds to a Node child that converts through guestmem with the VFIO listener; the VMM checks the result', () => {
    const example = path.join(ROOT, 'examples', 'existing-vmm');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-example-'));
    const binary = path.join(dir, 'vmm');
    const build = spawnSync('gcc', ['-O2', '-Wall', '-Wextra', '-Werror', '-o', binary, path.join(example, 'vmm.c')], { encoding: 'utf8' });
    assert.equal(build.status, 0, `gcc: ${build.stderr}${build.error?.message ?? ''}`);
    const run = spawnSync(binary, ['--vfio', edu, '--node', process.execPath, '--converter', path.join(example, 'converter.js')], { encoding: 'utf8', timeout: 240_000 });
    fs.rmSync(dir, { recursive: true, force: true });
    assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
    assert.match(run.stdout, /vmm: every check held\n$/);
    assert.doesNotMatch(run.stdout, /FAIL/);
    const child = JSON.parse(/vmm: the child reported (\{.*\})\n/.exec(run.stdout)![1]!);
    assert.deepEqual(
      { ok: child.ok, vmIoctlHere: child.vmIoctlHere, mappings: child.mappings, dma: child.dma },
      { ok: true, vmIoctlHere: 'EIO', mappings: [64, 48], dma: { sharedPage: true, privatePage: false } },
    );
    assert.ok(['iommufd', 'type1'].includes(child.backend));
    assert.equal((run.stdout.match(/KVM_SET_MEMORY_ATTRIBUTES .* for the child: done/g) ?? []).length, 3);
  });

  it('refuses memory by address that is not a shared mapping of this process, before any call', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm('sw-protected');
    const memory = new GuestMemory(vm);
    assert.throws(() => memory.addBlock({ gpa: GPA, size: MiB, shared: { address: 0x10000 } }), /is not a shared read-write mapping of this process/);
    assert.deepEqual(memory.blocks, []);
  });
});
