// The second pass of hostile input (issue 25), as groups for the hostile-api child: every
// callback a user supplies made to reject; memory adopted by fd or by address outliving
// its owner; the public functions and constructors fed null, the wrong type, NaN,
// ±Infinity, negatives, 2^53 and 2^64 in each argument; the inputs the first pass let
// through. Each group runs in a child process of its own (hostile-api-child.ts): an
// unhandled rejection, a signal or a hang fails its test.

import assert from 'node:assert/strict';
import diagnostics from 'node:diagnostics_channel';
import fs from 'node:fs';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { GranuleRange, bytesOf } from '../../lib/common/byte-range';
import { native } from '../../lib/common/native';
import { DelegatedVm } from '../../lib/kvm/delegated-vm';
import { SnpLaunch } from '../../lib/kvm/snp-launch';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { vmTypesInMask } from '../../lib/kvm/vm-types';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { PageBitmap, RunList } from '../../lib/tracker/page-bitmap';
import { RamBlockAttributes } from '../../lib/tracker/ram-block-attributes';
import type { RamDiscardListener } from '../../lib/tracker/ram-discard-listener';
import { RecordingListener } from '../../lib/tracker/recording-listener';
import { STATE_CHANGE_CHANNEL } from '../../lib/tracker/state-change-channel';
import { type1Reach } from '../../lib/vfio/type1-reach';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import { GuestVm } from '../../lib/vmm/guest-vm';
import { runGuestSession } from '../../lib/vmm/guest-session';
import { decodeMapGpaRange } from '../../lib/vmm/map-gpa-range';
import { VmmLoop } from '../../lib/vmm/vmm-loop';
import { ARGUMENT_CODES, assertCoded, bounded } from './hostile-values';

const PAGE = 4096;
const MiB = 1 << 20;
const GPA = 16 * MiB;

function memfd(size: number): number {
  const fd = native().memfdCreate('hostile-surfaces');
  fs.ftruncateSync(fd, size);
  return fd;
}

/** A rejection that nobody may leave unhandled: the child dies of it if one escapes. */
function rejecting(): Promise<never> {
  return Promise.reject(new Error('hostile rejection'));
}

// ---------------------------------------------------------------------------------------
// Every async callback a user supplies, made to reject: a coded refusal, rolled back.

async function rejectingCallbacks(): Promise<void> {
  const SECTION = { offset: 0, size: 16 * PAGE };
  // attach: the registration is refused, nothing stays registered.
  {
    const attributes = new RamBlockAttributes(16 * PAGE, { name: 'attach', listenerTimeoutMs: 200 });
    const listener: RamDiscardListener = { name: 'rejects-attach', populate() {}, discard() {}, attach: rejecting };
    const outcome = await bounded('register with a rejecting attach', [], () => attributes.register(listener, SECTION));
    assert.ok(!outcome.ok, 'a rejecting attach refuses the registration');
    assertCoded(outcome.error, ['ERR_GUESTMEM_LISTENER_FAILED'], 'attach');
    assert.deepEqual(attributes.listeners, [], 'nothing stays registered');
  }
  // Each notification of an asynchronous listener: the change rejects and rolls back.
  for (const method of ['populate', 'discard', 'populateRuns', 'discardRuns'] as const) {
    const attributes = new RamBlockAttributes(16 * PAGE, { name: method, listenerTimeoutMs: 200 });
    const witness = new RecordingListener('witness', 16);
    await attributes.register(witness, SECTION);
    await attributes.stateChange(0, 8 * PAGE, 'shared');
    const listener: RamDiscardListener = { name: `rejects-${method}`, populate: async () => {}, discard: async () => {}, [method]: rejecting };
    await attributes.register(listener, SECTION).catch(() => {});
    const before = attributes.runs('shared');
    const to = method.startsWith('populate') ? 'shared' : 'private';
    const outcome = await bounded(`stateChange with a rejecting ${method}`, [], () => attributes.stateChange(to === 'shared' ? 8 * PAGE : 0, 4 * PAGE, to));
    if (attributes.listeners.includes(listener)) {
      assert.ok(!outcome.ok, `${method}: the change fails`);
      assertCoded(outcome.error, ['ERR_GUESTMEM_LISTENER_FAILED', 'ERR_GUESTMEM_ROLLBACK_FAILED'], method);
      assert.deepEqual(attributes.runs('shared'), before, `${method}: rolled back`);
      assert.deepEqual(witness.mappedRuns(), attributes.runs('shared'), `${method}: the witness agrees`);
    }
  }
  // A replay callback: the replay rejects with its error, the queue moves on.
  {
    const attributes = new RamBlockAttributes(16 * PAGE, { name: 'replay' });
    await attributes.stateChange(0, PAGE, 'shared');
    const outcome = await bounded('replayPopulated with a rejecting callback', [], () => attributes.replayPopulated(SECTION, rejecting));
    assert.ok(!outcome.ok && (outcome.error as Error).message === 'hostile rejection');
    assert.ok((await bounded('the next change', [], () => attributes.stateChange(PAGE, PAGE, 'shared'))).ok);
  }
  // A DelegatedVm delegate answering with a rejected promise: refused, nothing converted.
  {
    const vm = new DelegatedVm({ setMemoryAttributes: (_gpa: bigint, _size: bigint, attributes: bigint) => (attributes === 0n ? rejecting() : undefined) as never });
    const memory = new GuestMemory(vm);
    const block = memory.addBlock({ gpa: GPA, size: MiB, slot: 0, shared: { fd: memfd(MiB), close: true }, guestMemfd: { fd: memfd(MiB), close: true }, memslot: { adopt: true } });
    const outcome = await bounded('a conversion through a delegate that answers with a promise', [], () => memory.convert(GPA, PAGE, 'shared'));
    assert.ok(!outcome.ok, 'the conversion does not report success');
    assertCoded(outcome.error, ['ERR_GUESTMEM_CONVERSION_FAILED'], 'delegate');
    assertCoded((outcome.error as Error).cause, ['ERR_GUESTMEM_ASYNC_DELEGATE'], 'its cause');
    assert.equal(block.sharedPages, 0, 'nothing converted');
    // The delegate is not asked again: its answers can no longer be trusted.
    const again = await bounded('the next conversion', [], () => memory.convert(GPA, PAGE, 'private'));
    if (!again.ok) assertCoded(again.error, ['ERR_GUESTMEM_CONVERSION_FAILED'], 'again');
    await memory.shutdown().catch(() => {});
  }
  // Let any escaped rejection surface (and kill this child) before the group passes.
  await new Promise((resolve) => setTimeout(resolve, 50));
}

