// secret-snp and secret-tdx run under an x86 emulator (test/emulation/run-guest.py: unicorn,
// Debian's python3-unicorn, which scripts/install-deps.sh installs) from the boot region
// GuestVm.create builds, answered as KVM and the VMM would: the requests each guest makes,
// in order and with the specifications' encodings, the page tables it leaves at each step,
// its checks, and what it does when the VMM refuses a conversion. The emulator cannot
// separate private from shared memory (see the script): that awaits a real host.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { encodeBootInfo } from '../../lib/vmm/boot-info';
import { pageStateRequest, terminationRequest, GUESTMEM_TERM_SET } from '../../lib/vmm/ghcb-msr';
import { guestLayout, guestProgram, STACK_SIZE } from '../../lib/vmm/guest-image';
import { identityMap } from '../../lib/vmm/long-mode';
import { HOST_NOTE, MESSAGE } from '../../lib/vmm/programs/secret';
import { tdxResetPage } from '../../lib/vmm/tdx-reset-page';
import { assembleGuest } from '../support/guest-disassembly';

const PYTHON = '/usr/bin/python3';
const SCRIPT = path.resolve(__dirname, '..', '..', '..', 'test', 'emulation', 'run-guest.py');
const MiB = 1n << 20n;
const BOOT = 16n * MiB;
const DATA = 17n * MiB;
/** The C-bit, or the TD's shared bit: within the emulated CPU's 40 physical-address bits. */
const BIT = 39;

interface Emulated {
  events: Array<Record<string, unknown> & { request: string; tables?: Tables }>;
  error: string | null;
  message: string;
}
interface Tables {
  pde: number;
  split: boolean;
  pte?: number;
  othersPrivate?: boolean;
}

