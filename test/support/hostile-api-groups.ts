// The hostile-input properties over the library's public API, in groups; each group runs
// in a child process of its own (hostile-api-child.ts), so that a crash or a hang fails its
// test instead of killing mocha. Every call gets arbitrary arguments and must return the
// right result (checked against a naive model) or throw a coded error, and change nothing
// when it throws.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import fc from 'fast-check';
import { GranuleRange, bytesOf, isPowerOfTwo } from '../../lib/common/byte-range';
import { HostMapping, removeMemory } from '../../lib/common/host-mapping';
import { GuestMemfd } from '../../lib/kvm/kvm';
import { native, nativeCalls } from '../../lib/common/native';
import { PageBitmap, type Run } from '../../lib/tracker/page-bitmap';
import { RamBlockAttributes } from '../../lib/tracker/ram-block-attributes';
import type { RamDiscardListener } from '../../lib/tracker/ram-discard-listener';
import { RecordingListener } from '../../lib/tracker/recording-listener';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { SURFACE_GROUPS } from './hostile-api-surfaces';
import { PATTERN_GROUPS } from './hostile-patterns';
import { runsWhere } from './naive-runs';
import {
  ARGUMENT_CODES, assertArgumentError, assertCoded, bounded, hostileValue, isBytes, isIndex, isPowerOfTwoExact, sometimes,
} from './hostile-values';

const PAGE = 4096;
/** Runs per property: enough to meet every special value many times, quick on 2 cores. */
const RUNS = Number(process.env.GUESTMEM_HOSTILE_RUNS ?? 300);

/** The model's runs of `value` in [start, end). */
function naiveRuns(bits: boolean[], start: number, end: number, value: boolean): Run[] {
  return runsWhere((page) => bits[page] === value, start, end);
}

/**
 * A valid bit count of more than 2^20 asks for a large bitmap, and gets it: a request, not
 * hostile input. Those are left out so that the groups stay small in memory.
 */
function notHuge(value: unknown): boolean {
  return !(isIndex(value, PageBitmap.MAX_BITS) && value > 2 ** 20);
}

// ---------------------------------------------------------------------------------------
// PageBitmap: every method, arbitrary arguments, against one boolean per bit.

const BITS = 100;
const BITMAP_METHODS = ['test', 'setRange', 'clearRange', 'fillRange', 'findNextSet', 'findNextClear', 'isAllSet', 'isAllClear', 'countSet', 'runs'] as const;
type BitmapMethod = (typeof BITMAP_METHODS)[number];

/** What the call should do with these arguments, or null if they are invalid. */
function bitmapOracle(model: boolean[], method: BitmapMethod, args: unknown[]): { result: unknown; apply?: () => void } | null {
  const [a, b, c] = args;
  const range = isIndex(a, BITS) && isIndex(b, BITS - a);
  switch (method) {
    case 'test':
      return isIndex(a, BITS - 1) ? { result: model[a] } : null;
    case 'setRange':
    case 'clearRange':
    case 'fillRange': {
      const value = method === 'setRange' ? true : method === 'clearRange' ? false : c;
      if (!range || typeof value !== 'boolean') return null;
      return { result: undefined, apply: () => model.fill(value, a, a + b) };
    }
    case 'findNextSet':
    case 'findNextClear': {
      const end = b === undefined ? BITS : b;
      if (!isIndex(a, BITS) || !isIndex(end, BITS)) return null;
      let i = a;
      while (i < end && model[i] !== (method === 'findNextSet')) i++;
      return { result: i < end ? i + 0 : end }; // + 0: the bitmap answers 0, never -0
    }
    case 'isAllSet':
    case 'isAllClear':
      return range ? { result: model.slice(a, a + b).every((bit) => bit === (method === 'isAllSet')) } : null;
    case 'countSet':
      return range ? { result: model.slice(a, a + b).filter(Boolean).length } : null;
    case 'runs':
      return range && typeof c === 'boolean' ? { result: naiveRuns(model, a, a + b, c) } : null;
  }
}

const smallIndex = fc.integer({ min: 0, max: BITS + 2 });

