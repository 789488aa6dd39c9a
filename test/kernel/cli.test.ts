// The guestmem command against a real kernel: probe, convert, run, replay, bench and demo,
// each run as a user runs it, checked by its JSON.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { hostReport, requires } from '../support/requires';
import { findEdu } from '../support/edu';
import { guestmem } from '../support/cli';

describe('guestmem CLI on a real kernel', function () {
  this.timeout(300_000);
  let edu: string;
  let dir: string;

  before(requires('sw-protected-vm', 'memory-attributes', 'vfio-device'));
  before(() => {
    edu = findEdu()!;
    dir = fs.mkdtempSync('/tmp/guestmem-cli-');
  });
  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('probe finds everything the harness provides', () => {
    const result = guestmem(['probe', '--json']);
    assert.equal(result.status, 0);
    const report = JSON.parse(result.stdout);
    for (const key of ['kvm', 'swProtectedVm', 'guestMemfd', 'userMemory2', 'memoryAttributes', 'iommuGroups', 'vfioDevices', 'type1', 'iommufd']) {
      assert.equal(report[key].ok, true, `${key}: ${report[key].why}`);
    }
    assert.deepEqual(report.vfioDevices.devices.map((d: { bdf: string }) => d.bdf), [edu]);
  });

  it('convert shares and unshares ranges with the device attached, timing each', () => {
    const result = guestmem(['convert', '--size', '4M', '--gpa', '16M', '--vfio', edu, '--range', '0+1M', '--to', 'shared', '--range', '64K+64K', '--to', 'private', '--json']);
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.equal(report.vfio.bdf, edu);
    assert.equal(report.vfio.mappings, 256 - 16);
    assert.deepEqual(report.map.shared, [[0, 16], [32, 224]]);
    assert.deepEqual(report.conversions.map((c: { from: string; changed: number; ok: boolean }) => [c.ok, c.from, c.changed]), [[true, 'private', 256], [true, 'shared', 16]]);
    assert.ok(report.conversions.every((c: { nativeCalls: number }) => c.nativeCalls <= 4), 'a conversion crosses into C++ a bounded number of times');
  });

  it('run executes a script against the VM with the VFIO listener, counting a rejected conversion', () => {
    const script = path.join(dir, 'script.txt');
    fs.writeFileSync(script, 'block 2M\nlisten dev 0 2M\nconvert 0 256K shared\nconvert 4K 4K private\nconvert 3 4K shared\n');
    const result = guestmem(['run', script, '--vfio', edu, '--json', '--svg', path.join(dir, 'run.svg')]);
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.deepEqual(report.shared, [[0, 1], [2, 62]]);
    assert.deepEqual(report.listeners.dev, { mapped: [[0, 1], [2, 62]], errors: 0 });
    assert.equal(report.rejected, 1);
    assert.equal(report.failed, 0);
    assert.ok(fs.readFileSync(path.join(dir, 'run.svg'), 'utf8').startsWith('<svg'));
  });

  it('run plugs and unplugs with the VFIO listener: the device\'s listener holds shared ∩ plugged, an unaligned unplug is rejected', () => {
    const script = path.join(dir, 'plug.txt');
    fs.writeFileSync(script, 'block 2M 4K 64K\nlisten dev 0 2M\nconvert 0 256K shared\nunplug 64K 128K\nplug 128K 64K\nunplug 4K 64K\n');
    const result = guestmem(['run', script, '--vfio', edu, '--json']);
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.deepEqual([report.shared, report.unplugged, report.listeners.dev, report.rejected, report.plugs, report.failed], [
      [[0, 64]], [[16, 16]], { mapped: [[0, 16], [32, 32]], errors: 0 }, 1, 3, 0,
    ]);
  });

  it('replay re-runs a QEMU trace on the VM, checking QEMU\'s view', () => {
    const trace = path.join(dir, 'trace.log');
    fs.writeFileSync(trace, [
      '1@1.000001:kvm_convert_memory start 0x1000000 size 0x40000 private_to_shared',
      "1@1.000002:ram_block_attributes_state_change offset 0x0 size 0x40000 from 'discarded' to 'populated'",
      '1@1.000003:kvm_convert_memory start 0x1010000 size 0x1000 shared_to_private',
      "1@1.000004:ram_block_attributes_state_change offset 0x10000 size 0x1000 from 'populated' to 'discarded'",
    ].join('\n'));
    const result = guestmem(['replay', trace, '--gpa', '16M', '--size', '2M', '--vfio', edu, '--json']);
    assert.equal(result.status, 0, result.stderr + result.stdout);
    const report = JSON.parse(result.stdout);
    assert.deepEqual(report.shared, [[0, 16], [17, 47]]);
    assert.equal(report.checked, 2);
    assert.deepEqual(report.mismatches, []);
    assert.deepEqual(report.listeners.vfio.mapped, [[0, 16], [17, 47]]);
  });

  it('bench reports every step and a bounded number of native calls, without and (where KVM has it) with pre-fault', () => {
    const result = guestmem(['bench', '--iterations', '2', '--guest-iterations', '20', '--json']);
    assert.equal(result.status, 0, result.stderr);
    const report = JSON.parse(result.stdout);
    assert.ok(report.backend === 'iommufd' || report.backend === 'type1');
    const sizes = ['1:shared', '1:private', '16:shared', '16:private', '512:shared', '512:private'];
    const modes = report.prefault ? ['no', 'yes'] : ['no'];
    assert.equal(report.prefault, hostReport().preFaultMemory.ok, 'pre-fault measured exactly where the kernel has it');
    type Row = { prefault: boolean; pages: number; to: string; nativeCalls: number; failedPrefaults: number; stepNs: { prefault: number } };
    assert.deepEqual(report.rows.map((r: Row) => `${r.prefault ? 'yes' : 'no'}:${r.pages}:${r.to}`), modes.flatMap((m) => sizes.map((s) => `${m}:${s}`)));
    for (const row of report.rows as Row[]) {
      assert.ok(row.nativeCalls <= (row.prefault ? 5 : 4), `native calls per conversion: ${row.nativeCalls}`);
      assert.equal(row.failedPrefaults, 0);
      assert.equal(row.stepNs.prefault > 0, row.prefault);
    }
    // The guest-driven round trip next to the C VMM loop, same boot.
    const loop = report.guestLoop;
    assert.equal(loop.iterations, 20);
    for (const ns of [loop.guestmemNs, loop.guestmemVfioNs, loop.threadNs, loop.threadVfioNs, loop.cNs, loop.exitNs, loop.cExitNs]) assert.ok(Number.isInteger(ns) && ns > 0, JSON.stringify(loop));
    assert.equal(loop.rounds, 3);
    // Ratios are per round (each against the C run beside it), so only their order is fixed.
    assert.ok(loop.threadRatioRange[0] <= loop.threadRatio && loop.threadRatio <= loop.threadRatioRange[1], JSON.stringify(loop));
    assert.ok(loop.ratio > 0 && loop.threadRatio > 0);
  });

  it('guest runs a guest program with the device attached and shows its conversions and checks', () => {
    const result = guestmem(['guest', 'secret', '--vfio', findEdu()!, '--json']);
    assert.equal(result.status, 0, result.stderr + result.stdout);
    const report = JSON.parse(result.stdout);
    assert.equal(report.ok, true);
    assert.deepEqual(report.conversions, { converted: 2, rejected: 0, failed: 0 });
    assert.deepEqual(report.hostChecks.map((c: { name: string; ok: boolean }) => [c.name, c.ok]), [
      ['memfd-hides-secret', true], ['device-blocked', true], ['memfd-shows-message', true], ['device-reads-message', true],
      ['memfd-gives-back', true], ['device-loses-unplugged', true], ['device-reaches-plugged', true],
    ]);
    const text = guestmem(['guest', 'random', '--vcpus', '2', '--iterations', '10']);
    assert.equal(text.status, 0, text.stderr + text.stdout);
    assert.match(text.stdout, /vCPU [01] MAP_GPA_RANGE \[0x[0-9a-f]+, \+\d+ pages?\) → (shared|private): done/);
    assert.match(text.stdout, /conversions: 20 done, 0 rejected, 0 failed/);
    assert.match(text.stdout, /guest random: every check held/);
    // The same on vCPU threads, each handling its own exits.
    const threaded = guestmem(['guest', 'random', '--vcpus', '2', '--iterations', '10', '--threads', '--json']);
    assert.equal(threaded.status, 0, threaded.stderr + threaded.stdout);
    assert.deepEqual(JSON.parse(threaded.stdout).conversions, { converted: 20, rejected: 0, failed: 0 });
  });

  it('demo proves DMA reaches shared pages and not private ones', () => {
    const result = guestmem(['demo', '--json']);
    assert.equal(result.status, 0, result.stderr + result.stdout);
    const report = JSON.parse(result.stdout);
    assert.equal(report.ok, true);
    assert.deepEqual(report.steps.map((s: { step: string; ok: boolean }) => [s.step, s.ok]), [
      ['add-block', true], ['attach-vfio', true], ['guest-boot', true], ['guest-private', true], ['memfd-blind', true],
      ['dma-private', true], ['guest-shared', true], ['memfd-sees', true], ['dma-shared', true],
      ['memfd-freed', true], ['dma-unplugged', true], ['dma-plugged', true], ['guest-exit', true],
    ]);
    assert.deepEqual(report.map.shared[1], [256, 1]);
  });
});
