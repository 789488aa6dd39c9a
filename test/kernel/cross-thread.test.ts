// One RAM block of a SW-protected VM converted from a Worker and the main thread at once,
// with a real VfioDmaListener on the edu device (iommufd and type1): the Worker's KVM calls,
// punch-holes and DMA maps go through the main thread's fds by number, under the block's
// lock. Afterwards KVM (as recorded), the tracker and the IOMMU agree, and real DMA reaches
// a page the Worker made shared and not one it made private. Where KVM pre-faults, both
// threads pre-fault what they convert, each through a vCPU of its own.

import assert from 'node:assert/strict';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { AssignedDevice } from '../../lib/vfio/assigned-device';
import { DmaProbe } from '../../lib/vmm/dma-probe';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { Kvm } from '../../lib/kvm/kvm';
import { Vcpu } from '../../lib/vmm/vcpu';
import type { PageState } from '../../lib/tracker/state-change-channel';
import type { StateChangeResult } from '../../lib/tracker/ram-block-attributes';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import type { ErrorReport, Order } from '../support/attached-block-worker';
import { findEdu } from '../support/edu';
import { prng } from '../support/prng';
import { requires } from '../support/requires';

const PAGE = 4096;
const MiB = 1 << 20;
const GPA = 16 * MiB;
const PAGES = 256;
const WORKER = path.join(__dirname, '../support/attached-block-worker.js');

type Reply = { result?: StateChangeResult; error?: ErrorReport };

/** A worker's messages, one at a time, in order; an exit fails whoever waits. */
function inbox(worker: Worker): () => Promise<unknown> {
  const queued: unknown[] = [];
  const waiting: Array<{ resolve: (m: unknown) => void; reject: (e: Error) => void }> = [];
  worker.on('message', (m) => (waiting.length > 0 ? waiting.shift()!.resolve(m) : queued.push(m)));
  worker.on('exit', (code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`worker exited with ${code}`));
  });
  return () => (queued.length > 0 ? Promise.resolve(queued.shift()) : new Promise((resolve, reject) => waiting.push({ resolve, reject })));
}