async function pageBitmap(): Promise<void> {
  const call = fc.record({
    method: fc.constantFrom(...BITMAP_METHODS),
    args: fc.tuple(sometimes(smallIndex), sometimes(smallIndex), sometimes(fc.boolean())),
  });
  await fc.assert(
    fc.asyncProperty(fc.array(call, { minLength: 1, maxLength: 30 }), async (calls) => {
      const bitmap = new PageBitmap(BITS);
      const model = new Array<boolean>(BITS).fill(false);
      for (const { method, args } of calls) {
        const before = naiveRuns(model, 0, BITS, true);
        const expected = bitmapOracle(model, method, args);
        const outcome = await bounded(`PageBitmap.${method}`, args, () => (bitmap[method] as (...a: unknown[]) => unknown)(...args));
        if (expected) {
          assert.ok(outcome.ok, `${method}(${fc.stringify(args)}) threw ${String(!outcome.ok && outcome.error)}`);
          assert.deepEqual(outcome.value, expected.result, `${method}(${fc.stringify(args)})`);
          expected.apply?.();
        } else {
          assert.ok(!outcome.ok, `${method}(${fc.stringify(args)}) accepted invalid arguments`);
          assertArgumentError(outcome.error, `${method}(${fc.stringify(args)})`);
        }
        assert.deepEqual(bitmap.runs(0, BITS, true), naiveRuns(model, 0, BITS, true), 'the bitmap matches the model');
        if (!expected) assert.deepEqual(bitmap.runs(0, BITS, true), before, 'a refused call changed nothing');
      }
    }),
    { numRuns: RUNS },
  );
  // The constructor: sizes of every kind; the valid ones are small here, the rest refused.
  await fc.assert(
    fc.asyncProperty(sometimes(fc.integer({ min: 0, max: 5000 })).filter(notHuge), async (bits) => {
      const outcome = await bounded('new PageBitmap', [bits], () => new PageBitmap(bits as number));
      if (isIndex(bits, PageBitmap.MAX_BITS)) {
        assert.ok(outcome.ok && outcome.value.bits === bits && outcome.value.isAllClear(0, bits));
      } else {
        assert.ok(!outcome.ok, `new PageBitmap(${fc.stringify(bits)}) accepted`);
        assertArgumentError(outcome.error, `new PageBitmap(${fc.stringify(bits)})`);
      }
    }),
    { numRuns: RUNS },
  );
}

// ---------------------------------------------------------------------------------------
// GranuleRange, bytesOf, powers of two.

async function byteRanges(): Promise<void> {
  const granularity = fc.oneof(fc.constantFrom(1, 4096, 2 ** 21, 2 ** 52, 2 ** 62, 2 ** 63, 2 ** 64, 2 ** 53 + 2, 2 ** 49 + 1, 2 ** 51 + 1, 2 ** 52 - 1, 3), fc.integer({ min: 1, max: 1 << 20 }));
  const granules = fc.integer({ min: 0, max: 2 ** 40 });
  await fc.assert(
    fc.asyncProperty(sometimes(granules), sometimes(granules), sometimes(granularity), async (first, count, g) => {
      const valid =
        isIndex(first, Number.MAX_SAFE_INTEGER) && isIndex(count, Number.MAX_SAFE_INTEGER - first) && isPowerOfTwoExact(g) &&
        (BigInt(first) + BigInt(count)) * BigInt(g as number) <= 1n << 64n;
      const outcome = await bounded('new GranuleRange', [first, count, g], () => new GranuleRange(first as number, count as number, g as number));
      if (valid) {
        assert.ok(outcome.ok, `GranuleRange(${fc.stringify([first, count, g])}) threw ${String(!outcome.ok && outcome.error)}`);
        assert.equal(outcome.value.offsetBigInt, BigInt(first) * BigInt(g as number));
        assert.match(String(outcome.value), /^\[0x[0-9a-f]+, \+0x[0-9a-f]+\)$/);
      } else {
        assert.ok(!outcome.ok, `GranuleRange(${fc.stringify([first, count, g])}) accepted`);
        assertArgumentError(outcome.error, 'GranuleRange');
      }
      const bytes = await bounded('bytesOf', [first, g], () => bytesOf(first as number, g as number));
      // Bytes are 64-bit: a product past 2^64 (2^53 granules of 2^52 bytes is 2^105) is refused.
      if (isIndex(first, Number.MAX_SAFE_INTEGER) && isPowerOfTwoExact(g) && BigInt(first) * BigInt(g as number) <= 1n << 64n) {
        assert.ok(bytes.ok);
        assert.equal(BigInt(bytes.value), BigInt(first) * BigInt(g as number));
        assert.ok(bytes.value >= 0);
      } else {
        assert.ok(!bytes.ok, `bytesOf(${fc.stringify([first, g])}) accepted`);
        assertArgumentError(bytes.error, 'bytesOf');
      }
    }),
    { numRuns: RUNS * 2 },
  );
  // Every integer near the powers of two up to 2^63 (the largest granule): the bit test, not Math.log2.
  for (let k = 0; k <= 64; k++) {
    for (const delta of [-2, -1, 0, 1, 2]) {
      const value = 2 ** k + delta;
      assert.equal(isPowerOfTwo(value), isPowerOfTwoExact(value), `isPowerOfTwo(2^${k} ${delta >= 0 ? '+' : '-'} ${Math.abs(delta)})`);
    }
  }
}

// ---------------------------------------------------------------------------------------
// The tracker: construction and every operation, with witnesses that must stay exact.

const TRACKER_PAGES = 64;
const TRACKER_CODES = [...ARGUMENT_CODES, 'ERR_GUESTMEM_LISTENER_FAILED', 'ERR_GUESTMEM_ROLLBACK_FAILED', 'ERR_GUESTMEM_ALREADY_REGISTERED', 'ERR_GUESTMEM_NOT_REGISTERED'];