function emulate(kind: 'snp' | 'tdx', refuse?: 'private' | 'shared'): Emulated {
  const image = guestProgram(kind === 'snp' ? 'secret-snp' : 'secret-tdx');
  const mapEnd = kind === 'tdx' ? 1n << 32n : 20n * MiB;
  const layout = guestLayout(BOOT, image.length, 1, mapEnd);
  const region = Buffer.alloc(Number(layout.end - BOOT));
  const put = (gpa: bigint, bytes: Uint8Array) => region.set(bytes, Number(gpa - BOOT));
  put(layout.bootInfo, encodeBootInfo({ dataGpa: DATA, dataPages: 1 }));
  put(layout.pageTables, identityMap(mapEnd, layout.pageTables, kind === 'snp' ? BIT : undefined).bytes);
  put(layout.image, image);
  const spec = {
    bootGpa: Number(BOOT), dataGpa: Number(DATA), bit: BIT, refuse, region: region.toString('hex'),
    pageTables: Number(layout.pageTables), entry: Number(layout.image), rsp: Number(layout.stacks) + STACK_SIZE, bootInfo: Number(layout.bootInfo),
    note: HOST_NOTE.toString('latin1'), message: MESSAGE.toString('latin1'),
    reset: Buffer.from(tdxResetPage({ pageTables: layout.pageTables, entry: layout.image, stacks: layout.stacks, stackSize: STACK_SIZE, vcpus: 1, bootInfo: layout.bootInfo })).toString('hex'),
    longMode: kind === 'tdx' ? assembleGuest('tdx-reset').labels.get('long_mode') : undefined,
  };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-emulation-'));
  try {
    const file = path.join(dir, 'layout.json');
    fs.writeFileSync(file, JSON.stringify(spec));
    return JSON.parse(execFileSync(PYTHON, [SCRIPT, kind, file], { encoding: 'utf8', maxBuffer: 16 << 20 })) as Emulated;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const C = 2 ** BIT;
const hasBit = (entry: number | undefined): boolean => entry !== undefined && Math.floor(entry / C) % 2 === 1;

describe('the SNP and TDX secret programs under an x86 emulator (unicorn)', function () {
  this.timeout(120_000);

  before(function () {
    try {
      execFileSync(PYTHON, ['-c', 'import unicorn'], { stdio: 'ignore' });
      execFileSync('as', ['--version'], { stdio: 'ignore' });
    } catch {
      console.log('      (skipped: needs Debian\'s python3-unicorn at /usr/bin/python3 and binutils; scripts/install-deps.sh installs both)');
      this.skip();
    }
  });

  it('secret-snp: SEV info, a page state change to private, PVALIDATE, its secret, rescind, to shared, the C-bit cleared, done', () => {
    const run = emulate('snp');
    assert.equal(run.error, null);
    assert.deepEqual(run.events.map((e) => e.request), ['sev-info', 'page-state', 'pvalidate', 'pvalidate', 'page-state', 'terminate']);
    const [info, toPrivate, validate, rescind, toShared, end] = run.events as Array<Record<string, unknown> & { tables: Tables }>;
    assert.equal(info!.msr, '0x2');
    assert.equal(toPrivate!.msr, `0x${pageStateRequest(DATA, 'private').toString(16)}`);
    assert.equal(toShared!.msr, `0x${pageStateRequest(DATA, 'shared').toString(16)}`);
    // Before the first request the guest split the 2 MiB page: its own entry, every entry, private.
    assert.ok(toPrivate!.tables.split && hasBit(toPrivate!.tables.pte) && toPrivate!.tables.othersPrivate && hasBit(toPrivate!.tables.pde), JSON.stringify(toPrivate!.tables));
    assert.deepEqual([validate!.va, validate!.size, validate!.validate, hasBit(validate!.tables.pte)], [Number(DATA), 0, 1, true]);
    assert.deepEqual([rescind!.va, rescind!.size, rescind!.validate, hasBit(rescind!.tables.pte)], [Number(DATA), 0, 0, true], 'rescinded while still mapped private');
    assert.ok(hasBit(toShared!.tables.pte), 'asked shared before its mapping changes');
    assert.deepEqual([end!.msr, hasBit(end!.tables.pte), end!.tables.othersPrivate], [`0x${terminationRequest(0, 0).toString(16)}`, false, true], 'done, with every check held; the page now mapped shared, the rest private');
    assert.equal(run.message, MESSAGE.toString('latin1'));
  });

  for (const [refuse, check] of [['private', 1], ['shared', 3]] as const) {
    it(`secret-snp: a refused page state change to ${refuse} ends it with guestmem's check set and check ${check}`, () => {
      const run = emulate('snp', refuse);
      const end = run.events.at(-1)!;
      assert.deepEqual([end.request, end.set, end.code], ['terminate', GUESTMEM_TERM_SET.check, check]);
    });
  }

  it('secret-tdx: entered from the reset page as the long-mode entry, MapGPA, ACCEPT, its checks and syncs through Instruction.IO, the shared alias', () => {
    const run = emulate('tdx');
    assert.equal(run.error, null);
    const layout = guestLayout(BOOT, guestProgram('secret-tdx').length, 1, 1n << 32n);
    const entry = run.events[0]!;
    assert.deepEqual(entry, { request: 'entry', rdi: Number(layout.bootInfo), rsi: 0, rdx: 1, rsp: Number(layout.stacks) + STACK_SIZE });
    const calls = run.events.filter((e) => e.request !== 'io' || e.port !== 0xe9).map((e) => (e.request === 'io' ? `io 0x${(e.port as number).toString(16)} ${(e.value as number).toString(16)}` : e.request === 'map-gpa' ? `map-gpa 0x${(e.gpa as number).toString(16)} ${e.size as number} ${e.to as string}` : e.request === 'accept' ? `accept 0x${(e.rcx as number).toString(16)}` : e.request));
    const shared = (BigInt(DATA) | (1n << BigInt(BIT))).toString(16);
    assert.deepEqual(calls, [
      'entry', 'vp-info', `map-gpa 0x${DATA.toString(16)} 4096 private`, 'io 0xea 1', `accept 0x${DATA.toString(16)}`, 'io 0xea 5', 'io 0xea 2', 'io 0xec 1',
      `map-gpa 0x${shared} 4096 shared`, 'io 0xea 3', 'io 0xea 4', 'io 0xec 2', 'io 0xeb 0', 'exit',
    ]);
    for (const call of run.events.filter((e) => e.request === 'map-gpa' || e.request === 'io')) assert.equal(call.expose, 0xfc00, 'R10..R15 exposed');
    assert.ok(run.events.filter((e) => e.request === 'map-gpa').every((e) => e.standard === true));
    const console = run.events.filter((e) => e.request === 'io' && e.port === 0xe9).map((e) => String.fromCharCode(e.value as number)).join('');
    assert.equal(console, 'secret (TD): converting a page private\nsecret (TD): done\n');
    const tables = run.events.at(-1)!.tables!;
    assert.ok(tables.split && hasBit(tables.pte) && tables.othersPrivate && !hasBit(tables.pde), JSON.stringify(tables));
    assert.equal(run.message, MESSAGE.toString('latin1'));
  });

  it('secret-tdx: a refused MapGPA to shared is its check 3 failing', () => {
    const run = emulate('tdx', 'shared');
    const checks = run.events.filter((e) => e.request === 'io' && e.port === 0xea).map((e) => e.value as number);
    assert.ok(checks.includes(0x80000003), checks.map((c) => c.toString(16)).join(' '));
  });
});
