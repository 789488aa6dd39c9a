// `guestmem demo` as a newcomer runs it: from this host, through the harness VM when the
// host lacks SW-protected VMs or a vfio-pci device (ours do), directly otherwise.

import assert from 'node:assert/strict';
import { guestmem } from '../support/cli';
import { hostReport } from '../support/requires';

describe('guestmem demo from the host', function () {
  this.timeout(1_200_000);

  it('runs every step, proves the DMA claims, and ends with the expected map', () => {
    const report = hostReport();
    const direct = report.swProtectedVm.ok && report.memoryAttributes.ok && report.vfioDevices.ok;
    const result = guestmem(['demo', '--json']);
    assert.equal(result.status, 0, result.stderr + result.stdout);
    if (!direct) assert.match(result.stderr, /not possible on this host .*; running it inside the harness VM/);
    const lines = result.stdout.trim().split('\n');
    assert.equal(lines.length, 1, 'one JSON object, nothing else');
    const demo = JSON.parse(lines[0]!);
    assert.equal(demo.ok, true);
    assert.deepEqual(
      demo.steps.map((s: { step: string; ok: boolean }) => [s.step, s.ok]),
      ['add-block', 'attach-vfio', 'guest-boot', 'guest-private', 'memfd-blind', 'dma-private', 'guest-shared', 'memfd-sees', 'dma-shared', 'memfd-freed', 'dma-unplugged', 'dma-plugged', 'guest-exit'].map((s) => [s, true]),
    );
    for (const step of demo.steps) assert.ok(step.ms >= 0 && typeof step.detail === 'string');
    assert.match(demo.steps[5].detail, /the device cannot reach the private page by DMA/);
    assert.match(demo.steps[8].detail, /the device read the guest's message by DMA/);
    assert.match(demo.guestConsole, /^secret: converting a page private\nsecret: done\n$/);
    // Shared at the end: the guest's boot region at the block's start, and its page 1 MiB in.
    const [boot, page] = demo.map.shared;
    assert.equal(boot[0], 0);
    assert.deepEqual(page, [256, 1]);
    assert.equal(demo.map.shared.length, 2);
    assert.equal(demo.map.sharedPages, boot[1] + 1);
    assert.equal(demo.map.privatePages, 1024 - boot[1] - 1);
  });
});