async function trackerConstruction(): Promise<void> {
  const size = fc.oneof(fc.integer({ min: 0, max: 512 }).map((n) => n * PAGE), fc.constantFrom(2 ** 46, 2 ** 50, 2 ** 63, 2n ** 64n - 4096n, 2n ** 64n));
  const options = fc.oneof(
    hostileValue,
    fc.record(
      {
        granularity: sometimes(fc.constantFrom(4096, 2 ** 21, 2 ** 30, 2 ** 51 + 1)),
        name: sometimes(fc.string({ maxLength: 5 })),
        // A valid bound stays small here: a large one lets a large bitmap be allocated, as asked.
        maxBitmapBytes: sometimes(fc.integer({ min: 1, max: 1 << 16 })),
        listenerTimeoutMs: sometimes(fc.integer({ min: 1, max: 1000 })),
      },
      { requiredKeys: [] },
    ),
  );
  await fc.assert(
    fc.asyncProperty(sometimes(size), options, async (s, o) => {
      const outcome = await bounded('new RamBlockAttributes', [s, o], () => new RamBlockAttributes(s as number, o as object));
      if (outcome.ok) {
        const attributes = outcome.value;
        const granularity = (o as { granularity?: number } | undefined)?.granularity ?? 4096;
        assert.ok(isBytes(s) && isPowerOfTwoExact(granularity), `accepted size ${fc.stringify(s)} with ${fc.stringify(o)}`);
        assert.equal(BigInt(attributes.size), BigInt(s));
        assert.equal(BigInt(attributes.granules) * BigInt(granularity), BigInt(s));
        assert.ok(attributes.granules / 8 <= ((o as { maxBitmapBytes?: number } | undefined)?.maxBitmapBytes ?? 256 * 2 ** 20));
      } else {
        assertArgumentError(outcome.error, `new RamBlockAttributes(${fc.stringify(s)}, ${fc.stringify(o)})`);
      }
    }),
    { numRuns: RUNS * 2 },
  );
}

/** Listener objects of every shape: some valid, most missing or mistyping a member. */
const hostileMethod = fc.constantFrom<unknown>(
  () => {},
  async () => {},
  () => {
    throw new Error('hostile listener failure');
  },
  () => Promise.reject(new Error('hostile async failure')),
  () => new Promise(() => {}),
  () => ({ then: 5 }),
  undefined, null, 5, 'populate', {}, Symbol('m'),
);
const hostileListener: fc.Arbitrary<unknown> = fc.oneof(
  hostileValue,
  fc.record(
    {
      name: sometimes(fc.string({ maxLength: 4 })),
      populate: hostileMethod,
      discard: hostileMethod,
      populateRuns: hostileMethod,
      discardRuns: hostileMethod,
      attach: hostileMethod,
      doubleDiscardSupported: sometimes(fc.boolean()),
    },
    { requiredKeys: [] },
  ),
  fc.constant(Object.assign(Object.create(null), { populate() {}, discard() {} })),
  fc.constant(JSON.parse('{"__proto__":{"populate":1,"discard":1}}')),
);

function isFunctionOrAbsent(value: unknown): boolean {
  return value === undefined || typeof value === 'function';
}

/** The independent rule for a listener register must accept. */
function isValidListener(value: unknown): boolean {
  if (value === null || (typeof value !== 'object' && typeof value !== 'function')) return false;
  const l = value as Record<string, unknown>;
  return typeof l.populate === 'function' && typeof l.discard === 'function' &&
    isFunctionOrAbsent(l.populateRuns) && isFunctionOrAbsent(l.discardRuns) && isFunctionOrAbsent(l.attach) &&
    (l.name === undefined || typeof l.name === 'string') &&
    (l.doubleDiscardSupported === undefined || typeof l.doubleDiscardSupported === 'boolean');
}

function isValidRange(offset: unknown, size: unknown): boolean {
  if (!isBytes(offset) || !isBytes(size)) return false;
  const start = BigInt(offset);
  const length = BigInt(size);
  return length > 0n && start % BigInt(PAGE) === 0n && length % BigInt(PAGE) === 0n && start + length <= BigInt(TRACKER_PAGES * PAGE);
}

function isValidSection(section: unknown): section is { offset: number; size: number } {
  return section !== null && typeof section === 'object' && isValidRange((section as { offset?: unknown }).offset, (section as { size?: unknown }).size);
}

const pageBytes = fc.integer({ min: 0, max: TRACKER_PAGES + 1 }).map((n) => n * PAGE);
const bytesArb = fc.oneof(pageBytes, pageBytes.map(BigInt));
const sectionArb = fc.oneof(hostileValue, fc.record({ offset: sometimes(bytesArb), size: sometimes(bytesArb) }));
const stateArb = sometimes(fc.constantFrom('shared', 'private'));

type TrackerOp =
  | { op: 'stateChange'; offset: unknown; size: unknown; to: unknown }
  | { op: 'register'; witness: number | null; listener: unknown; section: unknown }
  | { op: 'unregister'; witness: number | null; listener: unknown }
  | { op: 'query'; method: 'isPopulated' | 'isDiscarded' | 'countShared' | 'runs'; section: unknown; state: unknown }
  | { op: 'replay'; section: unknown; fn: unknown };

const WITNESSES = 3;
const witnessIndex = fc.option(fc.nat(WITNESSES - 1), { freq: 2 });
const trackerOp: fc.Arbitrary<TrackerOp> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('stateChange' as const), offset: sometimes(bytesArb), size: sometimes(bytesArb), to: stateArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('register' as const), witness: witnessIndex, listener: hostileListener, section: sectionArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('unregister' as const), witness: witnessIndex, listener: hostileListener }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('query' as const), method: fc.constantFrom('isPopulated' as const, 'isDiscarded' as const, 'countShared' as const, 'runs' as const), section: sectionArb, state: stateArb }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('replay' as const), section: sectionArb, fn: sometimes(fc.constant(() => {})) }) },
);

