// The secret program as a confidential guest on a real SEV-SNP or TDX host (`npm run
// test:host`): secret-snp (GHCB MSR protocol, PVALIDATE, C-bit) or secret-tdx (reset page,
// TDG.VP.VMCALL, page acceptance) launched, measured and run through the VMM loop, every
// check of the guest and the host holding. Pending with the reason on a host without SNP or
// TDX, a failure instead with GUESTMEM_REQUIRE_HARDWARE=1.

import assert from 'node:assert/strict';
import { Kvm } from '../../lib/kvm/kvm';
import { vmTypeFix } from '../../lib/kvm/vm-types';
import { GuestMemory } from '../../lib/memory/guest-memory';
import { vmTypeFeature } from '../../lib/host/probe';
import { runGuestSession } from '../../lib/vmm/guest-session';
import { hardwareType } from '../support/hardware-type';
import { hostReport } from '../support/requires';

const MiB = 1 << 20;
const GPA = 16 * MiB;

describe('the secret program as an SNP or TDX guest on this host', function () {
  this.timeout(120_000);
  let type: 'snp' | 'tdx';
  let kvm: Kvm;

  before(function () {
    const report = hostReport();
    const found = hardwareType(report);
    const feature = found === 'snp' || found === 'tdx' ? vmTypeFeature(report, found) : null;
    if (!feature?.ok) {
      const reason = found === 'sw-protected'
        ? 'GUESTMEM_HOST_VM_TYPE=sw-protected: secret-snp and secret-tdx speak SNP\'s and TDX\'s protocols'
        : `${feature?.why ?? 'neither SEV-SNP nor TDX is usable here'} (fix: ${vmTypeFix('snp')}; or ${vmTypeFix('tdx')})`;
      if (process.env.GUESTMEM_REQUIRE_HARDWARE === '1' && found !== 'sw-protected') throw new Error(`GUESTMEM_REQUIRE_HARDWARE=1, but: ${reason}`);
      console.log(`      (skipped: ${reason})`);
      this.skip();
    }
    type = found as 'snp' | 'tdx';
    kvm = Kvm.open();
  });

  after(() => kvm?.close());

  it('launches it measured, runs it through the VMM loop, and every check holds', async () => {
    const vm = kvm.createVm(type);
    const memory = new GuestMemory(vm);
    try {
      memory.addBlock({ gpa: GPA, size: 4 * MiB, name: 'guest-ram' });
      const dataGpa = BigInt(GPA + MiB);
      const report = await runGuestSession({ kvm, memory, program: type === 'snp' ? 'secret-snp' : 'secret-tdx', dataGpa, dataPages: 1, timeoutMs: 60_000 });
      assert.deepEqual(report.problems, [], report.console);
      assert.deepEqual(report.hostChecks.filter((c) => !c.ok), []);
      assert.ok(report.hostChecks.some((c) => c.name === 'memfd-hides-secret') && report.hostChecks.some((c) => c.name === 'memfd-shows-message'), JSON.stringify(report.hostChecks));
      assert.ok(report.run.conversions.converted >= 2 && report.run.conversions.rejected === 0 && report.run.conversions.failed === 0, JSON.stringify(report.run.conversions));
      if (type === 'snp') {
        assert.deepEqual(report.run.vcpus, [{ vcpu: 0, terminated: 'SEV termination request, reason set 0 code 0x0 (general termination request)', sev: { reasonSet: 0, reasonCode: 0, ghcbMsr: 0x100n } }]);
      } else {
        assert.deepEqual(report.run.vcpus, [{ vcpu: 0, status: 0 }]);
        assert.deepEqual(report.guestChecks, { passed: 5, failed: [] });
      }
      // The page ends shared, as the guest asked; the boot region stays measured and private.
      const block = memory.blocks[0]!;
      assert.deepEqual(block.kvmRuns('shared'), [[MiB / 4096, 1]]);
    } finally {
      await memory.shutdown();
      vm.close();
    }
  });
});