// ---------------------------------------------------------------------------------------
// Adoption: fds that are not files, and memory adopted by address outliving its owner.

async function adoptionLifetime(): Promise<void> {
  // Fds that map pages which fault on read (a vCPU's on a KVM host) or map nothing.
  const zero = fs.openSync('/dev/zero', 'r+');
  const [reader] = [fs.openSync('/proc/self/fd', 'r')];
  try {
    for (const [what, fd] of [['a character device', zero], ['a directory', reader], ['stdin', 0]] as const) {
      const outcome = await bounded(`SharedMemory.adopt({ fd: ${what} })`, [fd], () => SharedMemory.adopt({ fd }, MiB).read(200 * PAGE, 16));
      assert.ok(!outcome.ok, `${what} adopted`);
      assertCoded(outcome.error, ['ERR_INVALID_ARG_VALUE'], what);
    }
  } finally {
    fs.closeSync(zero);
    fs.closeSync(reader);
  }
  // Closed first: the adopted memory keeps the owner's mapping until it closes too.
  {
    const owner = SharedMemory.create(MiB, 'owner');
    owner.write(0, Buffer.from('hello'));
    const adopted = SharedMemory.adopt({ unsafeAddress: owner.address }, MiB);
    owner.close();
    const read = await bounded('reading memory adopted from a closed SharedMemory', [], () => adopted.read(0, 5).toString());
    assert.ok(read.ok && read.value === 'hello');
    adopted.close();
    assert.ok(!(await bounded('adopting it again once both are closed', [], () => SharedMemory.adopt({ unsafeAddress: owner.address }, MiB))).ok);
  }
  // Dropped and collected: the adopted memory keeps the owner alive.
  {
    // The owner lives in this function's scope only: nothing holds it once it returns.
    const adopted = (() => {
      const owner = SharedMemory.create(MiB, 'dropped');
      owner.write(0, Buffer.from('world'));
      return SharedMemory.adopt({ address: owner.address }, MiB);
    })();
    // The child runs without --expose-gc: the flag is set here and gc taken from a new context.
    v8.setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    for (let i = 0; i < 4; i++) {
      gc();
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const read = await bounded('reading memory adopted from a collected SharedMemory', [], () => adopted.read(0, 5).toString());
    assert.ok(read.ok && read.value === 'world');
    adopted.close();
  }
  // Taken with close: true, its close would unmap the owner's memory: refused.
  {
    const owner = SharedMemory.create(MiB, 'taken');
    const outcome = await bounded('adopting own memory with close: true', [], () => SharedMemory.adopt({ unsafeAddress: owner.address, close: true }, MiB));
    assert.ok(!outcome.ok);
    assertCoded(outcome.error, ['ERR_INVALID_ARG_VALUE'], 'close: true');
    owner.write(0, Buffer.from('still'));
    owner.close();
  }
}

// ---------------------------------------------------------------------------------------
// Every public function and constructor, each argument replaced in turn by each of these.

const SWEEP_VALUES: unknown[] = [null, undefined, 'x', NaN, Infinity, -Infinity, -1, 2 ** 53, 2 ** 64, -1n, 2n ** 64n, {}, Symbol('s')];
const SWEEP_CODES = [...ARGUMENT_CODES, 'ERR_GUESTMEM_UNSUPPORTED', 'ERR_GUESTMEM_CLOSED', 'ERR_GUESTMEM_ASYNC_DELEGATE'];

interface SweepEntry {
  name: string;
  valid: unknown[];
  call(...args: unknown[]): unknown;
}

function sweepTable(): SweepEntry[] {
  const bitmap = new PageBitmap(64);
  const delegated = new DelegatedVm({ setMemoryAttributes() {} });
  const dma = { backend: 'stand-in', map() {}, unmap: () => 0n, mapRuns: () => 0, unmapRuns: () => 0n, mappingsAvailable: () => null };
  const fn = <A extends unknown[]>(f: (...args: A) => unknown) => f as (...args: unknown[]) => unknown;
  return [
    { name: 'new PageBitmap', valid: [64], call: fn((bits: number) => new PageBitmap(bits)) },
    ...(['scan', 'collectRuns'] as const).map((m) => ({ name: `PageBitmap.${m}`, valid: [0, 64, true, new RunList()], call: fn((...a: unknown[]) => (bitmap[m] as (...x: unknown[]) => unknown)(...a)) })),
    ...(['fill', 'exchange'] as const).map((m) => ({ name: `PageBitmap.${m}`, valid: [0, 8, false, new RunList()], call: fn((...a: unknown[]) => (bitmap[m] as (...x: unknown[]) => unknown)(...a)) })),
    { name: 'new GranuleRange', valid: [0, 2, PAGE], call: fn((a: number, b: number, c: number) => new GranuleRange(a, b, c)) },
    { name: 'bytesOf', valid: [2, PAGE], call: fn((a: number, b: number) => bytesOf(a, b)) },
    { name: 'new RamBlockAttributes', valid: [MiB, {}], call: fn((size: number, options: object) => new RamBlockAttributes(size, options)) },
    { name: 'new RecordingListener', valid: ['r', 16], call: fn((name: string, granules: number) => new RecordingListener(name, granules)) },
    { name: 'decodeMapGpaRange', valid: [[0n, 1n, 0n]], call: fn((args: bigint[]) => decodeMapGpaRange(args)) },
    { name: 'type1Reach', valid: [65535, MiB, PAGE], call: fn((a: number, b: number, c: number) => type1Reach(a, b, c)) },
    { name: 'vmTypesInMask', valid: [3], call: fn((mask: number) => vmTypesInMask(mask)) },
    { name: 'new DelegatedVm', valid: [{ setMemoryAttributes() {} }], call: fn((d: never) => new DelegatedVm(d)) },
    { name: 'DelegatedVm.setMemoryAttributes', valid: [GPA, PAGE, 'shared'], call: fn((a: number, b: number, c: 'shared') => delegated.setMemoryAttributes(a, b, c)) },
    { name: 'new GuestMemory', valid: [delegated, {}], call: fn((vm: DelegatedVm, options: object) => new GuestMemory(vm, options)) },
    { name: 'GuestMemory.addBlock', valid: [{ gpa: GPA, size: MiB }], call: fn((options: never) => new GuestMemory(delegated).addBlock(options)) },
    { name: 'GuestMemory.addBlockAsync', valid: [{ gpa: GPA, size: MiB }], call: fn((options: never) => new GuestMemory(delegated).addBlockAsync(options)) },
    { name: 'SharedMemory.create', valid: [PAGE], call: fn((size: number) => SharedMemory.create(size).close()) },
    { name: 'new VfioDmaListener', valid: [dma, { sharedAddress: 0x1000n, gpa: 0n }], call: fn((d: never, o: never) => new VfioDmaListener(d, o)) },
    { name: 'VmmLoop.run', valid: [[], { convert() {}, covers: () => false }], call: fn((v: never, m: never) => new VmmLoop(v, m).run()) },
    { name: 'GuestVm.create', valid: [{}], call: fn((o: never) => GuestVm.create(o)) },
    { name: 'runGuestSession', valid: [{ program: 'nope' }], call: fn((o: never) => runGuestSession(o)) },
  ];
}

async function argumentSweep(): Promise<void> {
  let cases = 0;
  for (const entry of sweepTable()) {
    for (let position = 0; position < entry.valid.length; position++) {
      for (const value of SWEEP_VALUES) {
        const args = [...entry.valid];
        args[position] = value;
        cases++;
        const outcome = await bounded(entry.name, args, () => entry.call(...args));
        // Accepted, or refused with a code a program can switch on (never an engine TypeError).
        if (!outcome.ok) assertCoded(outcome.error, SWEEP_CODES, `${entry.name} with argument ${position} = ${String(value)}`);
      }
    }
  }
  assert.ok(cases > 300, `${cases} cases`);
}

// ---------------------------------------------------------------------------------------
// The inputs the first pass let through: each must be refused, before it changes anything.

async function wronglyAccepted(): Promise<void> {
  const dma = { backend: 'stand-in', map() {}, unmap: () => 0n, mapRuns: () => 0, unmapRuns: () => 0n, mappingsAvailable: () => null };
  const refusals: Array<[string, () => unknown]> = [
    ['bytesOf(2^53 - 1, 2^52)', () => bytesOf(2 ** 53 - 1, 2 ** 52)],
    ['decodeMapGpaRange([0n, -1n, 0n])', () => decodeMapGpaRange([0n, -1n, 0n])],
    ['decodeMapGpaRange([0, 1, 0])', () => decodeMapGpaRange([0, 1, 0] as never)],
    ['decodeMapGpaRange(null)', () => decodeMapGpaRange(null as never)],
    ['type1Reach(-1, 4096)', () => type1Reach(-1, 4096)],
    ['type1Reach(65535, -5)', () => type1Reach(65535, -5)],
    ['type1Reach(65535, NaN)', () => type1Reach(65535, NaN)],
    ['vmTypesInMask(NaN)', () => vmTypesInMask(NaN)],
    ['new VfioDmaListener(dma, { sharedAddress: -1n })', () => new VfioDmaListener(dma as never, { sharedAddress: -1n, gpa: 0n })],
    ['new VfioDmaListener(dma, { gpa: 0 })', () => new VfioDmaListener(dma as never, { sharedAddress: 0x1000n, gpa: 0 as never })],
    ['new VfioDmaListener(null)', () => new VfioDmaListener(null as never, { sharedAddress: 0x1000n, gpa: 0n })],
    ['new GuestMemory(vm, null)', () => new GuestMemory(new DelegatedVm({ setMemoryAttributes() {} }), null as never)],
    ['new GuestMemory(vm, { slots: null })', () => new GuestMemory(new DelegatedVm({ setMemoryAttributes() {} }), { slots: null as never })],
  ];
  for (const [what, call] of refusals) {
    const outcome = await bounded(what, [], call);
    assert.ok(!outcome.ok, `${what} accepted`);
    assertCoded(outcome.error, ARGUMENT_CODES, what);
  }
  // Refusals that name the argument at fault, before anything is made.
  const delegatedMemory = new GuestMemory(new DelegatedVm({ setMemoryAttributes() {} }));
  const launch = new SnpLaunch(3, { openSevDevice: () => 4, closeFd() {}, snpLaunchStart() {} } as never);
  launch.start();
  const named: Array<[string, () => unknown, string[], RegExp]> = [
    ['GuestVm.create(null)', () => GuestVm.create(null as never), ARGUMENT_CODES, /GuestVm options must be an object/],
    ['GuestVm.create({ bootGpa: 4096 })', () => GuestVm.create({ bootGpa: 4096 } as never), ARGUMENT_CODES, /bootGpa must be a bigint/],
    ['GuestVm.create with a DelegatedVm memory', () => GuestVm.create({ memory: delegatedMemory } as never), ['ERR_GUESTMEM_UNSUPPORTED'], /a VM of another process/],
    ["runGuestSession({ program: 'nope' })", () => runGuestSession({ program: 'nope' } as never), ARGUMENT_CODES, /program must be one of/],
    ['new VmmLoop(null, memory).run()', () => new VmmLoop(null as never, { convert() {} } as never).run(), ARGUMENT_CODES, /vCPUs must be an array/],
    ['launch.measure(region, null)', () => launch.measure({ gpa: 0n, size: 4096n, source: 0x1000n }, null as never), ARGUMENT_CODES, /private-memory check must be a function/],
  ];
  for (const [what, call, codes, message] of named) {
    const outcome = await bounded(what, [], call);
    assert.ok(!outcome.ok, `${what} accepted`);
    assertCoded(outcome.error, codes, what);
    assert.match((outcome.error as Error).message, message, what);
  }
  // LAUNCH_START's failure survives a close of /dev/sev that fails too.
  const failing = new SnpLaunch(3, {
    openSevDevice: () => 4,
    snpLaunchStart() {
      throw Object.assign(new Error('EINVAL: invalid argument, ioctl(KVM_SEV_SNP_LAUNCH_START)'), { code: 'EINVAL', errno: -22, syscall: 'ioctl' });
    },
    closeFd() {
      throw Object.assign(new Error('EIO: i/o error, close'), { code: 'EIO', errno: -5, syscall: 'close' });
    },
  } as never);
  const start = await bounded('SnpLaunch.start() when the close fails too', [], () => failing.start());
  assert.ok(!start.ok);
  assertCoded(start.error, ['ERR_GUESTMEM_LAUNCH_FAILED'], 'start');
  assert.match((start.error as Error).message, /KVM_SEV_SNP_LAUNCH_START/);
  // stateChangeSync from a state-change subscriber: refused, never run inside the change.
  {
    const attributes = new RamBlockAttributes(16 * PAGE, { name: 'subscribed' });
    let inner: unknown = 'not called';
    const subscriber = (): void => {
      if (inner !== 'not called') return;
      try {
        inner = attributes.stateChangeSync(8 * PAGE, PAGE, 'shared');
      } catch (error) {
        inner = error;
      }
    };
    diagnostics.subscribe(STATE_CHANGE_CHANNEL, subscriber);
    try {
      attributes.stateChangeSync(0, PAGE, 'shared');
    } finally {
      diagnostics.unsubscribe(STATE_CHANGE_CHANNEL, subscriber);
    }
    assertCoded(inner, ['ERR_GUESTMEM_BUSY'], 'stateChangeSync from a subscriber');
    assert.deepEqual(attributes.runs('shared'), [[0, 1]], 'only the outer change ran');
  }
  // PageBitmap's hot methods: refused whole, never half applied, never a loop forever.
  for (const [what, call] of [
    ['fill(0, 1000, true)', (b: PageBitmap) => b.fill(0, 1000, true)],
    ['exchange(60, 100, true)', (b: PageBitmap) => b.exchange(60, 100, true, new RunList())],
    ['scan(0, Infinity, true)', (b: PageBitmap) => b.scan(0, Infinity, true)],
    ['collectRuns(0, NaN, true)', (b: PageBitmap) => b.collectRuns(0, NaN, true, new RunList())],
  ] as const) {
    const bitmap = new PageBitmap(64);
    const outcome = await bounded(`PageBitmap.${what}`, [], () => call(bitmap));
    assert.ok(!outcome.ok, `${what} accepted`);
    assertCoded(outcome.error, ARGUMENT_CODES, what);
    assert.deepEqual(bitmap.runs(0, 64, true), [], `${what} changed nothing`);
  }
  // Granularities up to 2^63 are valid, as documented.
  for (const g of [2 ** 62, 2 ** 63]) {
    const outcome = await bounded('new GranuleRange(0, 1, g)', [g], () => new GranuleRange(0, 1, g));
    assert.ok(outcome.ok, `granularity ${g} refused: ${String(!outcome.ok && outcome.error)}`);
  }
  // A refused addBlock takes no memslot number.
  const memory = new GuestMemory(new DelegatedVm({ setMemoryAttributes() {} }), { slots: [5] });
  assert.ok(!(await bounded('addBlock with a bad granularity', [], () => memory.addBlock({ gpa: GPA, size: MiB, granularity: 3 }))).ok);
  const block = await bounded('the next addBlock', [], () =>
    memory.addBlock({ gpa: GPA, size: MiB, shared: { fd: memfd(MiB), close: true }, guestMemfd: { fd: memfd(MiB), close: true }, memslot: { adopt: true } }),
  );
  assert.ok(block.ok, `the next addBlock failed: ${String(!block.ok && block.error)}`);
  assert.equal(block.value.slot, 5);
  await memory.shutdown();
}

export const SURFACE_GROUPS: Record<string, () => Promise<void>> = {
  'rejecting-callbacks': rejectingCallbacks,
  'adoption-lifetime': adoptionLifetime,
  'argument-sweep': argumentSweep,
  'wrongly-accepted': wronglyAccepted,
};
