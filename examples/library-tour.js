// guestmem from plain JavaScript (CommonJS, no build step): the tracker with a listener that
// models a device's DMA mappings, the state-change channel, and what this host offers.
// Runs anywhere guestmem installs: no /dev/kvm needed. `node examples/library-tour.js`
// from a checkout (after `npm run build:ts`), or `node library-tour.js` where guestmem is
// installed. examples/library-tour.ts is the same in TypeScript.
'use strict';

const diagnosticsChannel = require('node:diagnostics_channel');
const { RamBlockAttributes, RecordingListener, STATE_CHANGE_CHANNEL, probe } = require(requireTarget());

/** `guestmem` where it is installed; this checkout's build otherwise. */
function requireTarget() {
  try {
    return require.resolve('guestmem');
  } catch {
    return require('node:path').join(__dirname, '..', 'dist', 'lib', 'index.js');
  }
}

async function main() {
  // Every state change is published, as QEMU's ram_block_attributes_state_change tracepoint.
  const changes = [];
  diagnosticsChannel.subscribe(STATE_CHANGE_CHANNEL, (message) => changes.push(message));

  // A 1 MiB block of 4 KiB granules, all private, and a listener over all of it that maps
  // shared granules as VFIO would (a double map or unmap counts as an error).
  const block = new RamBlockAttributes(1 << 20, { granularity: 4096 });
  const device = new RecordingListener('device', block.granules);
  await block.register(device, { offset: 0, size: 1 << 20 });

  const shared = await block.stateChange(0, 64 * 1024, 'shared');        // the guest shares 64 KiB
  const back = await block.stateChange(16 * 1024, 4096, 'private');       // and takes one page back
  console.log(`to shared: from ${shared.from}, ${shared.changed} granules changed`);
  console.log(`to private: from ${back.from}, ${back.changed} granule changed`);
  console.log(`shared runs [first, count]: ${JSON.stringify(block.runs('shared'))}`);
  console.log(`the device maps ${device.mappedGranules} granules, ${device.errors} errors`);
  console.log(`state changes published: ${changes.map((c) => `${c.from}->${c.to}`).join(', ')}`);

  // What this host offers for the kernel side (guest_memfd, memory attributes, VFIO).
  const report = probe();
  console.log(`native addon: ${report.nativeAddon.ok ? 'loaded' : `missing (${report.nativeAddon.why})`}`);
  console.log(`SW-protected VMs: ${report.swProtectedVm.ok ? 'yes' : `no (${report.swProtectedVm.why})`}`);

  if (device.errors !== 0 || device.mappedGranules !== 15) throw new Error('the device model disagrees with the tracker');
  await block.unregister(device);                                        // unmaps what it holds
  console.log(`after unregister the device maps ${device.mappedGranules} granules`);
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
