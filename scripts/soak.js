#!/usr/bin/env node
// `npm run soak`: builds nothing, runs dist/soak/conversion.soak.js with the addon's fault
// injection on (GUESTMEM_FAULTS), here where this host has SW-protected VMs, memory
// attributes and an edu device on vfio-pci, else inside the harness VM. Not part of npm test.
'use strict';

const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const soak = path.join(root, 'dist', 'soak', 'conversion.soak.js');
const env = { ...process.env, GUESTMEM_FAULTS: process.env.GUESTMEM_FAULTS ?? '' };

function hostCanRun() {
  if (process.env.GUESTMEM_IN_VM === '1') return true;
  const { probe, capabilityFeature } = require(path.join(root, 'dist', 'lib', 'host', 'probe.js'));
  const report = probe();
  return ['sw-protected-vm', 'memory-attributes', 'vfio-device', 'iommufd', 'vfio-type1'].every((c) => capabilityFeature(report, c).ok);
}

const result = hostCanRun()
  ? spawnSync(process.execPath, [soak], { stdio: 'inherit', env })
  : spawnSync(path.join(root, 'scripts', 'vm', 'run-in-vm.sh'), ['--timeout', process.env.GUESTMEM_VM_TIMEOUT ?? '7200', '--', process.execPath, soak], { stdio: 'inherit', env, cwd: root });
if (result.error) {
  console.error(`soak: could not start: ${result.error.message}`);
  process.exit(2);
}
process.exit(result.status ?? 1);
