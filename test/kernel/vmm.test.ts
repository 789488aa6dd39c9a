// Guests that convert their own memory, on a real kernel: vCPUs in long mode running the
// programs of guest/, their MAP_GPA_RANGE hypercalls driving the tracker, KVM's attributes,
// the VFIO listener and the punch-hole, with the host checking the memfd and the device's
// reach by DMA at the guest's sync points (lib/vmm/programs/).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import { AssignedDevice } from '../../lib/vfio/assigned-device';
import type { DmaBackend } from '../../lib/vfio/dma-mapper';
import { DmaProbe } from '../../lib/vmm/dma-probe';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { Kvm } from '../../lib/kvm/kvm';
import type { RamBlock } from '../../lib/memory/ram-block';
import type { RamDiscardListener } from '../../lib/tracker/ram-discard-listener';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import type { MapRequest } from '../../lib/vmm/boot-info';
import { runGuestSession, type GuestSessionOptions, type GuestSessionReport } from '../../lib/vmm/guest-session';
import { findEdu } from '../support/edu';
import { requires } from '../support/requires';

const PAGE = 4096;
const MiB = 1 << 20;
const BLOCK_GPA = 16 * MiB;
const DATA_GPA = BigInt(BLOCK_GPA + MiB);

interface Fixture {
  kvm: Kvm;
  memory: GuestMemory;
  block: RamBlock;
  assigned?: AssignedDevice;
  listener?: VfioDmaListener;
  probe?: DmaProbe;
}

async function setUp(backend?: DmaBackend): Promise<Fixture> {
  const kvm = Kvm.open();
  const memory = new GuestMemory(kvm.createVm('sw-protected'));
  const block = memory.addBlock({ gpa: BLOCK_GPA, size: 4 * MiB, name: 'guest-ram' });
  if (!backend) return { kvm, memory, block };
  const assigned = AssignedDevice.open(findEdu()!, { backend });
  const listener = new VfioDmaListener(assigned.dma, { sharedAddress: block.shared.address, gpa: BigInt(block.gpa) });
  await block.register(listener);
  return { kvm, memory, block, assigned, listener, probe: new DmaProbe(assigned) };
}

async function tearDown(f: Fixture | undefined): Promise<void> {
  if (!f) return;
  await f.memory.shutdown();
  f.probe?.close();
  f.assigned?.close();
  f.kvm.close();
}

function sessionOf(f: Fixture, options: Partial<GuestSessionOptions> & Pick<GuestSessionOptions, 'program'>): Promise<GuestSessionReport> {
  return runGuestSession({ kvm: f.kvm, memory: f.memory, dataGpa: DATA_GPA, dataPages: 64, probe: f.probe, listener: f.listener, timeoutMs: 240_000, ...options });
}

/** Threads of this process that run a vCPU (native/vcpu_thread.cc names them). */
function vcpuThreads(): number {
  return fs.readdirSync('/proc/self/task').filter((task) => {
    try {
      return fs.readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() === 'guestmem-vcpu';
    } catch {
      return false;
    }
  }).length;
}

function assertOk(report: GuestSessionReport): void {
  assert.deepEqual(report.problems, [], `${report.program}: ${report.problems.join('; ')}\nconsole: ${report.console}`);
  assert.equal(report.ok, true);
}

