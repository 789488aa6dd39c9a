// One RAM block converted from the main thread and from Workers at once (RamBlock.share,
// attachBlock), over a stand-in kernel whose KVM attributes and IOMMU mappings live in
// SharedArrayBuffers, so every thread sees one "kernel" (test/support/shared-standin.ts).
// Proves: conversions from 3 Workers and the main thread on overlapping ranges give the
// results, errors and state a naive model predicts, checked after every step; under
// contention every kernel call is made under the block's lock and the threads' results add
// up; listeners registered and unregistered on the main thread reach the Workers; a Worker
// that dies or is terminated mid-conversion never leaves the block locked, its range is
// named in doubt and refused, and repair() restores agreement; a lock wait has a bound.

import assert from 'node:assert/strict';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Vm } from '../../lib/kvm/kvm';
import { attachBlock } from '../../lib/memory/attached-block';
import { RamBlock } from '../../lib/memory/ram-block';
import type { BlockDescriptor } from '../../lib/memory/block-sharing';
import type { Run } from '../../lib/tracker/page-bitmap';
import { RecordingListener } from '../../lib/tracker/recording-listener';
import type { StateChangeResult } from '../../lib/tracker/ram-block-attributes';
import type { PageState } from '../../lib/tracker/state-change-channel';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import { PAGE, Slot, StandinDmaMapper, StandinKernelState, StandinVm } from '../support/shared-standin';
import type { ErrorReport, Order } from '../support/attached-block-worker';
import { reportOf } from '../support/attached-block-worker';
import { prng } from '../support/prng';
import { naiveRuns } from '../support/naive-runs';

const PAGES = 64;
const GPA = 1 << 24;
const WORKER = path.join(__dirname, '../support/attached-block-worker.js');
/** The witness listener's section: granules [8, 40). */
const WITNESS = { offset: 8 * PAGE, size: 32 * PAGE };

type Reply = { result?: StateChangeResult; error?: ErrorReport };

interface Rig {
  kernel: StandinKernelState;
  block: RamBlock;
  vfio: VfioDmaListener;
  witness: RecordingListener;
  workers: Worker[];
  /** Each worker's threadId, read at its start (it reads -1 once the worker has exited). */
  threadIds: number[];
}

async function rig(workers: number, lockTimeoutMs = 5000): Promise<Rig> {
  const kernel = StandinKernelState.create(GPA, PAGES);
  const block = new RamBlock(new StandinVm(kernel) as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'shared-test', lockTimeoutMs });
  const vfio = new VfioDmaListener(new StandinDmaMapper(kernel), { sharedAddress: block.shared.address, gpa: BigInt(GPA) });
  const witness = new RecordingListener('witness', PAGES, { batch: true });
  await block.register(vfio);
  await block.register(witness, WITNESS);
  const started = Array.from({ length: workers }, () => start(block));
  kernel.watchLock(started[0]?.descriptor.memory.header ?? block.share().memory.header);
  return { kernel, block, vfio, witness, workers: started.map((s) => s.worker), threadIds: started.map((s) => s.worker.threadId) };
}

function start(block: RamBlock): { worker: Worker; descriptor: BlockDescriptor } {
  const descriptor = block.share();
  const worker = new Worker(WORKER, { workerData: { descriptor }, transferList: [descriptor.port] });
  worker.unref();
  return { worker, descriptor };
}

function ask<T = Reply>(worker: Worker, order: Order): Promise<T> {
  return new Promise((resolve, reject) => {
    const onExit = (code: number) => reject(new Error(`worker exited with ${code}`));
    worker.once('exit', onExit);
    worker.once('message', (message: T) => {
      worker.off('exit', onExit);
      resolve(message);
    });
    worker.postMessage(order);
  });
}

function exited(worker: Worker): Promise<number> {
  return new Promise((resolve) => worker.once('exit', resolve));
}

