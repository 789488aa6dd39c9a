// A vCPU misused while its guest runs, and fds adopted that are not memory (issue 25):
// register access during run() is refused at once (KVM's vCPU mutex would hold Node's
// thread in the ioctl until the guest exits), every misuse has a code, a vCPU's fd is not
// shared memory, and a VM without private memory says so instead of a bare ENOTTY.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { Kvm, type Vm } from '../../lib/kvm/kvm';
import { SharedMemory } from '../../lib/kvm/shared-memory';
import { Vcpu } from '../../lib/vmm/vcpu';
import { requires } from '../support/requires';

const PAGE = 4096;
const CODE = 0x1000;

describe('vCPU misuse and non-memory fds on a real kernel', function () {
  this.timeout(60_000);
  let kvm: Kvm;
  let vm: Vm;
  let ram: SharedMemory;
  let vcpu: Vcpu;

  before(requires('kvm'));

  beforeEach(() => {
    kvm = Kvm.open();
    vm = kvm.createVm('default');
    // A real-mode guest that spins at 0x1000 (jmp $) until stopped: plain memory, no guest_memfd.
    ram = SharedMemory.create(16 * PAGE, 'spin');
    ram.write(CODE, Uint8Array.of(0xeb, 0xfe));
    vm.setUserMemoryRegion({ slot: 0, gpa: 0, size: 16 * PAGE, userspaceAddress: ram.address });
    vcpu = Vcpu.create(kvm, vm, 0);
    const sregs = vcpu.specialRegisters;
    sregs.cs = { ...sregs.cs, base: 0n, selector: 0 };
    vcpu.specialRegisters = sregs;
    vcpu.registers = { ...vcpu.registers, rip: BigInt(CODE), rflags: 2n };
  });

  afterEach(() => {
    kvm?.close();
    ram?.close();
  });

  it('refuses register access, a second run and completions while run() is in flight, with codes', async () => {
    const running = vcpu.run();
    await new Promise((resolve) => setTimeout(resolve, 50)); // the guest is spinning in KVM_RUN now
    const started = performance.now();
    assert.throws(() => vcpu.registers, { code: 'ERR_GUESTMEM_BUSY' });
    assert.throws(() => { vcpu.specialRegisters = {} as never; }, { code: 'ERR_GUESTMEM_BUSY' });
    assert.throws(() => { vcpu.registers = {} as never; }, { code: 'ERR_GUESTMEM_BUSY' });
    assert.throws(() => vcpu.completeIo(new Uint8Array(1)), { code: 'ERR_GUESTMEM_BUSY' });
    await assert.rejects(vcpu.run(), { code: 'ERR_GUESTMEM_BUSY' });
    assert.ok(performance.now() - started < 1000, 'refused at once, not after the guest exits');
    vcpu.stop();
    const exit = await running;
    assert.equal(exit.reason, 'intr');
    // Stopped: the registers are there again, and the guest is where it spun.
    assert.equal(vcpu.registers.rip, BigInt(CODE));
    assert.throws(() => vcpu.completeIo(new Uint8Array(1)), { code: 'ERR_GUESTMEM_EXIT_MISMATCH' });
    assert.throws(() => vcpu.completeHypercall(0), { code: 'ERR_GUESTMEM_EXIT_MISMATCH' });
    assert.throws(() => vcpu.completeMmio(new Uint8Array(1)), { code: 'ERR_GUESTMEM_EXIT_MISMATCH' });
  });

  it('refuses to adopt a vCPU fd as shared memory (its pages past kvm_run fault: SIGBUS)', () => {
    // In a child: where it is not refused, the read kills the process that makes it.
    const lib = path.join(__dirname, '..', '..', 'lib', 'index.js');
    const script = `const g = require(${JSON.stringify(lib)}); const kvm = g.Kvm.open(); const vm = kvm.createVm('default'); const vcpu = g.Vcpu.create(kvm, vm, 0);
      try { g.SharedMemory.adopt({ fd: vcpu.fd }, 1 << 20).read(200 * 4096, 16); console.log('read'); } catch (e) { console.log(e.code, e.message); }`;
    const result = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(result.signal, null, `killed by ${result.signal}`);
    assert.match(result.stdout, /^ERR_INVALID_ARG_VALUE .*not a file/);
  });

  it('says a default VM has no guest_memfd nor memory attributes, instead of a bare ENOTTY', () => {
    // 6.12 makes a guest_memfd for a default VM all the same; newer kernels answer ENOTTY.
    try {
      vm.createGuestMemfd(1 << 20).close();
    } catch (error) {
      assert.equal((error as { code?: unknown }).code, 'ERR_GUESTMEM_UNSUPPORTED');
      assert.match((error as Error).message, /KVM_CREATE_GUEST_MEMFD: .* has no guest_memfd .*sw-protected/);
    }
    assert.throws(() => vm.setMemoryAttributes(0, PAGE, 'private'), { code: 'ERR_GUESTMEM_UNSUPPORTED', message: /KVM_SET_MEMORY_ATTRIBUTES: .* has no memory attributes/ });
  });

  it('refuses createVm options of the wrong type before a VM exists', () => {
    assert.throws(() => kvm.createVm('default', null as never), { code: 'ERR_INVALID_ARG_TYPE' });
  });
});
