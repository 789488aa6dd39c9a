// PORT_PLUG's answers to the guest: 0 for a plug or unplug done, -KVM_EINVAL for a request
// refused before any step (nothing changed), -KVM_EFAULT for one that failed and was rolled back.

import assert from 'node:assert/strict';
import type { Vm } from '../../lib/kvm/kvm';
import { PunchingVm } from '../support/punching-vm';
import { RamBlock } from '../../lib/memory/ram-block';
import { PORT_PLUG, plugPort } from '../../lib/vmm/plug-port';
import type { IoExit } from '../../lib/vmm/vcpu-exit';

const PAGE = 4096;
const GPA = 1 << 24;


function out(value: number): IoExit {
  const data = Buffer.alloc(4);
  data.writeUInt32LE(value, 0);
  return { reason: 'io', direction: 'out', port: PORT_PLUG, size: 4, count: 1, data } as IoExit;
}

const IN = { reason: 'io', direction: 'in', port: PORT_PLUG, size: 4, count: 1 } as IoExit;

describe('PORT_PLUG', () => {
  it('unplugs (0) and plugs (1) the area and answers 0; answers -EINVAL to a bad request and -EFAULT to a failure, changing nothing', async () => {
    const vm = new PunchingVm(GPA, 16);
    const block = new RamBlock(vm as unknown as Vm, { slot: 0, gpa: GPA, size: 16 * PAGE, name: 'b' });
    const handler = plugPort(block, GPA + 4 * PAGE, 4 * PAGE);
    const context = {} as Parameters<typeof handler>[1];
    const answer = async () => ((await handler(IN, context)) as Uint8Array as Buffer).readInt32LE(0);
    await handler(out(0), context);
    assert.equal(await answer(), 0);
    assert.deepEqual(block.plugRuns('unplugged'), [[4, 4]]);
    await handler(out(7), context);
    assert.equal(await answer(), -22);
    await handler(out(1), context);
    assert.equal(await answer(), 0);
    assert.deepEqual(block.plugRuns('unplugged'), []);
    vm.failPunch = true;
    await handler(out(0), context);
    assert.equal(await answer(), -14);
    assert.deepEqual(block.plugRuns('unplugged'), []);
  });
});