async function trackerOperations(): Promise<void> {
  await fc.assert(
    fc.asyncProperty(fc.array(trackerOp, { minLength: 1, maxLength: 25 }), async (ops) => {
      // A timeout, so that a hostile listener that never settles cannot stall the queue.
      const attributes = new RamBlockAttributes(TRACKER_PAGES * PAGE, { name: 'hostile', listenerTimeoutMs: 30 });
      const model = new Array<boolean>(TRACKER_PAGES).fill(false);
      const witnesses = Array.from({ length: WITNESSES }, (_, i) => new RecordingListener(`witness${i}`, TRACKER_PAGES, { batch: i === 1, doubleDiscardSupported: i === 2 }));
      const sections = new Map<RecordingListener, { first: number; end: number }>();
      for (const op of ops) {
        const context = fc.stringify(op);
        const sharedBefore = naiveRuns(model, 0, TRACKER_PAGES, true);
        switch (op.op) {
          case 'stateChange': {
            const outcome = await bounded('stateChange', [op.offset, op.size, op.to], () => attributes.stateChange(op.offset as number, op.size as number, op.to as 'shared'));
            const valid = isValidRange(op.offset, op.size) && (op.to === 'shared' || op.to === 'private');
            if (!valid) {
              assert.ok(!outcome.ok, `accepted ${context}`);
              assertArgumentError(outcome.error, context);
            } else if (outcome.ok) {
              const first = Number(op.offset) / PAGE;
              model.fill(op.to === 'shared', first, first + Number(op.size) / PAGE);
            } else {
              // Only a hostile listener may fail a valid change, and then it rolls back.
              assertCoded(outcome.error, ['ERR_GUESTMEM_LISTENER_FAILED', 'ERR_GUESTMEM_ROLLBACK_FAILED'], context);
            }
            break;
          }
          case 'register': {
            const listener = op.witness === null ? op.listener : witnesses[op.witness]!;
            const outcome = await bounded('register', [listener, op.section], () => attributes.register(listener as RamDiscardListener, op.section as { offset: number; size: number }));
            if (!isValidListener(listener) || !isValidSection(op.section)) {
              assert.ok(!outcome.ok, `accepted ${context}`);
              assertArgumentError(outcome.error, context);
            } else if (outcome.ok) {
              if (listener instanceof RecordingListener) {
                const first = Number(op.section.offset) / PAGE;
                sections.set(listener, { first, end: first + Number(op.section.size) / PAGE });
              }
            } else {
              assertCoded(outcome.error, TRACKER_CODES, context);
            }
            break;
          }
          case 'unregister': {
            const listener = op.witness === null ? op.listener : witnesses[op.witness]!;
            const outcome = await bounded('unregister', [listener], () => attributes.unregister(listener as RamDiscardListener));
            if (outcome.ok) {
              assert.ok(listener instanceof RecordingListener || isValidListener(listener), `unregistered ${context}`);
              if (listener instanceof RecordingListener) sections.delete(listener);
            } else {
              assertCoded(outcome.error, TRACKER_CODES, context);
            }
            break;
          }
          case 'query': {
            const outcome = await bounded(op.method, [op.state, op.section], () =>
              op.method === 'runs'
                ? attributes.runs(op.state as 'shared', op.section as { offset: number; size: number })
                : attributes[op.method](op.section as { offset: number; size: number }),
            );
            const validState = op.method !== 'runs' || op.state === 'shared' || op.state === 'private';
            if (isValidSection(op.section) && validState) {
              assert.ok(outcome.ok, `${context} threw ${String(!outcome.ok && outcome.error)}`);
              const first = Number(op.section.offset) / PAGE;
              const end = first + Number(op.section.size) / PAGE;
              const slice = model.slice(first, end);
              const expected = {
                isPopulated: slice.every(Boolean),
                isDiscarded: !slice.some(Boolean),
                countShared: slice.filter(Boolean).length,
                runs: naiveRuns(model, first, end, op.state === 'shared'),
              }[op.method];
              assert.deepEqual(outcome.value, expected, context);
            } else if (!(op.method === 'runs' && op.section === undefined && validState)) {
              assert.ok(!outcome.ok, `accepted ${context}`);
              assertArgumentError(outcome.error, context);
            }
            break;
          }
          case 'replay': {
            const seen: Run[] = [];
            const fn = typeof op.fn === 'function' ? (range: GranuleRange) => void seen.push([range.first, range.count]) : op.fn;
            const outcome = await bounded('replayPopulated', [op.section, op.fn], () => attributes.replayPopulated(op.section as { offset: number; size: number }, fn as () => void));
            if (isValidSection(op.section) && typeof op.fn === 'function') {
              assert.ok(outcome.ok, `${context} threw`);
              const first = Number(op.section.offset) / PAGE;
              assert.deepEqual(seen, naiveRuns(model, first, first + Number(op.section.size) / PAGE, true));
            } else {
              assert.ok(!outcome.ok, `accepted ${context}`);
              assertArgumentError(outcome.error, context);
            }
            break;
          }
        }
        // After every operation: the tracker is the model, and every registered witness
        // holds exactly the shared granules of its section, whatever the hostile ones did.
        assert.deepEqual(attributes.runs('shared'), naiveRuns(model, 0, TRACKER_PAGES, true), `after ${context}`);
        if (op.op !== 'stateChange') assert.deepEqual(naiveRuns(model, 0, TRACKER_PAGES, true), sharedBefore);
        for (const witness of witnesses) {
          const section = sections.get(witness);
          const expected = section ? naiveRuns(model, section.first, section.end, true) : [];
          assert.deepEqual(witness.mappedRuns(), expected, `${witness.name} after ${context}`);
          assert.equal(witness.errors, 0, `${witness.name} saw no double map or unmap`);
        }
      }
    }),
    { numRuns: RUNS },
  );
}