/** KVM (stand-in and the block's record), the tracker, the IOMMU and both listeners all say what the model says. */
function assertAgreement(r: Rig, model: boolean[], where: string): void {
  const shared = naiveRuns(model);
  assert.deepEqual(r.block.attributes.runs('shared'), shared, `${where}: tracker`);
  assert.deepEqual(StandinKernelState.runs(r.kernel.attributes), shared, `${where}: KVM`);
  assert.deepEqual(r.block.kvmRuns(), shared, `${where}: the block's record of KVM`);
  assert.deepEqual(StandinKernelState.runs(r.kernel.mappings), shared, `${where}: IOMMU`);
  assert.deepEqual(r.vfio.heldRuns(0, PAGES), shared, `${where}: VFIO listener`);
  assert.deepEqual(r.witness.mappedRuns(), naiveRuns(model, 8, 40), `${where}: witness`);
  assert.equal(r.block.sharedPages, model.filter(Boolean).length, `${where}: shared count`);
  assert.deepEqual(r.block.disagreements(), [], `${where}: disagreements`);
  assert.equal(r.kernel.plan[Slot.Violations], 0, `${where}: kernel calls outside the lock`);
  assert.equal(r.witness.errors, 0, `${where}: witness saw a double map or unmap`);
}

/** What a conversion of [first, first + count) to `to` returns, by the model. */
function expected(model: boolean[], first: number, count: number, to: PageState): StateChangeResult {
  const want = to === 'shared';
  const slice = model.slice(first, first + count);
  const changed = slice.filter((bit) => bit !== want).length;
  const from = slice.every((bit) => bit) ? 'shared' : slice.every((bit) => !bit) ? 'private' : 'mixture';
  let changedRuns = 0;
  for (let i = 0; i < slice.length; i++) if (slice[i] !== want && (i === 0 || slice[i - 1] === want)) changedRuns++;
  return { from, to, changed, changedRuns };
}

async function closeRig(r: Rig): Promise<void> {
  await Promise.all(r.workers.map((w) => w.terminate()));
  // A test that failed half-way may leave a dead worker holding the lock: close must not wait for it.
  for (const id of r.threadIds) r.block.recoverFrom(id);
  r.block.close();
}

