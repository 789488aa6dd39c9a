#!/usr/bin/env node
// `npm test`: the unit and property suites on the host, then, for each harness kernel, the
// kernel-backed suites inside the harness VM (a real kernel with KVM, an IOMMU and a
// vfio-pci device), where a missing capability fails instead of skipping, and `guestmem
// demo` run from the host as a newcomer runs it. The kernels: GUESTMEM_KERNEL alone if
// set, else GUESTMEM_TEST_KERNELS (default "6.12,7.2": bookworm's LTS and the newest
// Debian ships). Every kernel runs even when an earlier one failed, so a log shows each
// one's summary. GUESTMEM_SKIP_VM=1 stops after the host suites; GUESTMEM_TEST_ON_HOST=1
// runs the kernel suites on this host instead (for a host with SW-protected VMs and a
// device bound to vfio-pci). GUESTMEM_COVERAGE=1 runs the host suites under c8 with its floor.
'use strict';

const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const mocha = path.join(root, 'node_modules', 'mocha', 'bin', 'mocha.js');

const failed = [];

/** Runs one phase; a failed phase is recorded (stop: exit at once) and reported at the end. */
function phase(name, command, args, env = {}, { stop = false } = {}) {
  const started = Date.now();
  console.log(`\n== ${name}`);
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  if (result.error) {
    console.error(`== ${name}: could not start ${command}: ${result.error.message}`);
    process.exit(1);
  }
  if (result.status !== 0) {
    console.error(`== ${name}: failed (exit ${result.status ?? result.signal}) after ${seconds} s`);
    if (stop) process.exit(result.status || 1);
    failed.push(name);
    return;
  }
  console.log(`== ${name}: passed in ${seconds} s`);
}

// GUESTMEM_COVERAGE=1 (.ci/run): the same run under c8, which fails it below the floor in .c8rc.json.
const c8 = path.join(root, 'node_modules', 'c8', 'bin', 'c8.js');
const unit = [mocha, '--config', '.mocharc.unit.json'];
if (process.env.GUESTMEM_COVERAGE === '1') {
  phase('unit and property suites (host), with coverage', process.execPath, [c8, process.execPath, ...unit], {}, { stop: true });
} else {
  phase('unit and property suites (host)', process.execPath, unit, {}, { stop: true });
}

const kernels = (process.env.GUESTMEM_KERNEL || process.env.GUESTMEM_TEST_KERNELS || '6.12,7.2').split(',').map((k) => k.trim()).filter(Boolean);

if (process.env.GUESTMEM_SKIP_VM === '1') {
  console.log('\n== kernel suites: not run (GUESTMEM_SKIP_VM=1)');
} else if (process.env.GUESTMEM_TEST_ON_HOST === '1') {
  phase('kernel and hardware suites (this host)', process.execPath, [mocha, '--config', '.mocharc.host.json'], { GUESTMEM_REQUIRE_KERNEL: '1' });
  phase('guestmem demo (this host)', process.execPath, [mocha, '--config', '.mocharc.vm-path.json']);
} else {
  for (const kernel of kernels) {
    phase(
      `kernel suites (harness VM, Linux ${kernel})`,
      path.join(root, 'scripts', 'vm', 'run-in-vm.sh'),
      // The whole kernel suite under emulation takes a good part of an hour on 2 cores:
      // a longer leash than a single command's 20 minutes.
      ['--kernel', kernel, '--timeout', process.env.GUESTMEM_VM_TIMEOUT || '2400', '--', process.execPath, mocha, '--config', '.mocharc.kernel.json'],
      { GUESTMEM_REQUIRE_KERNEL: '1' },
    );
    // The newcomer's path: `guestmem demo` from this host, through the VM where needed.
    phase(`guestmem demo from the host (Linux ${kernel})`, process.execPath, [mocha, '--config', '.mocharc.vm-path.json'], { GUESTMEM_KERNEL: kernel });
  }
}

if (failed.length > 0) {
  console.error(`\n== failed: ${failed.join('; ')}`);
  process.exit(1);
}
