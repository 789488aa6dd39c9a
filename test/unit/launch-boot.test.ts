// How GuestVm puts a confidential guest's boot region into private memory (lib/vmm/launch-boot.ts),
// on a stand-in VM (the host has no guest_memfd): the region is converted private through
// GuestMemory first, the bytes the launch is handed are the boot parts at their offsets in a
// page-aligned staging mapping (read back at the moment of the call), the staging mapping is
// gone afterwards, and what the library knows of the memory (shared granules, KVM's
// attributes, pages awaiting repair, no RAM block) refuses a region before any launch call.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { native } from '../../lib/common/native';
import type { Vm } from '../../lib/kvm/kvm';
import { SnpLaunch } from '../../lib/kvm/snp-launch';
import type { LaunchCalls } from '../../lib/kvm/vm-launch';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { measureIntoPrivate, privateMemoryCheck } from '../../lib/vmm/launch-boot';

const PAGE = 4096;
const MiB = 1 << 20;
const GPA = 16 * MiB;

class FakeVm {
  readonly type = 4;
  readonly supportsGuestMemfd = true;
  readonly memoryAttributes = 8n;
  readonly supportsPreFault = false;
  readonly log: string[] = [];
  createGuestMemfd(size: number) {
    const fd = native().memfdCreate('fake-gmem');
    native().ftruncate(fd, size);
    return { fd, offset: 0n, size: BigInt(size), closed: false, punchHole: () => {}, close() { if (!this.closed) fs.closeSync(fd); this.closed = true; } };
  }
  setUserMemoryRegion(): void {}
  deleteMemorySlot(): void {}
  /** Set to make a call to private attributes fail (an undo that cannot be done). */
  refusePrivate = false;
  setMemoryAttributes(gpa: number, size: number, to: string): void {
    if (this.refusePrivate && to === 'private') throw Object.assign(new Error('EIO: stand-in refusal'), { code: 'EIO', errno: -5, syscall: 'ioctl' });
    this.log.push(`attributes 0x${gpa.toString(16)}+0x${size.toString(16)} ${to}`);
  }
}

function launchCalls(log: string[], staged: Buffer[]): LaunchCalls {
  const none = (): void => {};
  return {
    openSevDevice: () => 99,
    closeFd: none,
    snpLaunchStart: none,
    snpLaunchUpdate: (_vm, _sev, gpa, source, size) => {
      log.push(`update 0x${gpa.toString(16)}+0x${size.toString(16)}`);
      const mapping = native().adoptMapping(source, size, false);
      // A copy: the staging mapping is gone once the launch returns.
      staged.push(Buffer.from(new Uint8Array(native().mapWindow(mapping.handle, 0, size))));
      return { gpa: gpa + size, source: source + size, size: 0n };
    },
    snpLaunchFinish: none,
    setCpuid: none,
    tdxGetCpuid: () => new Uint8Array(0),
    tdxInitVcpu: none,
    tdxInitMemRegion: none,
    tdxFinalizeVm: none,
  };
}

/** Whether a memfd of this name is mapped in this process. */
function memfdMapped(name: string): boolean {
  return fs.readFileSync('/proc/self/maps', 'utf8').includes(`/memfd:${name}`);
}