describe('a block converted from a Worker and the main thread on a real kernel', function () {
  this.timeout(300_000);
  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device'));

  for (const backend of ['iommufd', 'type1'] as const) {
    it(`with ${backend}: both convert overlapping ranges at once; KVM, tracker and IOMMU agree; DMA reaches the shared page alone`, async function () {
      requires(backend === 'type1' ? 'vfio-type1' : 'iommufd').call(this);
      const kvm = Kvm.open();
      const vm = kvm.createVm('sw-protected');
      const prefaults = vm.supportsPreFault;
      const vcpus = prefaults ? [Vcpu.create(kvm, vm, 0), Vcpu.create(kvm, vm, 1)] : [];
      const memory = new GuestMemory(vm, prefaults ? { prefault: () => vcpus[0]!.fd } : {});
      const assigned = AssignedDevice.open(findEdu()!, { backend });
      let worker: Worker | null = null;
      try {
        const block = memory.addBlock({ gpa: GPA, size: PAGES * PAGE });
        const listener = new VfioDmaListener(assigned.dma, { sharedAddress: block.shared.address, gpa: BigInt(GPA) });
        await block.register(listener);
        const descriptor = block.share();
        assert.equal(descriptor.prefaults, prefaults);
        worker = new Worker(WORKER, { workerData: { descriptor, prefaultVcpuFd: vcpus[1]?.fd }, transferList: [descriptor.port] });
        const random = prng(23);
        const storm = () => Array.from({ length: 150 }, () => {
          const first = random(PAGES);
          const count = 1 + random(Math.min(32, PAGES - first));
          return [GPA + first * PAGE, count * PAGE, random(2) === 0 ? 'shared' : 'private'] as [number, number, PageState];
        });
        const next = inbox(worker);
        const gate = new SharedArrayBuffer(4);
        worker.postMessage({ op: 'storm', conversions: storm(), gate } satisfies Order);
        // Ready first; then both threads start at once.
        await next();
        Atomics.store(new Int32Array(gate), 0, 1);
        Atomics.notify(new Int32Array(gate), 0);
        let signed = 0;
        for (const [gpa, size, to] of storm()) {
          const result = block.convertSync(gpa, size, to);
          signed += to === 'shared' ? result.changed : -result.changed;
        }
        const { results, stats } = (await next()) as { results: Reply[]; stats: { prefaultFailed: number; ns: { prefault: string } } };
        // The worker pre-faulted through its own vCPU, each time successfully.
        assert.equal(BigInt(stats.ns.prefault) > 0n, prefaults, JSON.stringify(stats));
        assert.equal(stats.prefaultFailed, 0);
        assert.equal(block.stats.prefaultFailed, 0);
        for (const { result, error } of results) {
          assert.equal(error, undefined, error?.message);
          signed += result!.to === 'shared' ? result!.changed : -result!.changed;
        }
        assert.equal(signed, block.sharedPages, 'each granule flipped once per conversion that said it did');
        assert.deepEqual(block.disagreements(), []);
        assert.deepEqual(block.kvmRuns(), block.attributes.runs('shared'));
        assert.deepEqual(listener.heldRuns(0, PAGES), block.attributes.runs('shared'));
        assert.equal(listener.mappings, block.sharedPages);

        // The worker makes page 0 shared and page 1 private; the device must follow.
        const ask = (order: Order) => {
          worker!.postMessage(order);
          return next() as Promise<Reply>;
        };
        assert.equal((await ask({ op: 'convert', gpa: GPA, size: PAGE, to: 'shared' })).error, undefined);
        assert.equal((await ask({ op: 'convert', gpa: GPA + PAGE, size: PAGE, to: 'private' })).error, undefined);
        assert.deepEqual(block.disagreements(), []);
        using probe = new DmaProbe(assigned);
        assert.equal(await probe.canRead(block, 0, 0x5a), true, 'the device reads the page the worker made shared');
        assert.equal(await probe.canRead(block, PAGE, 0xa5), false, 'the device cannot read the page the worker made private');
      } finally {
        await worker?.terminate();
        await memory.shutdown();
        for (const vcpu of vcpus) vcpu.close();
        assigned.close();
        kvm.close();
      }
    });

    it(`with ${backend}: a Worker terminated mid-conversion; recoverFrom, repair, and KVM, tracker, IOMMU and the device agree again`, async function () {
      requires(backend === 'type1' ? 'vfio-type1' : 'iommufd').call(this);
      const kvm = Kvm.open();
      const memory = new GuestMemory(kvm.createVm('sw-protected'));
      const assigned = AssignedDevice.open(findEdu()!, { backend });
      try {
        const block = memory.addBlock({ gpa: GPA, size: PAGES * PAGE });
        const listener = new VfioDmaListener(assigned.dma, { sharedAddress: block.shared.address, gpa: BigInt(GPA) });
        await block.register(listener);
        using probe = new DmaProbe(assigned);
        const intents: unknown[] = [];
        for (let round = 0; round < 4; round++) {
          const descriptor = block.share();
          const worker = new Worker(WORKER, { workerData: { descriptor }, transferList: [descriptor.port] });
          const id = worker.threadId;
          const next = inbox(worker);
          worker.postMessage({ op: 'forever', gpa: GPA, pages: PAGES, seed: round + 1 } satisfies Order);
          await next();
          await new Promise((resolve) => setTimeout(resolve, 30 + 40 * round));
          await worker.terminate();
          const intent = block.recoverFrom(id);
          intents.push(intent);
          if (intent && intent.count > 0) {
            assert.deepEqual(block.doubtfulRuns, [[intent.first, intent.count]]);
            await assert.rejects(block.convert(GPA + intent.first * PAGE, PAGE, 'private'), { code: 'ERR_GUESTMEM_CONVERSION_REJECTED' });
          }
          await block.repair();
          assert.deepEqual(block.disagreements(), [], `round ${round}, intent ${JSON.stringify(intent)}`);
          assert.deepEqual(block.kvmRuns(), block.attributes.runs('shared'));
          assert.deepEqual(listener.heldRuns(0, PAGES), block.attributes.runs('shared'));
          // The device reaches exactly what the tracker calls shared: one page of each kind.
          const shared = block.attributes.runs('shared')[0];
          const unshared = block.attributes.runs('private')[0];
          if (shared) assert.equal(await probe.canRead(block, shared[0] * PAGE, 0x11 + round), true, `round ${round}: shared page ${shared[0]}`);
          if (unshared) assert.equal(await probe.canRead(block, unshared[0] * PAGE, 0x21 + round), false, `round ${round}: private page ${unshared[0]}`);
        }
        console.log(`      (intents recovered: ${JSON.stringify(intents)})`);
      } finally {
        await memory.shutdown();
        assigned.close();
        kvm.close();
      }
    });
  }
});
