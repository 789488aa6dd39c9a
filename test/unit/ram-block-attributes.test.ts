import assert from 'node:assert/strict';
import diagnosticsChannel from 'node:diagnostics_channel';
import { RamBlockAttributes } from '../../lib/tracker/ram-block-attributes';
import { RecordingListener } from '../../lib/tracker/recording-listener';
import { STATE_CHANGE_CHANNEL, type StateChangeMessage } from '../../lib/tracker/state-change-channel';
import type { GranuleRange } from '../../lib/common/byte-range';

const PAGE = 4096;
const MiB = 1 << 20;

/** Records every notification as [kind, firstPage, pageCount]. */
class LogListener {
  readonly log: Array<[string, number, number]> = [];
  constructor(readonly name: string, readonly doubleDiscardSupported = false) {}
  populate(range: GranuleRange): void {
    this.log.push(['populate', range.first, range.count]);
  }
  discard(range: GranuleRange): void {
    this.log.push(['discard', range.first, range.count]);
  }
}

function block(pages = 256): RamBlockAttributes {
  return new RamBlockAttributes(pages * PAGE, { name: 'test-block' });
}

async function rejectsWithCode(promise: Promise<unknown>, code: string, pattern?: RegExp): Promise<void> {
  await assert.rejects(promise, (error: Error & { code?: string }) => {
    assert.equal(error.code, code, error.message);
    if (pattern) assert.match(error.message, pattern);
    return true;
  });
}