// ---------------------------------------------------------------------------------------
// Listeners that call back into their own tracker, or never settle.

async function reentryAndTimeouts(): Promise<void> {
  const reentry = fc.record({
    when: fc.constantFrom('populate' as const, 'discard' as const),
    call: fc.constantFrom('stateChange', 'register', 'unregister', 'replayPopulated'),
    swallow: fc.boolean(),
    batch: fc.boolean(),
  });
  await fc.assert(
    fc.asyncProperty(reentry, fc.nat(TRACKER_PAGES - 1), fc.integer({ min: 1, max: 8 }), async ({ when, call, swallow, batch }, first, count) => {
      const attributes = new RamBlockAttributes(TRACKER_PAGES * PAGE, { name: 'reentered' });
      const witness = new RecordingListener('witness', TRACKER_PAGES);
      await attributes.register(witness, { offset: 0, size: TRACKER_PAGES * PAGE });
      count = Math.min(count, TRACKER_PAGES - first);
      if (when === 'discard') await attributes.stateChange(first * PAGE, count * PAGE, 'shared');
      let armed = true;
      const reenter = () => {
        if (!armed) return;
        armed = false;
        const again = () => {
          switch (call) {
            case 'stateChange':
              return attributes.stateChange(0, PAGE, 'shared');
            case 'register':
              return attributes.register(new RecordingListener('late', TRACKER_PAGES), { offset: 0, size: PAGE });
            case 'unregister':
              return attributes.unregister(witness);
            default:
              return attributes.replayPopulated({ offset: 0, size: PAGE }, () => {});
          }
        };
        try {
          void again();
        } catch (error) {
          assertCoded(error, ['ERR_GUESTMEM_REENTRANT_CALL'], 'the re-entrant call');
          if (!swallow) throw error;
        }
      };
      const rogue: RamDiscardListener = batch
        ? { name: 'rogue', populate() {}, discard() {}, populateRuns: () => void (when === 'populate' && reenter()), discardRuns: () => void (when === 'discard' && reenter()) }
        : { name: 'rogue', populate: () => void (when === 'populate' && reenter()), discard: () => void (when === 'discard' && reenter()) };
      await attributes.register(rogue, { offset: 0, size: TRACKER_PAGES * PAGE });
      const before = attributes.runs('shared');
      const outcome = await bounded('stateChange with a re-entrant listener', [when, call, swallow], () =>
        attributes.stateChange(first * PAGE, count * PAGE, when === 'populate' ? 'shared' : 'private'),
      );
      assert.ok(!outcome.ok, 'the change that was re-entered fails');
      assertCoded(outcome.error, ['ERR_GUESTMEM_LISTENER_FAILED'], 'the re-entered change');
      assert.match((outcome.error as Error).message, /listener "rogue" failed .*called from inside one of its own listeners/);
      assertCoded((outcome.error as Error).cause, ['ERR_GUESTMEM_REENTRANT_CALL'], 'its cause');
      assert.deepEqual(attributes.runs('shared'), before, 'rolled back');
      assert.deepEqual(witness.mappedRuns(), before, 'the witness rolled back too');
      // The tracker is not stuck: the next change goes through.
      await attributes.stateChange(first * PAGE, count * PAGE, when === 'populate' ? 'shared' : 'private');
    }),
    { numRuns: RUNS },
  );

  // A listener that never settles, with a timeout: the change fails naming it, rolls back,
  // and the queue moves on.
  for (const kind of ['populate', 'discard', 'populateRuns', 'register'] as const) {
    const attributes = new RamBlockAttributes(TRACKER_PAGES * PAGE, { name: 'stalled', listenerTimeoutMs: 50 });
    const witness = new RecordingListener('witness', TRACKER_PAGES);
    await attributes.register(witness, { offset: 0, size: TRACKER_PAGES * PAGE });
    if (kind !== 'populate' && kind !== 'populateRuns') await attributes.stateChange(0, 4 * PAGE, 'shared');
    const never = () => new Promise<void>(() => {});
    const stuck: RamDiscardListener = kind === 'populateRuns'
      ? { name: 'stuck', populate() {}, discard() {}, populateRuns: never }
      : { name: 'stuck', populate: kind === 'populate' || kind === 'register' ? never : () => {}, discard: kind === 'discard' ? never : () => {} };
    const before = attributes.runs('shared');
    const outcome = await bounded(`a listener that never settles (${kind})`, [], (): Promise<unknown> =>
      kind === 'register'
        ? attributes.register(stuck, { offset: 0, size: TRACKER_PAGES * PAGE })
        : attributes.register(stuck, { offset: 0, size: TRACKER_PAGES * PAGE }).then(() => attributes.stateChange(0, 4 * PAGE, kind === 'discard' ? 'private' : 'shared')),
    );
    assert.ok(!outcome.ok, `${kind}: the change fails`);
    assertCoded(outcome.error, ['ERR_GUESTMEM_LISTENER_FAILED'], kind);
    assert.match((outcome.error as Error).message, /listener "stuck" failed .*did not settle within 50 ms/);
    assertCoded((outcome.error as Error).cause, ['ERR_GUESTMEM_LISTENER_TIMEOUT'], `${kind}: its cause`);
    assert.deepEqual(attributes.runs('shared'), before, `${kind}: rolled back`);
    assert.deepEqual(witness.mappedRuns(), before, `${kind}: the witness rolled back too`);
    const next = await bounded('the next change', [], () => attributes.stateChange(8 * PAGE, PAGE, 'shared'));
    assert.ok(next.ok || kind !== 'register', `${kind}: the queue moves on`);
  }
  // A listener that re-enters after an await cannot be caught in the act (no async context
  // is tracked, to keep notifications free of allocations); the timeout ends the deadlock,
  // the change rolls back, and the call it made runs afterwards, in queue order.
  {
    const attributes = new RamBlockAttributes(TRACKER_PAGES * PAGE, { name: 'late', listenerTimeoutMs: 50 });
    const witness = new RecordingListener('witness', TRACKER_PAGES);
    await attributes.register(witness, { offset: 0, size: TRACKER_PAGES * PAGE });
    let nested: Promise<unknown> | null = null;
    const late: RamDiscardListener = {
      name: 'late',
      async populate() {
        // eslint-disable-next-line @typescript-eslint/await-thenable -- yields once to the microtask queue, so the re-entry comes after an await
        await null;
        if (nested) return;
        nested = attributes.stateChange(8 * PAGE, PAGE, 'shared');
        await nested;
      },
      discard() {},
    };
    await attributes.register(late, { offset: 0, size: TRACKER_PAGES * PAGE });
    const outcome = await bounded('a listener that re-enters after an await', [], () => attributes.stateChange(0, PAGE, 'shared'));
    assert.ok(!outcome.ok);
    assertCoded((outcome.error as Error).cause, ['ERR_GUESTMEM_LISTENER_TIMEOUT'], 'the late re-entry');
    assert.ok(nested, 'the listener made its call');
    await bounded('the call it made', [], () => nested!);
    assert.deepEqual(attributes.runs('shared'), [[8, 1]]);
    assert.deepEqual(witness.mappedRuns(), [[8, 1]]);
  }
}

