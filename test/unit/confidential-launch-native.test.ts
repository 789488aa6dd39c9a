// The addon's launch calls (native/confidential_launch.cc) refuse bad arguments before any
// ioctl, with Node's error codes and classes: wrong types (TypeError), values past their limits,
// negative, fractional or NaN (RangeError, ERR_OUT_OF_RANGE), addresses and sizes
// not page-aligned, fixed-size byte arrays of the wrong size. The fd passed is one no process
// has open, so a check that let a call through would show as EBADF instead of the code the
// test wants. Every case runs in a child process: a crash fails the test instead of mocha.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';

const NATIVE = path.join(__dirname, '..', '..', 'lib', 'common', 'native.js');
const NOT_OPEN = 1_000_000;
const PAGE = 4096;

/** [function, arguments (as JS source), the code wanted]. */
const CASES: Array<[string, string, string]> = [
  // SNP_LAUNCH_START(vmFd, sevFd, policy, gosvw?, flags)
  ['kvmSevSnpLaunchStart', `'3', ${NOT_OPEN}, 0x30000n, undefined, 0`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmSevSnpLaunchStart', `-1, ${NOT_OPEN}, 0x30000n, undefined, 0`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchStart', `${NOT_OPEN}, ${NOT_OPEN}, 1n << 64n, undefined, 0`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchStart', `${NOT_OPEN}, ${NOT_OPEN}, -1, undefined, 0`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchStart', `${NOT_OPEN}, ${NOT_OPEN}, 0x30000n, new Uint8Array(15), 0`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchStart', `${NOT_OPEN}, ${NOT_OPEN}, 0x30000n, new Uint16Array(8), 0`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmSevSnpLaunchStart', `${NOT_OPEN}, ${NOT_OPEN}, 0x30000n, 'gosvw', 0`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmSevSnpLaunchStart', `${NOT_OPEN}, ${NOT_OPEN}, 0x30000n, undefined, 0x10000`, 'ERR_OUT_OF_RANGE'],
  // SNP_LAUNCH_UPDATE(vmFd, sevFd, gpa, uaddr, length, type)
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0x1800, 0, ${PAGE}, 1`, 'ERR_INVALID_ARG_VALUE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0, 0x10, ${PAGE}, 1`, 'ERR_INVALID_ARG_VALUE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0, 0, 100, 1`, 'ERR_INVALID_ARG_VALUE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0, 0, 0, 1`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, (1n << 64n) - 4096n, 0, 8192, 1`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0, (1n << 64n) - 4096n, 8192, 1`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0, 0, ${PAGE}, 2`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0, 0, ${PAGE}, 0x101`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0, 0, ${PAGE}, '1'`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0.5, 0, ${PAGE}, 1`, 'ERR_OUT_OF_RANGE'],
  // SNP_LAUNCH_FINISH(vmFd, sevFd, hostData?)
  ['kvmSevSnpLaunchFinish', `${NOT_OPEN}, ${NOT_OPEN}, new Uint8Array(33)`, 'ERR_OUT_OF_RANGE'],
  ['kvmSevSnpLaunchFinish', `${NOT_OPEN}, ${NOT_OPEN}, [1, 2]`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmSevSnpLaunchFinish', `${NOT_OPEN}, 2 ** 31, undefined`, 'ERR_OUT_OF_RANGE'],
  // TDX_INIT_VCPU(vcpuFd, rcx)
  ['kvmTdxInitVcpu', `${NOT_OPEN}, -1n`, 'ERR_OUT_OF_RANGE'],
  ['kvmTdxInitVcpu', `${NOT_OPEN}, {}`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmTdxInitVcpu', `NaN, 0`, 'ERR_OUT_OF_RANGE'],
  ['kvmTdxGetCpuid', `'3'`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmTdxGetCpuid', `-1`, 'ERR_OUT_OF_RANGE'],
  // TDX_INIT_MEM_REGION(vcpuFd, sourceAddress, gpa, pages, measure)
  ['kvmTdxInitMemRegion', `${NOT_OPEN}, 0x10, 0, 1, true`, 'ERR_INVALID_ARG_VALUE'],
  ['kvmTdxInitMemRegion', `${NOT_OPEN}, 0, 0x801, 1, true`, 'ERR_INVALID_ARG_VALUE'],
  ['kvmTdxInitMemRegion', `${NOT_OPEN}, 0, 0, 0, true`, 'ERR_OUT_OF_RANGE'],
  ['kvmTdxInitMemRegion', `${NOT_OPEN}, 0, 0, 1n << 52n, true`, 'ERR_OUT_OF_RANGE'],
  ['kvmTdxInitMemRegion', `${NOT_OPEN}, 0, (1n << 64n) - 4096n, 2, true`, 'ERR_OUT_OF_RANGE'],
  ['kvmTdxInitMemRegion', `${NOT_OPEN}, 0, 0, 1, 1`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmTdxInitMemRegion', `${NOT_OPEN}, 0, 0, 1`, 'ERR_INVALID_ARG_TYPE'],
  // TDX_FINALIZE_VM(vmFd)
  ['kvmTdxFinalizeVm', `'fd'`, 'ERR_INVALID_ARG_TYPE'],
  ['kvmTdxFinalizeVm', ``, 'ERR_INVALID_ARG_TYPE'],
];

const CHILD = `
const { native } = require(${JSON.stringify(NATIVE)});
const out = [];
for (const [name, args] of JSON.parse(process.argv[1])) {
  try {
    native()[name](...eval('[' + args + ']'));
    out.push({ name, args, code: 'no error' });
  } catch (error) {
    out.push({ name, args, code: error.code, kind: error.constructor.name, message: error.message });
  }
}
process.stdout.write(JSON.stringify(out));
`;

describe('the addon refuses bad launch arguments before any ioctl (child process)', () => {
  let results: Array<{ name: string; args: string; code: string; kind?: string; message?: string }>;

  before(() => {
    const child = spawnSync(process.execPath, ['-e', CHILD, JSON.stringify(CASES.map(([n, a]) => [n, a]))], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(child.status, 0, `the child died (signal ${child.signal}): ${child.stderr}`);
    results = JSON.parse(child.stdout);
  });

  CASES.forEach(([name, args, code], i) => {
    it(`${name}(${args}) → ${code}`, () => {
      const got = results[i]!;
      assert.equal(got.code, code, `${name}(${args}): ${got.kind}: ${got.message}`);
      // Node's classes for Node's codes: a value out of range is a RangeError, a wrong type or value a TypeError.
      assert.equal(got.kind, code === 'ERR_OUT_OF_RANGE' ? 'RangeError' : 'TypeError', `${name}(${args}): ${got.message}`);
      assert.doesNotMatch(got.message ?? '', /EBADF/);
    });
  });

  it('well-formed arguments do reach the kernel: an fd no process has open is EBADF with errno and syscall', () => {
    const child = spawnSync(process.execPath, ['-e', CHILD, JSON.stringify([
      ['kvmSevSnpLaunchUpdate', `${NOT_OPEN}, ${NOT_OPEN}, 0, 0, ${PAGE}, 1`],
      ['kvmTdxInitMemRegion', `${NOT_OPEN}, 0, 0, 1, true`],
      ['kvmTdxFinalizeVm', `${NOT_OPEN}`],
    ])], { encoding: 'utf8', timeout: 20_000 });
    assert.equal(child.status, 0, child.stderr);
    for (const got of JSON.parse(child.stdout) as Array<{ code: string; message: string }>) {
      assert.equal(got.code, 'EBADF');
      assert.match(got.message, /^EBADF: Bad file descriptor, ioctl\(KVM_MEMORY_ENCRYPT_OP, KVM_(SEV_SNP_LAUNCH_UPDATE|TDX_INIT_MEM_REGION|TDX_FINALIZE_VM)\)$/);
    }
  });
});