// Every case twice: vCPUs whose exits come to the event loop, and vCPUs on threads of
// their own that handle their exits there (port handlers and conversions called on the
// main thread), as `threads` chooses.
for (const threads of [false, true]) describe(`guest-driven conversions on a real kernel (${threads ? 'vCPU threads' : 'event loop'})`, function () {
  this.timeout(600_000);
  const session = (f: Fixture, options: Partial<GuestSessionOptions> & Pick<GuestSessionOptions, 'program'>) => sessionOf(f, { threads, ...options });
  before(requires('sw-protected-vm', 'memory-attributes'));

  let f: Fixture | undefined;
  afterEach(async () => {
    await tearDown(f);
    f = undefined;
  });

  it('loop: a guest converts one page back and forth; each hypercall is answered 0', async () => {
    f = await setUp();
    const report = await session(f, { program: 'loop', iterations: 50 });
    assertOk(report);
    assert.deepEqual(report.run.conversions, { converted: 100, rejected: 0, failed: 0 });
    assert.deepEqual(report.run.vcpus, [{ vcpu: 0, status: 0 }]);
    // The page ends shared, as the guest left it; the rest of the data area stays private.
    const offset = Number(DATA_GPA) - BLOCK_GPA;
    assert.deepEqual(f.block.attributes.runs('shared', { offset, size: 64 * PAGE }), [[offset / PAGE, 1]]);
  });

  it('keeps Node live while a guest spins, and stops it on request', async () => {
    f = await setUp();
    const threadsBefore = vcpuThreads();
    let ticks = 0;
    const timer = setInterval(() => ticks++, 10);
    const started = Date.now();
    const report = await session(f, { program: 'misbehave', seed: 0n, timeoutMs: 1500 });
    clearInterval(timer);
    assert.equal(report.run.stopped, true);
    assert.deepEqual(report.run.vcpus, [{ vcpu: 0, stopped: true }]);
    assert.ok(Date.now() - started < 30_000, 'stop() took effect');
    assert.ok(ticks >= 20, `the event loop ran while the guest spun (${ticks} ticks)`);
    assert.equal(vcpuThreads(), threadsBefore, 'the vCPU thread ended with its vCPU');
  });

  for (const [mode, pattern] of [
    // The kernel decides how it reports these: with an empty IDT 6.12 gives both as a
    // triple fault (shutdown); 7.2 (nested SVM) may give them as an event-delivery error
    // (suberror 3), and ud2 as an emulation error (suberror 1) where KVM intercepts #UD.
    // Either way the VM stops with the exit and the registers.
    [1n, /vCPU 0 stopped the VM: an exit the VMM does not handle: exit (shutdown \(KVM exit 8\)|internal-error \(KVM exit 17\) suberror=3 ).*rip=0x/],
    [2n, /vCPU 0 stopped the VM: no handler for port 0x80: exit io .*port=128.*rip=0x/],
    [4n, /vCPU 0 stopped the VM: an exit the VMM does not handle: exit (shutdown \(KVM exit 8\)|internal-error \(KVM exit 17\) suberror=[13] ).*rip=0x/],
  ] as const) {
    it(`stops the VM with the exit, the vCPU and its registers: misbehave mode ${mode}`, async () => {
      f = await setUp();
      await assert.rejects(session(f, { program: 'misbehave', seed: mode }), { code: 'ERR_GUESTMEM_VCPU_FAILED', message: pattern });
    });
  }

  it('a halting guest ends its vCPU as halted', async () => {
    f = await setUp();
    const report = await session(f, { program: 'misbehave', seed: 3n });
    assert.deepEqual(report.run.vcpus, [{ vcpu: 0, halted: true }]);
    assert.equal(report.ok, false);
  });

  it('requests: bad requests get -EINVAL, a failing listener -EFAULT; nothing changes and the guest goes on', async () => {
    f = await setUp();
    const block = f.block;
    // A listener that refuses to populate page 5 of the data area.
    const refusing: RamDiscardListener = {
      populate(range) {
        if (range.first <= 256 + 5 && 256 + 5 < range.first + range.count) throw new Error('injected: cannot map');
      },
      discard() {},
    };
    await block.register(refusing, { offset: MiB, size: MiB });
    const page = (n: number) => DATA_GPA + BigInt(n * PAGE);
    const requests: MapRequest[] = [
      { gpa: page(1) + 0x800n, pages: 1n, attributes: 0n }, // misaligned: KVM answers itself
      { gpa: page(1), pages: 0n, attributes: 0n }, // zero pages: KVM answers itself
      { gpa: BigInt(BLOCK_GPA + 4 * MiB - PAGE), pages: 2n, attributes: 0n }, // past the block
      { gpa: 0x40000000n, pages: 1n, attributes: 0n }, // in no block
      { gpa: page(1), pages: 1n, attributes: 0x40n }, // unknown attribute bit
      { gpa: page(4), pages: 2n, attributes: 0n }, // the listener refuses page 5: rolled back
      { gpa: page(1), pages: 1n, attributes: 0n }, // a good one, after all that
      { gpa: page(1), pages: 1n, attributes: 0x10n },
    ];
    const report = await session(f, { program: 'requests', requests });
    assert.deepEqual(report.run.vcpus, [{ vcpu: 0, status: 0 }]);
    assert.deepEqual(report.values.map((v) => v.value), [-22, -22, -22, -22, -22, -14, 0, 0]);
    // KVM answers the misaligned and the empty request itself: only three reach the VMM.
    assert.deepEqual(report.run.conversions, { converted: 2, rejected: 3, failed: 1 });
    const offset = Number(DATA_GPA) - BLOCK_GPA;
    assert.deepEqual(block.attributes.runs('shared', { offset, size: 64 * PAGE }), [], 'the data area is all private again');
  });

  for (const backend of ['iommufd', 'type1'] as const) {
    describe(`with the device's VFIO listener through ${backend}`, () => {
      before(requires('vfio-device', backend === 'type1' ? 'vfio-type1' : 'iommufd'));

      it('secret: the private page hides the secret from the memfd and the device; the shared page carries messages', async () => {
        f = await setUp(backend);
        const report = await session(f, { program: 'secret' });
        assertOk(report);
        // The last act unplugs the shared page and plugs it back (on vCPU threads too: the
        // plug state is shared memory, changed on the main thread under the block's lock).
        assert.deepEqual(report.hostChecks.map((c) => [c.name, c.ok]), [
          ['memfd-hides-secret', true], ['device-blocked', true], ['memfd-shows-message', true], ['device-reads-message', true],
          ['memfd-gives-back', true], ['device-loses-unplugged', true], ['device-reaches-plugged', true],
        ]);
        assert.equal(report.guestChecks.passed, 6);
        assert.deepEqual(f.block.plugRuns('unplugged'), []);
        assert.match(report.console, /secret: converting a page private\nsecret: done\n/);
      });

      it('plug: the guest converts its data area and asks to unplug and plug it; the device follows, the guest is answered 0', async () => {
        f = await setUp(backend);
        const report = await session(f, { program: 'plug' });
        // On vCPU threads too: the guest's conversions there mask what the main thread unplugged.
        assertOk(report);
        assert.deepEqual(report.run.vcpus.map((v) => 'status' in v && v.status), [0]);
        assert.deepEqual(report.guestChecks.failed.map((c) => c.id), []);
        assert.deepEqual(report.hostChecks.map((c) => [c.name, c.ok]), [
          ['plug-state-1', true], ['device-reaches-shared', true], ['plug-state-2', true], ['device-loses-unplugged', true],
          ['plug-state-3', true], ['device-reaches-plugged', true], ['plug-state-4', true], ['device-blocked-private', true],
        ]);
        assert.deepEqual(f.block.plugRuns('unplugged'), []);
        assert.deepEqual(f.block.disagreements(), []);
      });

      it('random: one vCPU, every step checked against the model (tracker, listener, memfd, DMA)', async () => {
        f = await setUp(backend);
        const iterations = 10;
        const report = await session(f, { program: 'random', iterations, seed: BigInt(process.env.GUESTMEM_SEED ?? 0x5eed) });
        assertOk(report);
        assert.equal(report.hostChecks.filter((c) => c.name === 'agreement').length, iterations);
        assert.equal(report.hostChecks.filter((c) => c.name === 'device-reach').length, iterations + 4);
        assert.ok(report.guestChecks.passed >= iterations * 2, `${report.guestChecks.passed} guest checks`);
      });

      it('random: two vCPUs converting overlapping ranges at once end as the model, with no stale mapping', async () => {
        f = await setUp(backend);
        const threadsBefore = vcpuThreads();
        const report = await session(f, { program: 'random', vcpus: 2, iterations: 25, dataPages: 32, seed: 77n });
        assertOk(report);
        assert.equal(report.run.conversions.converted, 50);
        assert.deepEqual(report.run.vcpus, [{ vcpu: 0, status: 0 }, { vcpu: 1, status: 0 }]);
        assert.ok(report.hostChecks.some((c) => c.name === 'final-agreement' && c.ok));
        assert.equal(vcpuThreads(), threadsBefore, 'both vCPU threads ended');
      });

      if (threads) {
        it('the main thread converts the same block while two vCPU threads convert it themselves: they take turns, and everything agrees', async () => {
          f = await setUp(backend);
          const block = f.block;
          const before = block.stats.conversions;
          let stop = false;
          let pairs = 0;
          // Pages far from the data area, each pair done before the event loop turns, so the
          // guest's host checks (on this thread, at its sync points) see them as they were.
          const racing = (async () => {
            while (!stop) {
              block.convertSync(block.gpa + 2 * MiB, 4 * PAGE, 'shared');
              block.convertSync(block.gpa + 2 * MiB, 4 * PAGE, 'private');
              pairs++;
              await new Promise((resolve) => setImmediate(resolve));
            }
          })();
          const report = await session(f, { program: 'random', vcpus: 2, iterations: 25, dataPages: 32, seed: 99n });
          stop = true;
          await racing;
          assertOk(report);
          assert.equal(report.run.conversions.converted, 50);
          assert.ok(pairs > 0, 'the main thread converted while the guest ran');
          // The guest's 50 conversions ran on the vCPU threads: the main thread counted its own only.
          assert.ok(block.stats.conversions - before < 2 * pairs + 50, `main thread conversions: ${block.stats.conversions - before}, pairs ${pairs}`);
          assert.deepEqual(block.disagreements(), []);
          assert.deepEqual(f.listener!.heldRuns(0, block.size / PAGE), block.attributes.runs('shared'));
        });
      }

      it('random: four vCPUs converting overlapping ranges at once end as the model, with no stale mapping', async () => {
        f = await setUp(backend);
        const report = await session(f, { program: 'random', vcpus: 4, iterations: 15, dataPages: 32, seed: 1234n });
        assertOk(report);
        assert.equal(report.run.conversions.converted, 60);
        assert.deepEqual(report.run.vcpus, [0, 1, 2, 3].map((vcpu) => ({ vcpu, status: 0 })));
        assert.ok(report.hostChecks.some((c) => c.name === 'final-agreement' && c.ok));
      });
    });
  }

  it('reaches a block above 4 GiB: the guest converts pages at the far end of an 8 GiB block at 4 GiB', async () => {
    f = await setUp();
    const GiB = 1024 * MiB;
    const high = f.memory.addBlock({ gpa: 4 * GiB, size: 8 * GiB, name: 'high-ram' });
    const dataGpa = BigInt(high.gpa + high.size - MiB);
    const report = await session(f, { program: 'random', iterations: 8, dataGpa, dataPages: 256, seed: 3n });
    assertOk(report);
    assert.equal(report.run.conversions.converted, 8);
    assert.equal(report.hostChecks.filter((c) => c.name === 'agreement' && c.ok).length, 8);
  });
});
