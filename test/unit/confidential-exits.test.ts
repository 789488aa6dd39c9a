// What an SNP or TDX guest sends when it ends itself, as the exit decoder and the VMM loop
// see it: KVM_EXIT_SYSTEM_EVENT of type SEV_TERM carrying the GHCB MSR termination request
// (reason set, reason code) or of type TDX_FATAL carrying the TD's registers. The exit view
// is laid out with the addon's own offsets (kvmRunLayout), as the runner fills it.

import assert from 'node:assert/strict';
import { native } from '../../lib/common/native';
import { ExitDecoder } from '../../lib/vmm/exit-decoder';
import { decodeSevTermination, describeTermination, KVM_SYSTEM_EVENT_SEV_TERM, KVM_SYSTEM_EVENT_TDX_FATAL } from '../../lib/vmm/system-event';
import type { VcpuExit } from '../../lib/vmm/vcpu-exit';
import { VmmLoop, type LoopVcpu } from '../../lib/vmm/vmm-loop';
import type { Registers } from '../../lib/vmm/vcpu';

const KVM_EXIT_SYSTEM_EVENT = 24;
/** GHCB MSR termination request: GHCBInfo 0x100, reason set 1 (bits 12-15), reason code 0x2a (bits 16-23). */
const TERM_SET1_CODE2A = 0x2a1100n;

function systemEventExit(type: number, data: bigint[]): VcpuExit {
  const at = native().kvmRunLayout;
  const view = new Uint8Array(native().vcpuExitViewBytes);
  const dv = new DataView(view.buffer);
  dv.setUint32(at.exitReason, KVM_EXIT_SYSTEM_EVENT, true);
  dv.setUint32(at.internalSuberror, type, true);
  dv.setUint32(at.internalNdata, data.length, true);
  data.forEach((value, i) => dv.setBigUint64(at.internalData + 8 * i, value, true));
  return new ExitDecoder(view, at).decode();
}

/** Gives its exits, then spins in the guest until stopped (an 'intr' exit, as a kick gives). */
class OneExit implements LoopVcpu {
  stopped = false;
  private wake: (() => void) | null = null;
  constructor(private readonly exits: VcpuExit[]) {}
  async run(): Promise<VcpuExit> {
    await new Promise((resolve) => setImmediate(resolve));
    const next = this.stopped ? undefined : this.exits.shift();
    if (next) return next;
    if (!this.stopped) await new Promise<void>((resolve) => (this.wake = resolve));
    return { reason: 'intr', exitReason: 10 };
  }
  stop(): void {
    this.stopped = true;
    this.wake?.();
  }
  completeHypercall(): void {}
  completeIo(): void {}
  completeMmio(): void {}
  get registers(): Registers {
    return Object.fromEntries(['rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp', 'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags'].map((r) => [r, 0n])) as Registers;
  }
}

const memory = { covers: () => true, convert: () => Promise.reject(new Error('no conversions here')) };

describe('confidential guests ending themselves (exit decoder, VMM loop)', () => {
  it('decodes the GHCB MSR termination request: reason set and code; anything else is not one', () => {
    assert.deepEqual(decodeSevTermination(KVM_SYSTEM_EVENT_SEV_TERM, [TERM_SET1_CODE2A]), { reasonSet: 1, reasonCode: 0x2a, ghcbMsr: TERM_SET1_CODE2A });
    assert.deepEqual(decodeSevTermination(KVM_SYSTEM_EVENT_SEV_TERM, [0x100n]), { reasonSet: 0, reasonCode: 0, ghcbMsr: 0x100n });
    assert.equal(decodeSevTermination(KVM_SYSTEM_EVENT_SEV_TERM, [0x14n]), null, 'a page-state-change request is not a termination');
    assert.equal(decodeSevTermination(KVM_SYSTEM_EVENT_SEV_TERM, []), null);
    assert.equal(decodeSevTermination(1, [0x100n]), null, 'a shutdown event is not a termination request');
    assert.equal(describeTermination(KVM_SYSTEM_EVENT_SEV_TERM, [0x20100n]), 'SEV termination request, reason set 0 code 0x2 (SEV-SNP features are not supported)');
    // A TD's error code is R12 of the 16 registers KVM sends (confidential-answers.test.ts).
    assert.equal(describeTermination(KVM_SYSTEM_EVENT_TDX_FATAL, Array.from({ length: 16 }, (_, i) => (i === 12 ? 0x1234n : 0n))), 'TDX fatal error reported by the TD, error code 0x1234');
    assert.equal(describeTermination(2, []), null);
    // guestmem's own reason sets (guest/ghcb.inc): a failed check, an unexpected #VC.
    assert.equal(describeTermination(KVM_SYSTEM_EVENT_SEV_TERM, [0x03e100n]), "SEV termination request, reason set 14 code 0x3 (guestmem: the guest's check 3 failed)");
    assert.equal(describeTermination(KVM_SYSTEM_EVENT_SEV_TERM, [0x7bf100n]), 'SEV termination request, reason set 15 code 0x7b (guestmem: a #VC the program did not expect, exit code 0x7b)');
  });

  it('the exit decoder reads the system event from the exit view and names the termination', () => {
    const exit = systemEventExit(KVM_SYSTEM_EVENT_SEV_TERM, [TERM_SET1_CODE2A]);
    assert.deepEqual(exit, { exitReason: 24, reason: 'system-event', type: 6, data: [TERM_SET1_CODE2A], termination: 'SEV termination request, reason set 1 code 0x2a' });
    const reset = systemEventExit(2, []);
    assert.deepEqual(reset, { exitReason: 24, reason: 'system-event', type: 2, data: [] });
  });

  it('the VMM loop ends the whole guest on a termination, with the reason as the vCPU\'s outcome', async () => {
    const ending = new OneExit([systemEventExit(KVM_SYSTEM_EVENT_SEV_TERM, [0x100n])]);
    const other = new OneExit([]);
    const report = await new VmmLoop([ending, other], memory).run();
    const sev = { reasonSet: 0, reasonCode: 0, ghcbMsr: 0x100n };
    assert.deepEqual(report.vcpus, [{ vcpu: 0, terminated: 'SEV termination request, reason set 0 code 0x0 (general termination request)', sev }, { vcpu: 1, stopped: true }]);
    assert.equal(other.stopped, true);
  });

  it('any other system event stops the VM as an exit the VMM does not handle', async () => {
    await assert.rejects(new VmmLoop([new OneExit([systemEventExit(2, [])])], memory).run(), (e: Error & { code?: string }) => e.code === 'ERR_GUESTMEM_VCPU_FAILED' && /a system event the VMM does not handle: exit system-event/.test(e.message));
  });
});
