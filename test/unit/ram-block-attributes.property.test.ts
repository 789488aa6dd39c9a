// Long random sequences of register / unregister / convert with failing listeners and
// invalid input, checked after every step against a deliberately naive model: one boolean
// per page, and each listener's mappings = shared ∩ its section.

import assert from 'node:assert/strict';
import fc from 'fast-check';
import { RamBlockAttributes } from '../../lib/tracker/ram-block-attributes';
import { RecordingListener } from '../../lib/tracker/recording-listener';
import { naiveRuns } from '../support/naive-runs';

const PAGE = 4096;
const PAGES = 96;
const LISTENERS = 4;

type Op =
  | { op: 'register'; id: number; start: number; count: number; failAfter: number | null }
  | { op: 'unregister'; id: number; failAfter: number | null }
  | { op: 'convert'; start: number; count: number; to: 'shared' | 'private'; failId: number | null; failAfter: number }
  | { op: 'invalid'; offset: number; size: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    op: fc.constant('register' as const),
    id: fc.nat(LISTENERS - 1),
    start: fc.nat(PAGES - 1),
    count: fc.integer({ min: 1, max: PAGES }),
    failAfter: fc.option(fc.nat(3), { freq: 4 }),
  }),
  fc.record({ op: fc.constant('unregister' as const), id: fc.nat(LISTENERS - 1), failAfter: fc.option(fc.nat(3), { freq: 4 }) }),
  fc.record({
    op: fc.constant('convert' as const),
    start: fc.nat(PAGES - 1),
    count: fc.integer({ min: 1, max: 40 }),
    to: fc.constantFrom('shared' as const, 'private' as const),
    failId: fc.option(fc.nat(LISTENERS - 1), { freq: 3 }),
    failAfter: fc.nat(3),
  }),
  fc.record({
    op: fc.constant('invalid' as const),
    offset: fc.oneof(fc.constant(1), fc.constant(PAGES * PAGE), fc.constant(-PAGE), fc.nat(PAGES * PAGE)),
    size: fc.oneof(fc.constant(0), fc.constant(PAGE + 7), fc.constant((PAGES + 1) * PAGE)),
  }),
);

/** Makes the listener throw on its (n+1)-th notification of any kind from now on. */
function failAfter(listener: RecordingListener, n: number | null): void {
  if (n === null) {
    listener.failWhen = null;
    return;
  }
  let seen = 0;
  listener.failWhen = () => seen++ === n;
}

describe('RamBlockAttributes against a naive model', () => {
  it('keeps bitmap and every listener equal to the model over random sequences', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 60 }), async (ops) => {
        const attrs = new RamBlockAttributes(PAGES * PAGE);
        const model = new Array<boolean>(PAGES).fill(false);
        // Half take batches; half support double discard; one of each pair of both.
        const listeners = Array.from(
          { length: LISTENERS },
          (_, id) => new RecordingListener(`l${id}`, PAGES, { doubleDiscardSupported: id % 2 === 1, batch: id >= LISTENERS / 2 }),
        );
        const sections = new Map<number, [number, number]>();

        const snapshot = () => JSON.stringify([attrs.runs('shared'), listeners.map((l) => l.mappedRuns()), attrs.listeners.map((l) => l.name)]);

        for (const step of ops) {
          const before = snapshot();
          let failed = false;
          try {
            if (step.op === 'register') {
              const count = Math.min(step.count, PAGES - step.start);
              failAfter(listeners[step.id]!, step.failAfter);
              await attrs.register(listeners[step.id]!, { offset: step.start * PAGE, size: count * PAGE });
              sections.set(step.id, [step.start, step.start + count]);
            } else if (step.op === 'unregister') {
              failAfter(listeners[step.id]!, step.failAfter);
              await attrs.unregister(listeners[step.id]!);
              sections.delete(step.id);
            } else if (step.op === 'convert') {
              const count = Math.min(step.count, PAGES - step.start);
              for (const l of listeners) l.failWhen = null;
              if (step.failId !== null) failAfter(listeners[step.failId]!, step.failAfter);
              await attrs.stateChange(step.start * PAGE, count * PAGE, step.to);
              model.fill(step.to === 'shared', step.start, step.start + count);
            } else {
              await attrs.stateChange(step.offset, step.size, 'shared');
              assert.fail(`invalid input accepted: ${step.offset}+${step.size}`);
            }
          } catch (error) {
            if ((error as Error).name === 'AssertionError') throw error;
            failed = true;
          } finally {
            for (const l of listeners) l.failWhen = null;
          }
          if (failed) assert.equal(snapshot(), before, `failed ${JSON.stringify(step)} changed state`);

          assert.deepEqual(attrs.runs('shared'), naiveRuns(model));
          assert.equal(attrs.sharedGranules, model.filter(Boolean).length);
          listeners.forEach((listener, id) => {
            const section = sections.get(id);
            const expected = section ? naiveRuns(model, section[0], section[1]) : [];
            assert.deepEqual(listener.mappedRuns(), expected, `listener ${id} after ${JSON.stringify(step)}`);
            assert.equal(listener.errors, 0, `listener ${id} saw a double map or unmap`);
          });
        }
      }),
      { numRuns: 300 },
    );
  });
});
