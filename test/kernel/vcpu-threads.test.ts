// vCPUs on threads of their own, on a real kernel, with the smallest guest that exits (a
// default-type VM looping on an OUT: these need only KVM, so they run wherever /dev/kvm
// makes default VMs): stop() from the main thread ends a vCPU inside KVM_RUN on its
// worker; a handler that throws, or a worker that dies, stops the VM with an error naming
// the vCPU, and nothing hangs; every run settles, even one closed at once; after close()
// no worker, thread or fd is left, and Node exits on its own.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Kvm } from '../../lib/kvm/kvm';
import { EXIT_LOOP_PORT, exitLoopGuest } from '../../lib/vmm/exit-loop-guest';
import { VcpuThreads } from '../../lib/vmm/vcpu-threads';
import type { LoopMemory } from '../../lib/vmm/vmm-loop';
import { requires } from '../support/requires';

const NO_MEMORY: LoopMemory = { covers: () => false, convert: () => assert.fail('the exit loop converts nothing') };
const MODULE = path.join(__dirname, '..', 'support', 'failing-port-module.js');

function threadsOf(guest: ReturnType<typeof exitLoopGuest>, exportName: string, options: object): VcpuThreads {
  return new VcpuThreads(guest.vcpus, NO_MEMORY, { blocks: [], portModules: [{ module: MODULE, export: exportName, options: { port: EXIT_LOOP_PORT, ...options } }] });
}

/** This process's threads and open fds. */
function census(): { threads: number; fds: number } {
  return { threads: fs.readdirSync('/proc/self/task').length, fds: fs.readdirSync('/proc/self/fd').length };
}

describe('vCPU threads on a real kernel', function () {
  this.timeout(600_000);
  before(requires('kvm'));
  let kvm: Kvm;
  before(() => {
    kvm = Kvm.open();
  });
  after(() => kvm?.close());

  it('runs two vCPUs to their end on threads of their own, each exit handled there', async () => {
    const guest = exitLoopGuest(kvm, 2);
    try {
      const report = await threadsOf(guest, 'counting', { exits: 500 }).run();
      assert.deepEqual(report.vcpus, [{ vcpu: 0, status: 0 }, { vcpu: 1, status: 0 }]);
      assert.equal(report.exits, 1000);
      assert.equal(report.stopped, false);
    } finally {
      guest.close();
    }
  });

  it('stop() from the main thread ends vCPUs inside KVM_RUN on their threads, while the main thread stays free', async () => {
    const guest = exitLoopGuest(kvm, 2);
    try {
      const threads = threadsOf(guest, 'counting', { exits: Number.MAX_SAFE_INTEGER });
      let ticks = 0;
      const timer = setInterval(() => ticks++, 5);
      setTimeout(() => threads.stop(), 300);
      const report = await threads.run();
      clearInterval(timer);
      assert.deepEqual(report.vcpus, [{ vcpu: 0, stopped: true }, { vcpu: 1, stopped: true }]);
      assert.equal(report.stopped, true);
      assert.ok(report.exits > 0);
      assert.ok(ticks > 0, 'the main thread ran timers while the vCPUs ran');
    } finally {
      guest.close();
    }
  });

  it('refuses the main thread\'s runs and register reads while a vCPU thread runs the vCPU', async () => {
    const guest = exitLoopGuest(kvm, 1);
    try {
      const threads = threadsOf(guest, 'counting', { exits: Number.MAX_SAFE_INTEGER });
      const running = threads.run();
      const vcpu = guest.vcpus[0]!;
      assert.throws(() => vcpu.registers, { code: 'ERR_GUESTMEM_BUSY' });
      await assert.rejects(vcpu.run(), { code: 'ERR_GUESTMEM_BUSY' });
      assert.throws(() => vcpu.runSync(), { code: 'ERR_GUESTMEM_BUSY' });
      threads.stop();
      await running;
      assert.equal(typeof vcpu.registers.rip, 'bigint', 'the vCPU is the main thread\'s again');
    } finally {
      guest.close();
    }
  });

  for (const [how, pattern] of [
    ['throw', /injected: the handler failed/],
    ['exit', /vCPU 1 stopped the VM: its thread ended \(exit code 7\) before the vCPU did/],
  ] as const) {
    it(`a handler module that ${how === 'throw' ? 'throws' : 'ends its thread'} on vCPU 1 stops the whole VM, naming the vCPU`, async () => {
      const guest = exitLoopGuest(kvm, 2);
      try {
        // vCPU 0 counts forever: only the failure on vCPU 1 can end it.
        const threads = threadsOf(guest, 'failingOn', { failing: 1, how });
        await assert.rejects(threads.run(), (error: Error & { code?: string; vcpu?: number }) => {
          assert.match(error.message, pattern);
          if (how === 'exit') assert.deepEqual([error.code, error.vcpu], ['ERR_GUESTMEM_VCPU_FAILED', 1]);
          return true;
        });
      } finally {
        guest.close();
      }
    });
  }

  it('every run settles: run() closed at once rejects with ERR_GUESTMEM_CLOSED, 200 times out of 200', async () => {
    let settled = 0;
    for (let i = 0; i < 200; i++) {
      const guest = exitLoopGuest(kvm, 1);
      const vcpu = guest.vcpus[0]!;
      const run = vcpu.run();
      vcpu.close();
      const outcome = await Promise.race([
        run.then(() => 'resolved', (error: { code?: string }) => error.code),
        new Promise((resolve) => setTimeout(() => resolve('pending'), 2000)),
      ]);
      guest.close();
      assert.ok(outcome === 'resolved' || outcome === 'ERR_GUESTMEM_CLOSED', `try ${i}: ${String(outcome)}`);
      settled++;
    }
    assert.equal(settled, 200);
  });

  it('leaves no worker, thread or fd after 100 VM lifecycles with two vCPU threads', async () => {
    const before = census();
    for (let i = 0; i < 100; i++) {
      const guest = exitLoopGuest(kvm, 2);
      try {
        await threadsOf(guest, 'counting', { exits: 10 }).run();
      } finally {
        guest.close();
      }
    }
    // Worker threads end asynchronously after their 'exit' event; give them a moment.
    for (let wait = 0; wait < 50 && census().threads > before.threads; wait++) await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(census(), before);
  });

  it('Node exits on its own once a VM that ran vCPU threads is closed', () => {
    const script = `
      const { Kvm } = require(${JSON.stringify(path.join(__dirname, '..', '..', 'lib', 'kvm', 'kvm.js'))});
      const { exitLoopGuest, EXIT_LOOP_PORT } = require(${JSON.stringify(path.join(__dirname, '..', '..', 'lib', 'vmm', 'exit-loop-guest.js'))});
      const { VcpuThreads } = require(${JSON.stringify(path.join(__dirname, '..', '..', 'lib', 'vmm', 'vcpu-threads.js'))});
      const kvm = Kvm.open();
      const guest = exitLoopGuest(kvm, 2);
      new VcpuThreads(guest.vcpus, { covers: () => false, convert: () => { throw new Error('no'); } }, {
        blocks: [], portModules: [{ module: ${JSON.stringify(MODULE)}, export: 'counting', options: { port: EXIT_LOOP_PORT, exits: 100 } }],
      }).run().then((report) => { console.log(JSON.stringify(report.vcpus)); guest.close(); kvm.close(); });
    `;
    const child = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(child.signal, null, `the child did not exit on its own: ${child.stderr}`);
    assert.equal(child.status, 0, child.stderr);
    assert.deepEqual(JSON.parse(child.stdout), [{ vcpu: 0, status: 0 }, { vcpu: 1, status: 0 }]);
  });
});