// ---------------------------------------------------------------------------------------
// RecordingListener: construction and notifications with arbitrary values.

async function recordingListener(): Promise<void> {
  const rangeArb = fc.oneof(
    hostileValue,
    fc.tuple(fc.nat(40), fc.nat(40)).map(([first, count]) => new GranuleRange(first, count, PAGE)),
  );
  await fc.assert(
    fc.asyncProperty(
      sometimes(fc.string({ maxLength: 4 })), sometimes(fc.nat(64)).filter(notHuge), fc.boolean(), fc.array(fc.tuple(fc.constantFrom('populate', 'discard', 'populateRuns', 'discardRuns', 'attach'), sometimes(fc.array(rangeArb, { maxLength: 3 })), rangeArb), { maxLength: 8 }),
      async (name, blockGranules, batch, calls) => {
        const made = await bounded('new RecordingListener', [name, blockGranules, batch], () => new RecordingListener(name as string, blockGranules as number, { batch }));
        if (!made.ok) {
          assertArgumentError(made.error, 'new RecordingListener');
          assert.ok(typeof name !== 'string' || !isIndex(blockGranules, PageBitmap.MAX_BITS));
          return;
        }
        assert.ok(typeof name === 'string' && isIndex(blockGranules, PageBitmap.MAX_BITS), `new RecordingListener(${fc.stringify([name, blockGranules])}) accepted`);
        const listener = made.value;
        for (const [method, ranges, range] of calls) {
          const fn = (listener as unknown as Record<string, unknown>)[method];
          if (typeof fn !== 'function') continue;
          const arg = method.endsWith('Runs') ? ranges : range;
          const mappedBefore = listener.mappedRuns();
          const outcome = await bounded(`RecordingListener.${method}`, [arg], () => (fn as (a: unknown) => unknown).call(listener, arg));
          const inside = (r: unknown) => r instanceof GranuleRange && r.end <= (blockGranules as number);
          const valid = method.endsWith('Runs') ? Array.isArray(arg) && arg.every(inside) : inside(arg);
          if (!valid) {
            assert.ok(!outcome.ok, `${method}(${fc.stringify(arg)}) accepted`);
            assertArgumentError(outcome.error, `${method}(${fc.stringify(arg)})`);
            assert.deepEqual(listener.mappedRuns(), mappedBefore, 'a refused notification changes nothing');
          } else {
            assert.ok(outcome.ok, `${method}(${fc.stringify(arg)}) threw`);
          }
        }
      },
    ),
    { numRuns: RUNS },
  );
}

