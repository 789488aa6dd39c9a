// On a real SEV-SNP or TDX host (`npm run test:host`; never in the harness VM, which has
// neither): a VM of the hardware type, initialized as the type requires (KVM_SEV_INIT2;
// KVM_TDX_CAPABILITIES + KVM_TDX_INIT_VM), guest memory on it converted both ways, and
// with a device bound to vfio-pci (GUESTMEM_HOST_VFIO=<bdf>) the VFIO listener mapping
// exactly the shared pages. The type: GUESTMEM_HOST_VM_TYPE (snp, tdx, sw-protected), else
// the hardware type the host has. Pending with the reason on a host without one, a failure
// instead with GUESTMEM_REQUIRE_HARDWARE=1 (for a hardware CI job, after
// `guestmem probe --require vm-type=snp,vfio,iommufd`).

import assert from 'node:assert/strict';
import { Kvm, type Vm } from '../../lib/kvm/kvm';
import { vmTypeFix } from '../../lib/kvm/vm-types';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { vmTypeFeature } from '../../lib/host/probe';
import { AssignedDevice } from '../../lib/vfio/assigned-device';
import { VfioDmaListener } from '../../lib/vfio/vfio-dma-listener';
import { GuestVm } from '../../lib/vmm/guest-vm';
import { hardwareType } from '../support/hardware-type';
import { hostReport } from '../support/requires';

const MiB = 1 << 20;
const GPA = 16 * MiB;
const PAGE = 4096;

describe('a confidential VM on this host (SNP or TDX hardware)', function () {
  this.timeout(120_000);
  let type: 'snp' | 'tdx' | 'sw-protected';
  let kvm: Kvm;
  let vm: Vm;

  before(function () {
    const report = hostReport();
    const found = hardwareType(report);
    const feature = found ? vmTypeFeature(report, found) : { ok: false, why: 'neither SEV-SNP nor TDX is usable here', fix: `${vmTypeFix('snp')}; or ${vmTypeFix('tdx')}` };
    if (!found || !feature.ok) {
      const reason = `${feature.why}${feature.fix ? ` (fix: ${feature.fix})` : ''}`;
      if (process.env.GUESTMEM_REQUIRE_HARDWARE === '1') throw new Error(`GUESTMEM_REQUIRE_HARDWARE=1, but: ${reason}`);
      console.log(`      (skipped: ${reason})`);
      this.skip();
    }
    type = found;
    kvm = Kvm.open();
  });

  after(() => {
    vm?.close();
    kvm?.close();
  });

  it('creates the VM and initializes it as its type requires', () => {
    vm = kvm.createVm(type);
    const expected = type === 'sw-protected' ? 'none' : type;
    assert.equal(vm.initialization.kind, expected, JSON.stringify(vm.initialization, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v)));
    if (vm.initialization.kind === 'tdx') assert.ok(vm.initialization.cpuidEntries > 0, 'a CPUID configuration was given');
  });

  it('guest memory on it: a block all private, then converted shared and back', async () => {
    const memory = new GuestMemory(vm);
    try {
      const block = memory.addBlock({ gpa: GPA, size: 4 * MiB });
      assert.equal(block.privatePages, 1024);
      await memory.convert(GPA, 64 * 1024, 'shared');
      block.shared.write(0, Uint8Array.of(1, 2, 3));
      assert.deepEqual([...block.shared.read(0, 3)], [1, 2, 3]);
      await memory.convert(GPA, PAGE, 'private');
      assert.deepEqual(block.kvmRuns('shared'), [[1, 15]]);
      assert.deepEqual([...block.shared.read(0, 3)], [0, 0, 0], 'the shared copy of the page went private was freed');
    } finally {
      await memory.shutdown();
    }
  });

  it('with a device bound to vfio-pci (GUESTMEM_HOST_VFIO): the listener maps exactly the shared pages', async function () {
    const bdf = process.env.GUESTMEM_HOST_VFIO;
    if (!bdf) {
      console.log('      (skipped: set GUESTMEM_HOST_VFIO=<bdf> of a device bound to vfio-pci)');
      this.skip();
    }
    const memory = new GuestMemory(vm, { firstSlot: 1 });
    using device = AssignedDevice.open(bdf!);
    try {
      const block = memory.addBlock({ gpa: GPA, size: 4 * MiB });
      const listener = new VfioDmaListener(device.dma, { sharedAddress: block.shared.address, gpa: BigInt(GPA) });
      await block.register(listener);
      await memory.convert(GPA, 64 * 1024, 'shared');
      await memory.convert(GPA + 8 * PAGE, PAGE, 'private');
      assert.deepEqual(listener.heldRuns(0, 1024), [[0, 8], [9, 7]]);
      assert.equal(listener.mappings, 15);
    } finally {
      await memory.shutdown();
    }
  });
});

// The launch (vm-launch.ts) on real hardware: every call succeeding. A guest program running
// on it is confidential-guest.test.ts.
describe('the launch of an SNP or TDX VM on this host', function () {
  this.timeout(120_000);
  let type: 'snp' | 'tdx';
  let kvm: Kvm;

  before(function () {
    const report = hostReport();
    const found = hardwareType(report);
    if (found !== 'snp' && found !== 'tdx') {
      const reason = found === 'sw-protected' ? 'GUESTMEM_HOST_VM_TYPE=sw-protected has no launch' : `neither SEV-SNP nor TDX is usable here (fix: ${vmTypeFix('snp')}; or ${vmTypeFix('tdx')})`;
      if (process.env.GUESTMEM_REQUIRE_HARDWARE === '1' && found === null) throw new Error(`GUESTMEM_REQUIRE_HARDWARE=1, but: ${reason}`);
      console.log(`      (skipped: ${reason})`);
      this.skip();
    }
    type = found;
    kvm = Kvm.open();
  });

  after(() => kvm?.close());

  it('measures a guest\'s boot region into private memory and ends the launch, every call succeeding', async () => {
    const vm = kvm.createVm(type);
    const memory = new GuestMemory(vm);
    try {
      assert.equal(vm.launch?.kind, type);
      memory.addBlock({ gpa: GPA, size: 4 * MiB });
      const guest = await GuestVm.create({ kvm, memory, image: new Uint8Array(PAGE).fill(0xf4), boot: { dataGpa: BigInt(GPA + MiB), dataPages: 4 }, vcpus: 2 });
      try {
        assert.equal(vm.launch!.finished, true);
        // A TD's reset page (tdx-reset-page.ts) is measured too.
        assert.equal(vm.launch!.measuredBytes, guest.layout.end - guest.layout.bootInfo + (type === 'tdx' ? 4096n : 0n));
        assert.equal(memory.blocks[0]!.attributes.countShared({ offset: 0, size: Number(guest.layout.end - guest.layout.bootInfo) }), 0);
      } finally {
        guest.close();
      }
    } finally {
      await memory.shutdown();
      vm.close();
    }
  });
});