describe('a RAM block converted from Workers and the main thread', function () {
  this.timeout(60_000);

  it('gives the model\'s results, errors and state after every step, whichever of 4 threads converts, with faults and listeners coming and going', async () => {
    const r = await rig(3);
    const model = new Array<boolean>(PAGES).fill(false);
    const random = prng(23);
    const late = new RecordingListener('late', PAGES);
    let lateRegistered = false;
    try {
      for (let step = 0; step < 160; step++) {
        const where = `step ${step}`;
        if (random(10) === 0) {
          // Registry changes on the main thread reach the workers at their next conversion.
          if (lateRegistered) await r.block.unregister(late);
          else await r.block.register(late, { offset: 16 * PAGE, size: 40 * PAGE });
          lateRegistered = !lateRegistered;
        }
        const first = random(PAGES);
        const count = 1 + random(Math.min(12, PAGES - first));
        const to: PageState = random(2) === 0 ? 'shared' : 'private';
        const fault = random(6);
        // One in six fails its KVM call or its DMA map: the conversion must roll back.
        if (fault === 0) r.kernel.plan[Slot.AttrFailAt] = r.kernel.plan[Slot.AttrCalls]! + 1;
        if (fault === 1) r.kernel.plan[Slot.MapFailAt] = r.kernel.plan[Slot.MapCalls]! + 1;
        const thread = random(4);
        let reply: Reply;
        if (thread === 3) {
          try {
            reply = { result: r.block.convertSync(GPA + first * PAGE, count * PAGE, to) };
          } catch (error) {
            reply = { error: reportOf(error) };
          }
        } else {
          reply = await ask(r.workers[thread]!, { op: 'convert', gpa: GPA + first * PAGE, size: count * PAGE, to });
        }
        r.kernel.plan[Slot.AttrFailAt] = 0;
        r.kernel.plan[Slot.MapFailAt] = 0;
        if (reply.error) {
          assert.equal(reply.error.code, 'ERR_GUESTMEM_CONVERSION_FAILED', `${where}: ${reply.error.message}`);
          assert.deepEqual(reply.error.applied, [], `${where}: nothing stayed converted`);
          assert.match(reply.error.message, /EIO: i\/o error/);
        } else {
          assert.deepEqual(reply.result, expected(model, first, count, to), `${where}: result (thread ${thread})`);
          model.fill(to === 'shared', first, first + count);
        }
        assertAgreement(r, model, where);
        if (lateRegistered) assert.deepEqual(late.mappedRuns(), naiveRuns(model, 16, 56), `${where}: late listener`);
        assert.equal(late.errors, 0);
      }
      // Every worker ends with the registry the main thread has.
      for (const worker of r.workers) {
        await ask(worker, { op: 'convert', gpa: GPA, size: PAGE, to: model[0] ? 'shared' : 'private' });
        const { listeners, errors } = await ask<{ listeners: string[]; errors: number[] }>(worker, { op: 'listeners' });
        assert.deepEqual(listeners, r.block.attributes.listeners.map((l) => l.name));
        assert.deepEqual(errors, listeners.map(() => 0), 'no replica saw a double map or unmap');
      }
    } finally {
      await closeRig(r);
    }
  });

  it('makes every kernel call under the block\'s lock while 3 Workers and the main thread convert overlapping ranges at once; the results add up', async () => {
    const r = await rig(3);
    r.kernel.plan[Slot.Dwell] = 2000;
    const random = prng(7);
    const storm = () => Array.from({ length: 300 }, () => {
      const first = random(PAGES);
      const count = 1 + random(Math.min(16, PAGES - first));
      return [GPA + first * PAGE, count * PAGE, random(2) === 0 ? 'shared' : 'private'] as [number, number, PageState];
    });
    const late = new RecordingListener('late', PAGES, { batch: true });
    try {
      const gate = new SharedArrayBuffer(4);
      // Each worker answers twice: ready, then its results.
      const answers = r.workers.map((worker) => {
        const messages: unknown[] = [];
        const both = new Promise<unknown[]>((resolve) => worker.on('message', (m) => messages.push(m) === 2 && resolve(messages)));
        worker.postMessage({ op: 'storm', conversions: storm(), gate } satisfies Order);
        return { messages, both };
      });
      while (answers.some((a) => a.messages.length === 0)) await new Promise((resolve) => setTimeout(resolve, 5));
      const replies = answers.map(async (a) => (await a.both)[1] as { results: Reply[] });
      Atomics.store(new Int32Array(gate), 0, 1);
      Atomics.notify(new Int32Array(gate), 0);
      let signed = 0;
      for (const [gpa, size, to] of storm()) {
        const result = r.block.convertSync(gpa, size, to);
        signed += to === 'shared' ? result.changed : -result.changed;
        // Turns of the event loop let a registration change run between conversions.
        if (random(50) === 0) await (r.block.attributes.listeners.includes(late) ? r.block.unregister(late) : r.block.register(late));
        if (random(10) === 0) await new Promise((resolve) => setImmediate(resolve));
        // A repair takes the lock too (finding nothing to do), while the workers convert.
        if (random(60) === 0) assert.deepEqual(await r.block.repair(), { repaired: 0 });
      }
      for (const { results } of await Promise.all(replies)) {
        for (const { result, error } of results) {
          assert.equal(error, undefined, error?.message);
          signed += result!.to === 'shared' ? result!.changed : -result!.changed;
        }
      }
      const model = new Array<boolean>(PAGES).fill(false);
      for (const [first, count] of r.block.attributes.runs('shared')) model.fill(true, first, first + count);
      assert.equal(signed, r.block.sharedPages, 'each granule flipped once per conversion that said it did');
      assertAgreement(r, model, 'after the storm');
      if (r.block.attributes.listeners.includes(late)) assert.deepEqual(late.mappedRuns(), naiveRuns(model));
      assert.equal(late.errors, 0);
      assert.equal(r.block.lockHolder, null);
    } finally {
      await closeRig(r);
    }
  });

  it('a Worker that dies between a DMA map and its record: the lock is recovered, the range named in doubt and refused, and repair() restores agreement', async () => {
    const r = await rig(2);
    try {
      const model = new Array<boolean>(PAGES).fill(false);
      await ask(r.workers[1]!, { op: 'convert', gpa: GPA, size: 4 * PAGE, to: 'shared' });
      model.fill(true, 0, 4);
      const [dying] = r.workers;
      const id = dying!.threadId;
      const gone = exited(dying!);
      r.kernel.plan[Slot.MapDieAt] = r.kernel.plan[Slot.MapCalls]! + 1;
      dying!.postMessage({ op: 'convert', gpa: GPA + 10 * PAGE, size: 6 * PAGE, to: 'shared' } satisfies Order);
      assert.equal(await gone, 7);
      r.kernel.plan[Slot.MapDieAt] = 0;
      const intent = r.block.recoverFrom(id);
      assert.deepEqual(intent, { kind: 'convert', first: 10, count: 6, to: 'shared', step: 'listeners' });
      assert.equal(r.block.recoverFrom(id), null, 'a second recovery finds nothing to do');
      assert.deepEqual(r.block.doubtfulRuns, [[10, 6]]);
      assert.deepEqual(r.block.unsettledRuns, [[10, 6]]);
      // Mapped in the IOMMU, not in the listener's record: only the doubt knows.
      assert.deepEqual(StandinKernelState.runs(r.kernel.mappings), [[0, 4], [10, 6]]);
      assert.throws(() => r.block.convertSync(GPA + 12 * PAGE, PAGE, 'private'), (e: Error & { code?: string; unsettled?: Run[] }) => {
        assert.equal(e.code, 'ERR_GUESTMEM_CONVERSION_REJECTED');
        assert.deepEqual(e.unsettled, [[12, 1]]);
        assert.match(e.message, /in doubt since a thread died/);
        return true;
      });
      const refused = await ask(r.workers[1]!, { op: 'convert', gpa: GPA + 8 * PAGE, size: 4 * PAGE, to: 'private' });
      assert.equal(refused.error?.code, 'ERR_GUESTMEM_CONVERSION_REJECTED', 'refused on the other worker too');
      // Elsewhere the block converts at once: nothing is left locked.
      assert.deepEqual((await ask(r.workers[1]!, { op: 'convert', gpa: GPA + 40 * PAGE, size: 2 * PAGE, to: 'shared' })).result?.changed, 2);
      model.fill(true, 40, 42);
      const { repaired } = await r.block.repair();
      assert.equal(repaired, 6);
      // The tracker had flipped the range before it died: shared everywhere now.
      model.fill(true, 10, 16);
      assert.deepEqual(r.block.doubtfulRuns, []);
      assert.equal(r.block.lockHolder, null);
      assertAgreement(r, model, 'after repair');
      assert.deepEqual((await ask(r.workers[1]!, { op: 'convert', gpa: GPA + 8 * PAGE, size: 4 * PAGE, to: 'private' })).result?.changed, 2);
      model.fill(false, 8, 12);
      assertAgreement(r, model, 'after a conversion of the repaired range');
    } finally {
      await closeRig(r);
    }
  });

  it('a Worker that dies between KVM\'s attribute call and its record, converting to private: repair sets KVM again from the tracker', async () => {
    const r = await rig(1);
    try {
      r.block.convertSync(GPA, 16 * PAGE, 'shared');
      const [dying] = r.workers;
      // A Worker's threadId reads -1 once it has exited: keep it from the start.
      const id = dying!.threadId;
      const gone = exited(dying!);
      r.kernel.plan[Slot.AttrDieAt] = r.kernel.plan[Slot.AttrCalls]! + 1;
      dying!.postMessage({ op: 'convert', gpa: GPA + 4 * PAGE, size: 4 * PAGE, to: 'private' } satisfies Order);
      await gone;
      r.kernel.plan[Slot.AttrDieAt] = 0;
      assert.deepEqual(r.block.recoverFrom(id), { kind: 'convert', first: 4, count: 4, to: 'private', step: 'kvmAttributes' });
      // KVM says private there, the block's record still says shared: invisible but for the doubt.
      assert.deepEqual(StandinKernelState.runs(r.kernel.attributes), [[0, 4], [8, 8]]);
      await r.block.repair();
      const model = new Array<boolean>(PAGES).fill(false).fill(true, 0, 4).fill(true, 8, 16);
      assertAgreement(r, model, 'after repair');
    } finally {
      await closeRig(r);
    }
  });

  it('a Worker terminated while converting without end never leaves the block locked; repair() restores agreement, every time', async () => {
    const r = await rig(0);
    // Each kernel call dwells: the thread is almost always inside a conversion when it goes.
    r.kernel.plan[Slot.Dwell] = 2000;
    let recovered = 0;
    try {
      for (let round = 0; round < 6; round++) {
        const { worker } = start(r.block);
        await ask(worker, { op: 'forever', gpa: GPA, pages: PAGES, seed: round + 1 });
        await new Promise((resolve) => setTimeout(resolve, 20 + 15 * round));
        const id = worker.threadId;
        await worker.terminate();
        const intent = r.block.recoverFrom(id);
        if (intent) recovered++;
        if (intent) assert.deepEqual(r.block.doubtfulRuns, intent.count > 0 ? [[intent.first, intent.count]] : []);
        await r.block.repair();
        const model = new Array<boolean>(PAGES).fill(false);
        for (const [first, count] of r.block.attributes.runs('shared')) model.fill(true, first, first + count);
        assertAgreement(r, model, `round ${round} (intent ${JSON.stringify(intent)})`);
        r.block.convertSync(GPA, PAGES * PAGE, round % 2 === 0 ? 'shared' : 'private');
      }
      assert.ok(recovered > 0, 'at least one worker died holding the lock');
    } finally {
      await closeRig(r);
    }
  });

  it('a Worker whose kernel call throws mid-conversion reports it as the main thread would, and leaves nothing locked', async () => {
    const r = await rig(1);
    try {
      r.block.convertSync(GPA, 8 * PAGE, 'shared');
      r.kernel.plan[Slot.UnmapFailAt] = r.kernel.plan[Slot.UnmapCalls]! + 1;
      const reply = await ask(r.workers[0]!, { op: 'convert', gpa: GPA + 2 * PAGE, size: 4 * PAGE, to: 'private' });
      assert.equal(reply.error?.code, 'ERR_GUESTMEM_CONVERSION_FAILED');
      assert.match(reply.error!.message, /converting \[0x1002000, \+0x4000\) of shared-test to private failed at step listeners: listener "vfio-type1" failed to discard/);
      // The same fault on the main thread: the same report.
      r.kernel.plan[Slot.UnmapFailAt] = r.kernel.plan[Slot.UnmapCalls]! + 1;
      assert.throws(() => r.block.convertSync(GPA + 2 * PAGE, 4 * PAGE, 'private'), (e: Error & { code?: string; applied?: Run[] }) => {
        assert.equal(e.code, reply.error!.code);
        assert.equal(e.message, reply.error!.message);
        assert.deepEqual(e.applied, reply.error!.applied);
        return true;
      });
      assertAgreement(r, new Array<boolean>(PAGES).fill(false).fill(true, 0, 8), 'after both failures');
    } finally {
      await closeRig(r);
    }
  });

  it('a wait for a lock held by a dead thread ends at its bound with ERR_GUESTMEM_LOCK_TIMEOUT naming the holder', async () => {
    const r = await rig(1, 150);
    try {
      const [dying] = r.workers;
      const id = dying!.threadId;
      const gone = exited(dying!);
      r.kernel.plan[Slot.AttrDieAt] = r.kernel.plan[Slot.AttrCalls]! + 1;
      dying!.postMessage({ op: 'convert', gpa: GPA, size: PAGE, to: 'shared' } satisfies Order);
      await gone;
      const started = performance.now();
      assert.throws(() => r.block.convertSync(GPA + 8 * PAGE, PAGE, 'shared'), (e: Error & { code?: string; holder?: number }) => {
        assert.equal(e.code, 'ERR_GUESTMEM_LOCK_TIMEOUT');
        assert.equal(e.holder, id);
        assert.match(e.message, new RegExp(`locked by thread ${id} \\(a worker, convert of granules 0\\+1 to shared, at step kvmAttributes\\)`));
        return true;
      });
      assert.ok(performance.now() - started < 2000);
      // close() waits for the holder too, and closes nothing when it cannot: the fds stay
      // open while a thread may still use them.
      assert.throws(() => r.block.close(), { code: 'ERR_GUESTMEM_LOCK_TIMEOUT' });
      assert.equal(r.block.shared.closed, false);
      r.block.recoverFrom(id);
      r.block.close();
      assert.equal(r.block.shared.closed, true);
    } finally {
      await closeRig(r);
    }
  });
});