// ---------------------------------------------------------------------------------------
// Ranges that reach a syscall: refused in JS (no native call) unless they are valid.

async function syscallRanges(): Promise<void> {
  // A refused range must not reach the kernel: counted crossings say whether it did.
  nativeCalls.enabled = true;
  const SIZE = 16 * PAGE;
  const shared = SharedMemory.create(SIZE, 'hostile');
  const memfd = native().memfdCreate('hostile-guest-memfd');
  fs.ftruncateSync(memfd, SIZE);
  // A memfd stands in for a guest_memfd: the range checks are the same, and so is fallocate.
  const guestMemfd = new GuestMemfd(memfd, BigInt(SIZE));
  const offsets = fc.oneof(fc.integer({ min: 0, max: 18 }).map((n) => n * PAGE), fc.constantFrom(1, 2 ** 64, 2n ** 64n - 4096n));
  try {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('discard', 'punchHole', 'allocate'), sometimes(offsets), sometimes(offsets), async (method, offset, size) => {
        const calls = nativeCalls.count;
        const outcome = await bounded(method, [offset, size], () =>
          method === 'discard' ? shared.discard(offset as number, size as number) : guestMemfd[method](offset as number, size as number),
        );
        const valid = isBytes(offset) && isBytes(size) && BigInt(size) > 0n && BigInt(offset) + BigInt(size) <= BigInt(SIZE);
        if (!valid) {
          assert.ok(!outcome.ok, `${method}(${fc.stringify([offset, size])}) accepted`);
          assertArgumentError(outcome.error, `${method}(${fc.stringify([offset, size])})`);
          assert.equal(nativeCalls.count, calls, `${method}(${fc.stringify([offset, size])}) reached the kernel`);
        } else {
          // Valid in JS; the kernel may still refuse an unaligned one, with its own errno.
          if (!outcome.ok) assert.equal(typeof (outcome.error as NodeJS.ErrnoException).errno, 'number', String(outcome.error));
        }
      }),
      { numRuns: RUNS * 2 },
    );
    // Windows onto the shared memory: inside it and usable to the last byte, or refused.
    const lengths = fc.oneof(fc.integer({ min: 0, max: 18 }).map((n) => n * 1024), fc.constantFrom(1, SIZE + 1, 2 ** 32 + 1));
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('view', 'read', 'write'), sometimes(offsets), sometimes(lengths), async (method, offset, length) => {
        // write takes bytes, not a length: a sane length becomes that many bytes, anything else none.
        const writeLength = isIndex(length, SIZE + 1) ? length : 0;
        const outcome = await bounded(`SharedMemory.${method}`, [offset, length], () => {
          if (method === 'write') return shared.write(offset as number, new Uint8Array(writeLength));
          const bytes = shared[method](offset as number, length as number);
          bytes.fill(0x5a);
          return bytes.length;
        });
        const span = method === 'write' ? writeLength : length;
        const valid = isBytes(offset) && isIndex(span, SIZE) && BigInt(offset) + BigInt(span) <= BigInt(SIZE);
        if (valid) assert.ok(outcome.ok, `${method}(${fc.stringify([offset, length])}) threw ${String(!outcome.ok && outcome.error)}`);
        else {
          assert.ok(!outcome.ok, `${method}(${fc.stringify([offset, length])}) accepted`);
          assertArgumentError(outcome.error, `${method}(${fc.stringify([offset, length])})`);
        }
      }),
      { numRuns: RUNS * 2 },
    );
  } finally {
    guestMemfd.close();
    shared.close();
  }
}

// ---------------------------------------------------------------------------------------
// Every mmap the package makes (HostMapping.map, in front of the addon's): a mapping comes
// out usable (every byte readable and writable) or not at all. A read-only one or one past
// the end of its file would kill this process.

