// The published declarations, as a user's project compiles them: an empty project whose
// node_modules/guestmem is this package, checked by tsc with skipLibCheck off (so every
// .d.ts of the package is checked too) under the set-ups users have: CommonJS with
// moduleResolution node10 and no esModuleInterop, ESM with nodenext, and a bundler. The
// API docs' examples (docs/examples/*.ts, whole programs against 'guestmem') compile under
// the ESM set-ups; a CommonJS program using `using` under the first.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GUESTMEM } from '../support/cli';

const ROOT = path.resolve(path.dirname(GUESTMEM), '..');
const TSC = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

/** A CommonJS program against the public API: types, classes, `using`, error codes. */
const COMMONJS_PROGRAM = `
import { GuestmemError, Kvm, RamBlockAttributes, RecordingListener, STATE_CHANGE_CHANNEL, probe } from 'guestmem';
import type { GuestmemErrorCode, PageState, ProbeReport, StateChangeMessage, VcpuExit } from 'guestmem';

const report: ProbeReport = probe();
const code: GuestmemErrorCode = 'ERR_GUESTMEM_CLOSED';
const state: PageState = 'shared';
const channel: string = STATE_CHANGE_CHANNEL;
let exit: VcpuExit | undefined;
let message: StateChangeMessage | undefined;

async function main(): Promise<void> {
  const block = new RamBlockAttributes(1 << 20, { granularity: 4096 });
  const device = new RecordingListener('device', block.granules);
  await block.register(device, { offset: 0, size: 1 << 20 });
  await block.stateChange(0, 4096, state);
  if (report.kvm.ok) {
    using kvm = Kvm.open();
    console.log(kvm.vmTypesMask);
  }
  try {
    await block.unregister(device);
  } catch (error) {
    if (error instanceof GuestmemError && error.code === code) console.log(error.message);
    // The code narrows the error to its details (GuestmemErrorDetails): no cast to reach them.
    if (error instanceof GuestmemError && error.code === 'ERR_GUESTMEM_VCPU_FAILED') {
      const vcpu: number = error.vcpu;
      console.log(vcpu, error.exit?.reason);
    }
    if (error instanceof GuestmemError && error.code === 'ERR_GUESTMEM_SHUTDOWN_INCOMPLETE') console.log(error.errors.length);
  }
  console.log(channel, exit, message);
}
void main();
`;

interface Setup {
  name: string;
  compilerOptions: Record<string, unknown>;
  packageType: 'commonjs' | 'module';
  files: Record<string, string>;
}

function examples(): Record<string, string> {
  const dir = path.join(ROOT, 'docs', 'examples');
  return Object.fromEntries(fs.readdirSync(dir).filter((f) => f.endsWith('.ts')).map((f) => [f, fs.readFileSync(path.join(dir, f), 'utf8')]));
}

const STRICT = {
  strict: true,
  noEmit: true,
  skipLibCheck: false,
  target: 'ES2022',
  lib: ['ES2022', 'ESNext.Disposable'],
  types: ['node'],
  noUnusedLocals: true,
  exactOptionalPropertyTypes: true,
  noUncheckedIndexedAccess: true,
};

const SETUPS: Setup[] = [
  {
    name: 'CommonJS, moduleResolution node10, no esModuleInterop',
    compilerOptions: { ...STRICT, module: 'commonjs', moduleResolution: 'node10', esModuleInterop: false },
    packageType: 'commonjs',
    files: { 'program.ts': COMMONJS_PROGRAM },
  },
  {
    name: 'ESM, module nodenext (the API docs\' examples)',
    compilerOptions: { ...STRICT, module: 'nodenext', moduleResolution: 'nodenext' },
    packageType: 'module',
    files: examples(),
  },
  {
    name: 'a bundler, module esnext (the API docs\' examples)',
    compilerOptions: { ...STRICT, module: 'esnext', moduleResolution: 'bundler' },
    packageType: 'module',
    files: examples(),
  },
];

describe('the published types in a strict project of a user\'s', function () {
  this.timeout(180_000);
  let work: string;

  before(function () {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'lib', 'index.d.ts'))) this.skip();
    work = fs.mkdtempSync(path.join(os.tmpdir(), 'guestmem-types-'));
  });

  after(() => {
    if (work) fs.rmSync(work, { recursive: true, force: true });
  });

  it('has an example for each class or function a user starts from', () => {
    assert.deepEqual(Object.keys(examples()).sort(), ['AssignedDevice.ts', 'GuestMemory.ts', 'Kvm.ts', 'RamBlockAttributes.ts', 'runGuestSession.ts']);
  });

  it('leaves the internals out (@internal, stripInternal): the tracker\'s changeSync and syncRefusal, the VM\'s own, a block\'s disposeRefusal', () => {
    const declarations = (file: string) => fs.readFileSync(path.join(ROOT, 'dist', 'lib', file), 'utf8');
    assert.doesNotMatch(declarations('tracker/ram-block-attributes.d.ts'), /\b(changeSync|syncRefusal|replaceRegistrations)\(/);
    assert.doesNotMatch(declarations('kvm/kvm.d.ts'), /\bown<T/);
    assert.doesNotMatch(declarations('memory/ram-block.d.ts'), /\bdisposeRefusal\(/);
    // What a user calls is still there.
    assert.match(declarations('tracker/ram-block-attributes.d.ts'), /\bstateChangeSync\(/);
  });

  for (const setup of SETUPS) {
    it(`compiles with tsc --strict: ${setup.name}`, () => {
      const project = path.join(work, setup.name.replace(/[^a-z0-9]+/gi, '-'));
      fs.mkdirSync(path.join(project, 'node_modules', '@types'), { recursive: true });
      fs.symlinkSync(ROOT, path.join(project, 'node_modules', 'guestmem'), 'dir');
      fs.symlinkSync(path.join(ROOT, 'node_modules', '@types', 'node'), path.join(project, 'node_modules', '@types', 'node'), 'dir');
      fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'user-project', private: true, type: setup.packageType }));
      fs.writeFileSync(path.join(project, 'tsconfig.json'), JSON.stringify({ compilerOptions: setup.compilerOptions, include: ['*.ts'] }));
      for (const [name, text] of Object.entries(setup.files)) fs.writeFileSync(path.join(project, name), text);
      const result = spawnSync(process.execPath, [TSC, '-p', project], { cwd: project, encoding: 'utf8' });
      assert.equal(result.status, 0, `tsc (${setup.name}):\n${result.stdout}${result.stderr}`);
    });
  }
});