describe('an attached block after close', function () {
  this.timeout(30_000);

  it('refuses every conversion in the Worker once the main thread closed the block (its fds are gone)', async () => {
    const r = await rig(1);
    try {
      r.block.close();
      const reply = await ask(r.workers[0]!, { op: 'convert', gpa: GPA, size: PAGE, to: 'shared' });
      assert.equal(reply.error?.code, 'ERR_GUESTMEM_CLOSED');
      assert.equal(r.kernel.plan[Slot.AttrCalls], 0, 'no kernel call was made');
    } finally {
      await closeRig(r);
    }
  });
});

describe('RamBlock.share refusals', () => {
  it('names a listener that can only run on the main thread, before sharing and at register after it', async () => {
    const kernel = StandinKernelState.create(GPA, PAGES);
    const block = new RamBlock(new StandinVm(kernel) as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'refusals' });
    const slow = { name: 'slow', populate: async () => {}, discard: async () => {} };
    await block.register(slow);
    assert.throws(() => block.share(), { code: 'ERR_GUESTMEM_ASYNC_LISTENER', message: /listener "slow" can only run on the main thread \(it is not synchronous\)/ });
    await block.unregister(slow);
    const descriptor = block.share();
    descriptor.port.close();
    const plain = { name: 'plain', synchronous: true, populate() {}, discard() {} };
    assert.throws(() => block.register(plain), { code: 'ERR_GUESTMEM_ASYNC_LISTENER', message: /listener "plain" can only run on the main thread \(it cannot describe itself/ });
    block.close();
    assert.throws(() => block.share(), { code: 'ERR_GUESTMEM_CLOSED' });
  });

  it('a Worker\'s conversions follow the plug state the main thread sets while the block is shared: listeners hold shared ∩ plugged', async () => {
    const r = await rig(1);
    try {
      const [worker] = r.workers;
      // Unplugged before a second Worker attaches, and while the first one is attached.
      await r.block.unplug(GPA, 16 * PAGE);
      const late = start(r.block);
      late.worker.unref();
      r.workers.push(late.worker);
      r.threadIds.push(late.worker.threadId);
      for (const [w, first] of [[worker!, 0], [late.worker, 32]] as const) {
        const reply = await ask(w, { op: 'convert', gpa: GPA + first * PAGE, size: 32 * PAGE, to: 'shared' });
        assert.equal(reply.error, undefined, JSON.stringify(reply.error));
      }
      // KVM and the tracker follow the guest everywhere; the listeners hold only what is plugged.
      assert.deepEqual(r.block.attributes.runs('shared'), [[0, 64]]);
      assert.deepEqual(StandinKernelState.runs(r.kernel.attributes), [[0, 64]]);
      assert.deepEqual(StandinKernelState.runs(r.kernel.mappings), [[16, 48]]);
      assert.deepEqual(r.vfio.heldRuns(0, PAGES), [[16, 48]]);
      assert.deepEqual(r.witness.mappedRuns(), [[16, 24]]);
      // Unplugged on the main thread while both Workers are attached: a Worker's conversion back
      // to private then tells no listener of [40, 48).
      await r.block.unplug(GPA + 40 * PAGE, 8 * PAGE);
      assert.deepEqual(StandinKernelState.runs(r.kernel.mappings), [[16, 24], [48, 16]]);
      const back = await ask(late.worker, { op: 'convert', gpa: GPA + 32 * PAGE, size: 16 * PAGE, to: 'private' });
      assert.equal(back.error, undefined, JSON.stringify(back.error));
      assert.deepEqual(StandinKernelState.runs(r.kernel.attributes), [[0, 32], [48, 16]]);
      assert.deepEqual(StandinKernelState.runs(r.kernel.mappings), [[16, 16], [48, 16]]);
      assert.deepEqual(r.vfio.heldRuns(0, PAGES), [[16, 16], [48, 16]]);
      assert.deepEqual(r.block.plugRuns('unplugged'), [[0, 16], [40, 8]]);
      await r.block.plug(GPA, 16 * PAGE);
      await r.block.plug(GPA + 40 * PAGE, 8 * PAGE);
      assertAgreement(r, Array.from({ length: PAGES }, (_, i) => i < 32 || i >= 48), 'all plugged again');
    } finally {
      await closeRig(r);
    }
  });

  it('attachBlock refuses bad options before attaching, and a block without pre-fault tells threads not to', () => {
    const kernel = StandinKernelState.create(GPA, PAGES);
    const block = new RamBlock(new StandinVm(kernel) as unknown as Vm, { slot: 0, gpa: GPA, size: PAGES * PAGE, name: 'options' });
    const descriptor = block.share();
    assert.equal(descriptor.prefaults, false);
    assert.throws(() => attachBlock(descriptor, 'fast' as never), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
    assert.throws(() => attachBlock(descriptor, { prefaultVcpuFd: -1 }), { name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => attachBlock(descriptor, { prefaultVcpuFd: '3' as never }), { name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' });
    // Nothing was attached by the refusals: the descriptor still attaches, once.
    const attached = attachBlock(descriptor, { prefaultVcpuFd: 3 });
    assert.equal(attached.convertSync(GPA, PAGE, 'shared').changed, 1);
    attached.detach();
    block.close();
  });
});