describe('a confidential guest\'s boot region, measured into private memory (stand-in VM)', () => {
  let vm: FakeVm;
  let memory: GuestMemory;

  beforeEach(() => {
    vm = new FakeVm();
    memory = new GuestMemory(vm as unknown as Vm);
    memory.addBlock({ gpa: GPA, size: 4 * MiB, name: 'ram' });
  });
  afterEach(() => memory.close());

  it('converts the region private, then hands the launch the parts at their offsets in a staging mapping it unmaps after', async () => {
    await memory.convert(GPA, 16 * PAGE, 'shared');
    vm.log.length = 0;
    const log: string[] = [];
    const staged: Buffer[] = [];
    let source = 0n;
    const calls = launchCalls(log, staged);
    const update = calls.snpLaunchUpdate;
    calls.snpLaunchUpdate = (...args) => {
      source = args[3];
      assert.equal(memfdMapped('guestmem-launch'), true, 'staged in a mapping of its own');
      return update(...args);
    };
    const launch = new SnpLaunch(3, calls);
    launch.start();
    const parts = [[BigInt(GPA), Buffer.from('boot')], [BigInt(GPA + PAGE + 10), Buffer.from('program')]] as const;
    await measureIntoPrivate(launch, memory, BigInt(GPA), BigInt(4 * PAGE), parts);
    assert.deepEqual(vm.log, [`attributes 0x${GPA.toString(16)}+0x4000 private`], 'converted private before the launch call');
    assert.deepEqual(log, [`update 0x${GPA.toString(16)}+0x4000`]);
    assert.equal(source % 4096n, 0n);
    const bytes = staged[0]!;
    assert.equal(bytes.length, 4 * PAGE);
    assert.equal(bytes.subarray(0, 4).toString(), 'boot');
    assert.equal(bytes.subarray(PAGE + 10, PAGE + 17).toString(), 'program');
    assert.equal(bytes.subarray(4, PAGE + 10).every((b) => b === 0) && bytes.subarray(PAGE + 17).every((b) => b === 0), true, 'the rest is zeroes');
    assert.equal(memfdMapped('guestmem-launch'), false, 'the staging mapping is gone');
    assert.equal(launch.measuredBytes, BigInt(4 * PAGE));
  });

  it('says why a range is not private memory: shared granules, outside every block; null when it is', async () => {
    const check = privateMemoryCheck(memory);
    assert.equal(check(BigInt(GPA), BigInt(MiB)), null);
    await memory.convert(GPA + 2 * PAGE, PAGE, 'shared');
    assert.equal(check(BigInt(GPA), BigInt(4 * PAGE)), '1 granule(s) of it are shared');
    assert.equal(check(BigInt(GPA + 3 * PAGE), BigInt(PAGE)), null);
    assert.match(check(BigInt(GPA - PAGE), BigInt(2 * PAGE)) ?? '', /not inside one RAM block/);
    assert.match(check(BigInt(64 * MiB), BigInt(PAGE)) ?? '', /no guest_memfd of this memory backs it/);
  });

  it("says so when KVM's attributes still call part of it shared, or part of it awaits repair()", async () => {
    const block = memory.blocks[0]!;
    const check = privateMemoryCheck(memory);
    // A populate that fails, with its undo (KVM back to private) failing too: KVM keeps the
    // page shared while the tracker calls it private.
    const failing = { name: 'failing', synchronous: true, populate(): void { throw new Error('no'); }, discard(): void {} };
    await block.attributes.register(failing, { offset: 0, size: 4 * MiB });
    vm.refusePrivate = true;
    await assert.rejects(memory.convert(GPA + PAGE, PAGE, 'shared'), { code: 'ERR_GUESTMEM_ROLLBACK_FAILED' });
    vm.refusePrivate = false;
    assert.equal(block.attributes.countShared({ offset: 0, size: 4 * MiB }), 0, 'the tracker calls it private');
    assert.equal(check(BigInt(GPA), BigInt(4 * PAGE)), "part of it is shared in KVM's attributes");
    assert.equal(check(BigInt(GPA + 2 * PAGE), BigInt(PAGE)), null, 'the pages beside it are private');
    await block.attributes.unregister(failing);

    // Pages held back for repair() with KVM agreeing: the check's last reason, on a block
    // that says exactly that (a real one gets there only with KVM shared as well, above).
    const held = {
      gpa: GPA,
      contains: (gpa: number, size: number) => gpa >= GPA && gpa + size <= GPA + 4 * MiB,
      attributes: { granularity: PAGE, countShared: () => 0 },
      kvmRuns: () => [],
      unsettledRuns: [[8, 1]],
    };
    const heldCheck = privateMemoryCheck({ blocks: [held] } as unknown as GuestMemory);
    assert.equal(heldCheck(BigInt(GPA + 8 * PAGE), BigInt(PAGE)), 'part of it awaits repair() (the tracker and the kernel disagree)');
    assert.equal(heldCheck(BigInt(GPA + 9 * PAGE), BigInt(PAGE)), null);
  });

  it('a region that is not private is refused before the launch call', async () => {
    const log: string[] = [];
    const launch = new SnpLaunch(3, launchCalls(log, []));
    launch.start();
    assert.throws(() => launch.measure({ gpa: GPA - PAGE, size: 2 * PAGE, source: 0x7f0000000000n }, privateMemoryCheck(memory)), { code: 'ERR_GUESTMEM_LAUNCH_ORDER' });
    assert.deepEqual(log, []);
  });
});
