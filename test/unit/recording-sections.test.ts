import assert from 'node:assert/strict';
import { RamBlockAttributes } from '../../lib/tracker/ram-block-attributes';
import { RecordingListener } from '../../lib/tracker/recording-listener';
import { runScript } from '../../lib/cli/script-runner';
import { TrackerHost } from '../../lib/cli/hosts';
import type { ScriptOp } from '../../lib/cli/conversion-script';

const PAGE = 4096;

describe('recording listeners sized to their section', () => {
  it('records its section alone, in the block\'s granules, and refuses a notification outside it', async () => {
    const attributes = new RamBlockAttributes(256 * PAGE);
    const listener = new RecordingListener('dma', 256, { section: { first: 64, count: 32 } });
    await attributes.register(listener, { offset: 64 * PAGE, size: 32 * PAGE });
    attributes.stateChangeSync(60 * PAGE, 10 * PAGE, 'shared');
    attributes.stateChangeSync(90 * PAGE, 20 * PAGE, 'shared');
    assert.deepEqual(listener.mappedRuns(), [[64, 6], [90, 6]]);
    assert.deepEqual(listener.heldRuns(0, 92), [[64, 6], [90, 2]]);
    assert.equal(listener.mappedGranules, 12);
    assert.equal(listener.errors, 0);
    attributes.stateChangeSync(64 * PAGE, 32 * PAGE, 'private');
    assert.deepEqual(listener.mappedRuns(), []);
    await assert.rejects(attributes.register(new RecordingListener('small', 256, { section: { first: 0, count: 8 } }), { offset: 0, size: 16 * PAGE }), {
      code: 'ERR_GUESTMEM_LISTENER_FAILED',
    });
  });

  it('runs a script of 60,000 one-page listeners on a 64 GiB block (a bitmap of the block each would need 120 GiB)', async () => {
    const ops: ScriptOp[] = [{ op: 'block', line: 1, size: 64 * 2 ** 30, granule: PAGE }];
    for (let i = 0; i < 60_000; i++) ops.push({ op: 'listen', line: i + 2, id: `l${i}`, offset: i * 256 * PAGE, size: PAGE });
    ops.push({ op: 'convert', line: 60_002, offset: 0, size: 512 * PAGE, to: 'shared' });
    const { report } = await runScript(ops, new TrackerHost());
    assert.equal(Object.keys(report.listeners).length, 60_000);
    assert.deepEqual(report.listeners.l1, { mapped: [[256, 1]], errors: 0 });
    assert.deepEqual(report.listeners.l2, { mapped: [], errors: 0 });
  });
});