describe('RamBlockAttributes', () => {
  describe('construction', () => {
    it('starts all private with the default granularity of 4096', () => {
      const attrs = new RamBlockAttributes(MiB);
      assert.equal(attrs.granularity, 4096);
      assert.equal(attrs.granules, 256);
      assert.equal(attrs.size, MiB);
      assert.equal(attrs.sharedGranules, 0);
      assert.equal(attrs.isDiscarded({ offset: 0, size: MiB }), true);
    });

    it('takes a granularity and rejects one that is not a power of two', () => {
      assert.equal(new RamBlockAttributes(MiB, { granularity: 2 * MiB / 4 }).granules, 2);
      assert.throws(() => new RamBlockAttributes(MiB, { granularity: 3000 }), /power of two/);
      assert.throws(() => new RamBlockAttributes(MiB, { granularity: 0 }), /power of two/);
    });

    it('rejects a zero, unaligned or negative size', () => {
      assert.throws(() => new RamBlockAttributes(0), /greater than zero/);
      assert.throws(() => new RamBlockAttributes(PAGE + 1), /multiple of the granularity/);
      assert.throws(() => new RamBlockAttributes(-PAGE), RangeError);
      assert.throws(() => new RamBlockAttributes('4096' as unknown as number), TypeError);
    });

    it('tracks a block larger than 2^53 bytes with a large granule, in exact bigint bytes', async () => {
      const size = 1n << 60n;
      const attrs = new RamBlockAttributes(size, { granularity: 2 ** 40 });
      assert.equal(attrs.granules, 2 ** 20);
      assert.equal(attrs.size, size);
      const listener = new LogListener('big');
      const seen: bigint[] = [];
      await attrs.register({ ...listener, name: 'big', populate: (r) => { seen.push(r.offsetBigInt, r.sizeBigInt); }, discard: () => {} }, { offset: 0n, size });
      await attrs.stateChange((1n << 59n) + (1n << 40n), 1n << 40n, 'shared');
      assert.deepEqual(seen, [(1n << 59n) + (1n << 40n), 1n << 40n]);
      assert.deepEqual(attrs.runs('shared'), [[2 ** 19 + 1, 1]]);
    });
  });

  describe('stateChange', () => {
    it('does nothing when the range is already in the target state', async () => {
      const attrs = block();
      const listener = new LogListener('l');
      await attrs.register(listener, { offset: 0, size: 256 * PAGE });
      const result = await attrs.stateChange(0, 16 * PAGE, 'private');
      assert.deepEqual(result, { from: 'private', to: 'private', changed: 0, changedRuns: 0 });
      assert.deepEqual(listener.log, []);
    });

    it('flips a wholly-other range with one notification per listener, clipped to its section', async () => {
      const attrs = block();
      const whole = new LogListener('whole');
      const low = new LogListener('low');
      const far = new LogListener('far');
      await attrs.register(whole, { offset: 0, size: 256 * PAGE });
      await attrs.register(low, { offset: 0, size: 8 * PAGE });
      await attrs.register(far, { offset: 200 * PAGE, size: 56 * PAGE });
      const result = await attrs.stateChange(4 * PAGE, 16 * PAGE, 'shared');
      assert.deepEqual(result, { from: 'private', to: 'shared', changed: 16, changedRuns: 1 });
      assert.deepEqual(whole.log, [['populate', 4, 16]]);
      assert.deepEqual(low.log, [['populate', 4, 4]]);
      assert.deepEqual(far.log, []);
      assert.deepEqual(attrs.runs('shared'), [[4, 16]]);
      assert.equal(attrs.sharedGranules, 16);
    });

    it('stateChangeSync fills the result object it is given, and the fast and general paths agree', () => {
      const attrs = block();
      const into = { from: 'shared' as const, to: 'shared' as const, changed: -1, changedRuns: -1 };
      const result = attrs.stateChangeSync(4 * PAGE, 16 * PAGE, 'shared', into);
      assert.equal(result, into);
      assert.deepEqual(into, { from: 'private', to: 'shared', changed: 16, changedRuns: 1 });
      // A bigint takes the general path: the same change, the same result.
      assert.deepEqual(attrs.stateChangeSync(0n, BigInt(8 * PAGE), 'private'), { from: 'mixture', to: 'private', changed: 4, changedRuns: 1 });
      assert.deepEqual(attrs.runs('shared'), [[8, 12]]);
      assert.throws(() => attrs.stateChangeSync(PAGE / 2, PAGE, 'shared', into), { code: 'ERR_OUT_OF_RANGE' });
      assert.throws(() => attrs.stateChangeSync(255 * PAGE, 2 * PAGE, 'shared', into), { code: 'ERR_OUT_OF_RANGE' });
      assert.equal(into.changed, 16);
    });

    it('notifies the newest listener first', async () => {
      const attrs = block();
      const order: string[] = [];
      const make = (name: string) => ({ name, populate: () => void order.push(name), discard: () => {} });
      await attrs.register(make('first'), { offset: 0, size: PAGE });
      await attrs.register(make('second'), { offset: 0, size: PAGE });
      await attrs.stateChange(0, PAGE, 'shared');
      assert.deepEqual(order, ['second', 'first']);
    });

    it('flips only the changed runs of a mixture, one notification per run', async () => {
      const attrs = block();
      const listener = new LogListener('l');
      await attrs.register(listener, { offset: 0, size: 256 * PAGE });
      await attrs.stateChange(2 * PAGE, 2 * PAGE, 'shared');
      await attrs.stateChange(8 * PAGE, 3 * PAGE, 'shared');
      listener.log.length = 0;
      const toShared = await attrs.stateChange(0, 16 * PAGE, 'shared');
      assert.deepEqual(toShared, { from: 'mixture', to: 'shared', changed: 11, changedRuns: 3 });
      assert.deepEqual(listener.log, [['populate', 0, 2], ['populate', 4, 4], ['populate', 11, 5]]);
      await attrs.stateChange(5 * PAGE, 1 * PAGE, 'private');
      listener.log.length = 0;
      const toPrivate = await attrs.stateChange(4 * PAGE, 4 * PAGE, 'private');
      assert.deepEqual(toPrivate, { from: 'mixture', to: 'private', changed: 3, changedRuns: 2 });
      assert.deepEqual(listener.log, [['discard', 4, 1], ['discard', 6, 2]]);
    });

    it('rejects invalid ranges with a clear error and changes nothing', async () => {
      const attrs = block();
      const listener = new LogListener('l');
      await attrs.register(listener, { offset: 0, size: 256 * PAGE });
      const cases: Array<[unknown, unknown, RegExp]> = [
        [1, PAGE, /not aligned/],
        [0, PAGE + 1, /not a multiple/],
        [0, 0, /greater than zero/],
        [255 * PAGE, 2 * PAGE, /outside the block/],
        [2n ** 64n - 4096n, 8192n, /overflows past 2\^64/],
        [-PAGE, PAGE, /non-negative/],
        [0.5, PAGE, /safe integer/],
        [2n ** 64n, PAGE, /within \[0, 2\^64\)/],
      ];
      for (const [offset, size, pattern] of cases) {
        assert.throws(() => attrs.stateChange(offset as number, size as number, 'shared'), (e: Error & { code?: string }) => {
          assert.ok(e instanceof RangeError, `${String(offset)}+${String(size)}: ${e.message}`);
          assert.equal(e.code, 'ERR_OUT_OF_RANGE');
          assert.match(e.message, pattern);
          return true;
        });
      }
      assert.throws(() => attrs.stateChange('0' as unknown as number, PAGE, 'shared'), TypeError);
      assert.throws(() => attrs.stateChange(0, PAGE, 'public' as 'shared'), /'shared' or 'private'/);
      assert.deepEqual(listener.log, []);
      assert.equal(attrs.sharedGranules, 0);
    });

    it('publishes each change on the diagnostics channel', async () => {
      const attrs = block();
      const messages: StateChangeMessage[] = [];
      const onMessage = (m: unknown) => void messages.push(m as StateChangeMessage);
      diagnosticsChannel.subscribe(STATE_CHANGE_CHANNEL, onMessage);
      try {
        await attrs.stateChange(0, 2 * PAGE, 'shared');
        await attrs.stateChange(0, 4 * PAGE, 'shared');
        await attrs.stateChange(0, 4 * PAGE, 'private');
      } finally {
        diagnosticsChannel.unsubscribe(STATE_CHANGE_CHANNEL, onMessage);
      }
      assert.deepEqual(messages, [
        { block: 'test-block', offset: 0, size: 2 * PAGE, from: 'private', to: 'shared' },
        { block: 'test-block', offset: 0, size: 4 * PAGE, from: 'mixture', to: 'shared' },
        { block: 'test-block', offset: 0, size: 4 * PAGE, from: 'shared', to: 'private' },
      ]);
    });
  });

  describe('batches', () => {
    /** Takes batches and logs each call with its runs. */
    class BatchListener extends LogListener {
      readonly calls: Array<[string, Array<[number, number]>]> = [];
      fail = false;
      populateRuns(ranges: GranuleRange[]): void {
        if (this.fail) throw new Error('batch refused');
        this.calls.push(['populateRuns', ranges.map((r) => [r.first, r.count])]);
      }
      discardRuns(ranges: GranuleRange[]): void {
        this.calls.push(['discardRuns', ranges.map((r) => [r.first, r.count])]);
      }
    }

    it('hands a batch listener every changed run of a mixture in one call', async () => {
      const attrs = block();
      const listener = new BatchListener('batch');
      await attrs.register(listener, { offset: 0, size: 256 * PAGE });
      await attrs.stateChange(2 * PAGE, 2 * PAGE, 'shared');
      await attrs.stateChange(8 * PAGE, 3 * PAGE, 'shared');
      await attrs.stateChange(0, 16 * PAGE, 'shared');
      await attrs.stateChange(0, 16 * PAGE, 'private');
      assert.deepEqual(listener.calls, [
        ['populateRuns', [[2, 2]]],
        ['populateRuns', [[8, 3]]],
        ['populateRuns', [[0, 2], [4, 4], [11, 5]]],
        ['discardRuns', [[0, 16]]],
      ]);
      assert.deepEqual(listener.log, [], 'the per-range methods are not used');
    });

    it('replays on register in one batch, and undoes other listeners when a batch fails', async () => {
      const attrs = block();
      const witness = new RecordingListener('witness', 256);
      await attrs.register(witness, { offset: 0, size: 256 * PAGE });
      await attrs.stateChange(0, 2 * PAGE, 'shared');
      await attrs.stateChange(4 * PAGE, 2 * PAGE, 'shared');
      const listener = new BatchListener('batch');
      await attrs.register(listener, { offset: 0, size: 256 * PAGE });
      assert.deepEqual(listener.calls, [['populateRuns', [[0, 2], [4, 2]]]]);
      listener.fail = true;
      // The batch listener is newest, so it is asked first: nothing to undo but the bitmap.
      await rejectsWithCode(attrs.stateChange(0, 8 * PAGE, 'shared'), 'ERR_GUESTMEM_LISTENER_FAILED', /"batch" failed to populate 2 runs from \[0x2000, \+0x2000\) to \[0x6000, \+0x2000\)/);
      assert.deepEqual(attrs.runs('shared'), [[0, 2], [4, 2]]);
      assert.deepEqual(witness.mappedRuns(), [[0, 2], [4, 2]]);
    });
  });

  describe('listener failures', () => {
    it('rolls a whole change back when a populate throws, naming the listener and range', async () => {
      const attrs = block();
      const older = new RecordingListener('older', 256);
      const failing = new RecordingListener('failing', 256);
      await attrs.register(older, { offset: 0, size: 256 * PAGE });
      await attrs.register(failing, { offset: 0, size: 256 * PAGE });
      await attrs.stateChange(2 * PAGE, PAGE, 'shared');
      // The mixture's second changed run is pages 3..7: fail there, after the first run went through.
      failing.failWhen = (kind, range) => kind === 'populate' && range.first === 3;
      await rejectsWithCode(attrs.stateChange(0, 8 * PAGE, 'shared'), 'ERR_GUESTMEM_LISTENER_FAILED', /"failing" failed to populate \[0x3000, \+0x5000\) of test-block/);
      assert.deepEqual(attrs.runs('shared'), [[2, 1]]);
      assert.deepEqual(failing.mappedRuns(), [[2, 1]]);
      assert.deepEqual(older.mappedRuns(), [[2, 1]]);
      assert.equal(older.errors + failing.errors, 0);
      assert.equal(attrs.sharedGranules, 1);
    });

    it('rolls back when a listener returns a rejected promise', async () => {
      const attrs = block();
      const good = new RecordingListener('good', 256);
      await attrs.register(good, { offset: 0, size: 256 * PAGE });
      await attrs.register({ name: 'async-bad', populate: () => Promise.reject(new Error('ENOSPC')), discard: async () => {} }, { offset: 0, size: PAGE });
      await rejectsWithCode(attrs.stateChange(0, 4 * PAGE, 'shared'), 'ERR_GUESTMEM_LISTENER_FAILED', /async-bad.*ENOSPC/);
      assert.deepEqual(attrs.runs('shared'), []);
      assert.deepEqual(good.mappedRuns(), []);
    });

    it('rolls a conversion to private back when a discard fails, so no listener lost a mapping silently', async () => {
      const attrs = block();
      const a = new RecordingListener('a', 256);
      const b = new RecordingListener('b', 256);
      await attrs.register(a, { offset: 0, size: 256 * PAGE });
      await attrs.register(b, { offset: 0, size: 256 * PAGE });
      await attrs.stateChange(0, 8 * PAGE, 'shared');
      a.failWhen = (kind) => kind === 'discard';
      await rejectsWithCode(attrs.stateChange(0, 8 * PAGE, 'private'), 'ERR_GUESTMEM_LISTENER_FAILED', /"a" failed to discard/);
      assert.deepEqual(attrs.runs('shared'), [[0, 8]]);
      assert.deepEqual(a.mappedRuns(), [[0, 8]]);
      assert.deepEqual(b.mappedRuns(), [[0, 8]]);
      assert.equal(a.errors + b.errors, 0);
    });

    it('reports a rollback that fails as ERR_GUESTMEM_ROLLBACK_FAILED', async () => {
      const attrs = block();
      const stubborn = new RecordingListener('stubborn', 256);
      // Registered last, stubborn is notified first: its populate is what must be undone.
      await attrs.register({ name: 'bad', populate: () => { throw new Error('no'); }, discard: () => {} }, { offset: 0, size: PAGE });
      await attrs.register(stubborn, { offset: 0, size: 256 * PAGE });
      stubborn.failWhen = (kind) => kind === 'discard';
      await rejectsWithCode(attrs.stateChange(0, PAGE, 'shared'), 'ERR_GUESTMEM_ROLLBACK_FAILED', /rolling back also failed/);
    });
  });

  describe('register / unregister', () => {
    it('replays every shared run of the section on register', async () => {
      const attrs = block();
      await attrs.stateChange(0, 4 * PAGE, 'shared');
      await attrs.stateChange(10 * PAGE, 4 * PAGE, 'shared');
      const listener = new LogListener('late');
      await attrs.register(listener, { offset: 2 * PAGE, size: 10 * PAGE });
      assert.deepEqual(listener.log, [['populate', 2, 2], ['populate', 10, 2]]);
    });

    it('leaves nothing half-registered when a replay fails', async () => {
      const attrs = block();
      await attrs.stateChange(0, 4 * PAGE, 'shared');
      await attrs.stateChange(10 * PAGE, 4 * PAGE, 'shared');
      const listener = new RecordingListener('flaky', 256);
      listener.failWhen = (kind, range) => kind === 'populate' && range.first === 10;
      await rejectsWithCode(attrs.register(listener, { offset: 0, size: 256 * PAGE }), 'ERR_GUESTMEM_LISTENER_FAILED', /flaky/);
      assert.deepEqual(listener.mappedRuns(), []);
      assert.deepEqual(attrs.listeners, []);
      listener.failWhen = null;
      await attrs.register(listener, { offset: 0, size: 256 * PAGE });
      assert.deepEqual(listener.mappedRuns(), [[0, 4], [10, 4]]);
    });

    it('discards each shared run on unregister, or the whole section once for double discard', async () => {
      const attrs = block();
      const plain = new LogListener('plain');
      const double = new LogListener('double', true);
      await attrs.register(plain, { offset: 0, size: 16 * PAGE });
      await attrs.register(double, { offset: 0, size: 16 * PAGE });
      await attrs.stateChange(0, 2 * PAGE, 'shared');
      await attrs.stateChange(4 * PAGE, 2 * PAGE, 'shared');
      plain.log.length = 0;
      double.log.length = 0;
      await attrs.unregister(plain);
      await attrs.unregister(double);
      assert.deepEqual(plain.log, [['discard', 0, 2], ['discard', 4, 2]]);
      assert.deepEqual(double.log, [['discard', 0, 16]]);
      assert.deepEqual(attrs.listeners, []);
      await attrs.stateChange(0, 16 * PAGE, 'shared');
      assert.deepEqual(plain.log.length + double.log.length, 3);
    });

    it('keeps a listener whose unregister discard fails, with what it had', async () => {
      const attrs = block();
      const listener = new RecordingListener('sticky', 256);
      await attrs.register(listener, { offset: 0, size: 256 * PAGE });
      await attrs.stateChange(0, 2 * PAGE, 'shared');
      await attrs.stateChange(4 * PAGE, 2 * PAGE, 'shared');
      listener.failWhen = (kind, range) => kind === 'discard' && range.first === 4;
      await rejectsWithCode(attrs.unregister(listener), 'ERR_GUESTMEM_LISTENER_FAILED', /sticky/);
      assert.deepEqual(attrs.listeners, [listener]);
      assert.deepEqual(listener.mappedRuns(), [[0, 2], [4, 2]]);
      assert.equal(listener.errors, 0);
    });

    it('rejects a second registration, an unknown listener and a section outside the block', async () => {
      const attrs = block();
      const listener = new LogListener('twice');
      await attrs.register(listener, { offset: 0, size: PAGE });
      await rejectsWithCode(attrs.register(listener, { offset: 0, size: PAGE }), 'ERR_GUESTMEM_ALREADY_REGISTERED', /twice/);
      await rejectsWithCode(attrs.unregister(new LogListener('stranger')), 'ERR_GUESTMEM_NOT_REGISTERED', /stranger/);
      assert.throws(() => attrs.register(new LogListener('x'), { offset: 255 * PAGE, size: 2 * PAGE }), /outside the block/);
      assert.throws(() => attrs.register(new LogListener('x'), { offset: 0, size: 0 }), /greater than zero/);
      assert.deepEqual(attrs.listeners, [listener]);
    });
  });

  describe('queries and replays', () => {
    it('answers is-populated and replays shared and private runs clipped to a section', async () => {
      const attrs = block(64);
      await attrs.stateChange(4 * PAGE, 4 * PAGE, 'shared');
      assert.equal(attrs.isPopulated({ offset: 4 * PAGE, size: 4 * PAGE }), true);
      assert.equal(attrs.isPopulated({ offset: 4 * PAGE, size: 5 * PAGE }), false);
      const shared: Array<[number, number]> = [];
      const priv: Array<[number, number]> = [];
      await attrs.replayPopulated({ offset: 6 * PAGE, size: 10 * PAGE }, (r) => void shared.push([r.offset, r.size]));
      await attrs.replayDiscarded({ offset: 0, size: 10 * PAGE }, (r) => void priv.push([r.first, r.count]));
      assert.deepEqual(shared, [[6 * PAGE, 2 * PAGE]]);
      assert.deepEqual(priv, [[0, 4], [8, 2]]);
      assert.equal(attrs.countShared({ offset: 0, size: 64 * PAGE }), 4);
    });

    it('stops a replay at the first error and returns it', async () => {
      const attrs = block(64);
      await attrs.stateChange(0, PAGE, 'shared');
      await attrs.stateChange(4 * PAGE, PAGE, 'shared');
      let calls = 0;
      await assert.rejects(
        attrs.replayPopulated({ offset: 0, size: 64 * PAGE }, () => {
          calls++;
          throw new Error('stop here');
        }),
        /stop here/,
      );
      assert.equal(calls, 1);
    });

    it('runs concurrent operations one at a time, in call order', async () => {
      const attrs = block(64);
      const events: string[] = [];
      await attrs.register(
        {
          name: 'slow',
          populate: async (r) => {
            events.push(`start ${r.first}`);
            await new Promise((resolve) => setTimeout(resolve, 5));
            events.push(`end ${r.first}`);
          },
          discard: () => {},
        },
        { offset: 0, size: 64 * PAGE },
      );
      await Promise.all([attrs.stateChange(0, PAGE, 'shared'), attrs.stateChange(PAGE, PAGE, 'shared')]);
      assert.deepEqual(events, ['start 0', 'end 0', 'start 1', 'end 1']);
    });
  });
});
