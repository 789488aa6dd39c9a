#!/usr/bin/env node
// The guestmem side of examples/existing-vmm: started by vmm.c with its fds (see there).
// It cannot make VM ioctls itself (KVM binds a VM to its creator's process), so its VM is a
// DelegatedVm that asks the VMM for each memory-attribute change over the pipe. It adopts
// the VMM's memslot, memfd and guest_memfd (at their offsets) as one RAM block, attaches
// the device's VFIO DMA listener (--vfio), converts, proves by DMA what the device reaches,
// writes a pattern into the shared pages, and reports to the VMM, which checks the rest.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { AssignedDevice, DelegatedVm, DmaProbe, GuestMemory, VfioDmaListener, Vm } = require(path.join(__dirname, '..', '..'));

const KiB = 1024;
const MiB = 1024 * KiB;
// What vmm.c made.
const FD = { memfd: 3, guestMemfd: 4, vm: 5, requests: 6, answers: 7 };
const SLOT = 5;
const GPA = 16 * MiB;
const BLOCK = 2 * MiB;
const MEMFD_OFFSET = 1 * MiB;
const GMEM_OFFSET = 2 * MiB;

/** One request to the VMM, answered synchronously: KVM_SET_MEMORY_ATTRIBUTES is the VMM's to make. */
function askVmm(gpa, size, attributes) {
  fs.writeSync(FD.requests, `attr ${gpa.toString(16)} ${size.toString(16)} ${attributes.toString(16)}\n`);
  let answer = '';
  const byte = Buffer.alloc(1);
  while (!answer.endsWith('\n')) {
    if (fs.readSync(FD.answers, byte, 0, 1, null) !== 1) throw new Error('the VMM closed the answer pipe');
    answer += byte.toString('latin1');
  }
  const errno = Number(answer.trim());
  if (errno !== 0) throw Object.assign(new Error(`the VMM's KVM_SET_MEMORY_ATTRIBUTES failed: errno ${-errno}`), { errno, syscall: 'ioctl(KVM_SET_MEMORY_ATTRIBUTES)' });
}

async function main() {
  const vfio = process.argv[2] === '--vfio' ? process.argv[3] : undefined;
  const report = { vmIoctlHere: null, mappings: [], dma: {} };

  // The VM fd works only in the VMM's process: here every VM ioctl is EIO.
  try {
    Vm.adopt(FD.vm).close();
    report.vmIoctlHere = 'worked';
  } catch (error) {
    report.vmIoctlHere = error.code ?? error.message;
    report.vmIoctlError = error.message;
  }

  const vm = new DelegatedVm({ type: 1, setMemoryAttributes: askVmm });
  const memory = new GuestMemory(vm, { slots: [SLOT] });
  const block = memory.addBlock({
    gpa: GPA, size: BLOCK, name: 'vmm-ram',
    shared: { fd: FD.memfd, offset: MEMFD_OFFSET },
    guestMemfd: { fd: FD.guestMemfd, offset: GMEM_OFFSET },
    memslot: { adopt: true },
  });
  const device = vfio ? AssignedDevice.open(vfio) : null;
  let probe = null;
  try {
    const listener = device ? new VfioDmaListener(device.dma, { sharedAddress: block.shared.address, gpa: BigInt(GPA) }) : null;
    if (listener) await block.register(listener);
    probe = device ? new DmaProbe(device) : null;

    await memory.convert(GPA, 256 * KiB, 'shared');
    report.mappings.push(listener ? listener.mappings : null);
    if (probe) report.dma.sharedPage = await probe.canRead(block, 0, 0x3c);
    block.shared.view(0, 256 * KiB).fill(0xa5);

    await memory.convert(GPA + 64 * KiB, 64 * KiB, 'private');
    report.mappings.push(listener ? listener.mappings : null);
    if (probe) {
      report.dma.privatePage = await probe.canRead(block, 64 * KiB, 0x3c);
      // The probe wrote its marker into the memfd page to see whether DMA carries it; the
      // page is private, so give its shared copy back again.
      block.shared.discard(64 * KiB, 4 * KiB);
    }
    report.backend = device ? device.backend : null;
  } finally {
    probe?.close();
    await memory.shutdown();
    device?.close();
  }

  const ok = report.vmIoctlHere === 'EIO' &&
    (!vfio || (report.mappings[0] === 64 && report.mappings[1] === 48 && report.dma.sharedPage === true && report.dma.privatePage === false));
  fs.writeSync(FD.requests, `done ${JSON.stringify({ ok, ...report })}\n`);
  return ok ? 0 : 1;
}

main().then((code) => { process.exitCode = code; }, (error) => {
  console.error(`converter: ${error.stack ?? error}`);
  process.exitCode = 1;
});