async function hostMmap(): Promise<void> {
  const SIZE = 4 * PAGE;
  const fd = native().memfdCreate('hostile-mmap');
  fs.ftruncateSync(fd, SIZE);
  const counts = fc.oneof(fc.integer({ min: 0, max: 6 }).map((n) => n * PAGE), fc.constantFrom(1, PAGE - 1, 2 ** 53, 2n ** 63n));
  const map = HostMapping.map as (...args: unknown[]) => HostMapping;
  try {
    await fc.assert(
      fc.asyncProperty(sometimes(counts), sometimes(counts), sometimes(fc.boolean()), async (length, offset, writable) => {
        const outcome = await bounded('HostMapping.map', [fd, length, offset, writable], () => map(fd, length, offset, 'hostile', writable));
        if (!outcome.ok) {
          assertCoded(outcome.error, [...ARGUMENT_CODES, 'EINVAL', 'ENOMEM', 'EOVERFLOW'], `mmap(${fc.stringify([length, offset, writable])})`);
          return;
        }
        // writable defaults to true: an omitted flag maps read-write, like an explicit true.
        assert.ok(writable === true || writable === undefined, 'only writable mappings are handed out');
        assert.ok(BigInt(offset as number) + BigInt(length as number) <= BigInt(SIZE), 'no mapping past the end of the file');
        const mapping = outcome.value;
        const bytes = mapping.view(0, Number(length));
        bytes.fill(0xa5); // every byte writable
        assert.equal(bytes.reduce((sum, b) => sum + b, 0), 0xa5 * bytes.length); // and readable
        mapping.unmap();
      }),
      { numRuns: RUNS },
    );
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------
// Adopting memory by address (an embedding VMM's guest RAM): any address and length either
// gives windows that are readable and writable to the last byte, or a coded error.
// HostMapping.adopt and removeMemory (the only callers of the addon's adoptMapping and
// madvise) are guarded the same way. An address that is not this process's read-write
// memory would be SIGSEGV.

async function adoptedMemory(): Promise<void> {
  const owner = SharedMemory.create(8 * PAGE, 'hostile-owner');
  const base = owner.address;
  const addresses = fc.oneof(
    fc.integer({ min: -2, max: 10 }).map((n) => base + BigInt(n * PAGE)),
    fc.constantFrom(0n, 1n, 0x1000n, base + 1n, 2n ** 47n, 2n ** 64n - 4096n, Number(base)),
  );
  const lengths = fc.oneof(fc.integer({ min: 0, max: 10 }).map((n) => n * PAGE), fc.constantFrom(1, 2 ** 53, 2n ** 64n - 1n));
  const adopt = HostMapping.adopt as (...args: unknown[]) => HostMapping;
  const remove = removeMemory as (...args: unknown[]) => void;
  // Accepted only over shared read-write mappings (the owner, or another memfd mapping of
  // this process next to it), as /proc/self/maps lists them.
  const inOwner = (address: unknown, length: unknown) => {
    if (!isBytes(address) || !isBytes(length) || BigInt(length) === 0n) return false;
    const start = BigInt(address);
    const end = start + BigInt(length);
    let covered = start;
    for (const line of fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter(Boolean)) {
      const [range = '', perms = ''] = line.split(' ');
      const [a = '0', b = '0'] = range.split('-').map((x) => `0x${x}`);
      if (BigInt(a) <= covered && BigInt(b) > covered) {
        if (perms !== 'rw-s') return false;
        covered = BigInt(b);
        if (covered >= end) return true;
      }
    }
    return false;
  };
  try {
    await fc.assert(
      // close: true would unmap the owner's memory from under it; only a non-boolean is tried.
      fc.asyncProperty(sometimes(addresses), sometimes(lengths), fc.oneof(fc.constant(undefined), fc.constant(false), hostileValue.filter((v) => v !== true)), async (address, length, close) => {
        const outcome = await bounded('SharedMemory.adopt', [address, length, close], () => {
          const memory = SharedMemory.adopt({ address: address as bigint, close: close as boolean }, length as number, 'hostile');
          try {
            const bytes = memory.view(0, Number(memory.size));
            bytes.fill(0x3c);
            return bytes.reduce((sum, b) => sum + b, 0) === 0x3c * bytes.length;
          } finally {
            memory.close();
          }
        });
        if (outcome.ok) {
          assert.ok(inOwner(address, length), `adopted ${fc.stringify([address, length])}, which is not the owner's memory`);
          assert.equal(outcome.value, true);
        } else {
          assertCoded(outcome.error, ARGUMENT_CODES, `SharedMemory.adopt(${fc.stringify([address, length, close])})`);
        }
        // The mapping code's own: refused before the syscall unless the range is this process's memory.
        const advice = await bounded('removeMemory', [address, length], () => remove(address, length));
        if (!advice.ok) assertCoded(advice.error, [...ARGUMENT_CODES, 'EINVAL'], `madvise(${fc.stringify([address, length])})`);
        else assert.ok(inOwner(address, length) || BigInt(length as number) === 0n, `madvise accepted ${fc.stringify([address, length])}`);
        const adopted = await bounded('HostMapping.adopt', [address, length], () => adopt(address, length, 'hostile', false));
        if (adopted.ok) {
          assert.ok(inOwner(address, length), `HostMapping.adopt accepted ${fc.stringify([address, length])}`);
          adopted.value.view(0, Number(length)).fill(1);
          adopted.value.unmap();
        } else {
          assertCoded(adopted.error, ARGUMENT_CODES, `adoptMapping(${fc.stringify([address, length])})`);
        }
      }),
      { numRuns: RUNS },
    );
    assert.equal(owner.read(0, 1).length, 1, 'the owner\'s memory is still mapped');
  } finally {
    owner.close();
  }
}

export const GROUPS: Record<string, () => Promise<void>> = {
  'host-mmap': hostMmap,
  'adopted-memory': adoptedMemory,
  'page-bitmap': pageBitmap,
  'byte-ranges': byteRanges,
  'tracker-construction': trackerConstruction,
  'tracker-operations': trackerOperations,
  'reentry-and-timeouts': reentryAndTimeouts,
  'recording-listener': recordingListener,
  'syscall-ranges': syscallRanges,
  ...SURFACE_GROUPS,
  ...PATTERN_GROUPS,
};
