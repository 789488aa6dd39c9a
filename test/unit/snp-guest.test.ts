// The SEV-SNP secret program (guest/secret-snp.s) held to the GHCB specification without the
// hardware: its GHCB MSR numbers (guest/ghcb.inc) against lib/vmm/ghcb-msr.ts, whose
// encodings are checked against values computed by hand from the specification (and the
// kernel's sev-common.h and sev_smoke_test); the shipped binary against its source; and its
// code, as objdump reads it, against what an SNP guest may and must do: no instruction that
// would raise #VC, the MSR protocol's wrmsr/VMGEXIT/rdmsr, PVALIDATE, the #VC gate at 29.

import assert from 'node:assert/strict';
import { GHCB_MSR, GUESTMEM_TERM_SET, MSR_GHCB, PAGE_STATE, decodePageStateRequest, decodeSevInfoResponse, pageStateRequest, pageStateResponse, sevInfoResponse, terminationRequest } from '../../lib/vmm/ghcb-msr';
import { secretSnpProgram } from '../../lib/vmm/programs/secret-snp';
import { HOST_NOTE, SECRET } from '../../lib/vmm/programs/secret';
import type { ProgramContext, HostCheck } from '../../lib/vmm/program-host';
import type { RamBlock } from '../../lib/memory/ram-block';
import { assembleGuest, builtGuest, includeNumbers, requireBinutils, routine, type AssembledGuest, type Instruction } from '../support/guest-disassembly';

/** Instructions an SNP guest cannot execute without a GHCB page: each would raise #VC. */
const EXITING = /^(rep )?(in|out|ins[bwd]?|outs[bwd]?|hlt|cpuid|vmmcall|vmcall|rdtscp?|rdpmc|wbinvd|invd|monitor|mwait|xsetbv|ud2)\b/;

function texts(code: Instruction[]): string[] {
  return code.map((i) => i.text);
}

describe('the GHCB MSR protocol (lib/vmm/ghcb-msr.ts) against the GHCB specification', () => {
  it('encodes a page state change: bits 11:0 0x014, 51:12 the GFN, 55:52 1 private / 2 shared', () => {
    assert.equal(pageStateRequest(0x1234000n, 'private'), 0x0010000001234014n);
    assert.equal(pageStateRequest(0x1234000n, 'shared'), 0x0020000001234014n);
    assert.equal(pageStateRequest(0xf_ffff_ffff_f000n, 'private'), 0x001f_ffff_ffff_f014n, 'a 40-bit GFN fills bits 51:12');
    assert.deepEqual(decodePageStateRequest(0x0020000001234014n), { gpa: 0x1234000n, to: 'shared' });
    assert.deepEqual(decodePageStateRequest(0x0030000001234014n), { gpa: 0x1234000n, to: 3 });
    assert.equal(decodePageStateRequest(0x100n), null);
    assert.equal(pageStateResponse(0n), 0x15n, 'done: 0x015 and error 0 (what KVM answers after the VMM converted)');
    assert.equal(pageStateResponse(1n), 0x1_0000_0015n);
  });

  it('encodes the SEV information response, the termination request, and the MSR', () => {
    assert.equal(sevInfoResponse(2, 1, 51), 0x0002000133000001n);
    assert.deepEqual(decodeSevInfoResponse(0x0002000133000001n), { max: 2, min: 1, encryptionBit: 51 });
    assert.equal(decodeSevInfoResponse(0x2n), null);
    assert.equal(terminationRequest(0, 0), 0x100n, 'the general request, as sev_smoke_test\'s guest sends it');
    assert.equal(terminationRequest(1, 2), 0x21100n);
    assert.equal(terminationRequest(GUESTMEM_TERM_SET.check, 5), 0x5e100n);
    assert.equal(MSR_GHCB, 0xc0010130);
    assert.deepEqual([GHCB_MSR.sevInfoRequest, GHCB_MSR.sevInfoResponse, GHCB_MSR.cpuidRequest, GHCB_MSR.cpuidResponse, GHCB_MSR.pageStateRequest, GHCB_MSR.pageStateResponse, GHCB_MSR.terminationRequest], [0x2n, 0x1n, 0x4n, 0x5n, 0x14n, 0x15n, 0x100n]);
  });

  it('guest/ghcb.inc uses the same numbers', () => {
    const inc = includeNumbers('ghcb.inc');
    assert.deepEqual(
      ['MSR_GHCB', 'GHCB_SEV_INFO_REQ', 'GHCB_SEV_INFO_RESP', 'GHCB_PSC_REQ', 'GHCB_PSC_RESP', 'GHCB_PSC_PRIVATE', 'GHCB_PSC_SHARED', 'GHCB_PSC_OP_SHIFT', 'GHCB_TERM_REQ', 'GHCB_TERM_SET_SHIFT', 'GHCB_TERM_CODE_SHIFT', 'TERM_SET_CHECK', 'TERM_SET_VC', 'X86_TRAP_VC'].map((name) => inc.get(name)),
      [BigInt(MSR_GHCB), GHCB_MSR.sevInfoRequest, GHCB_MSR.sevInfoResponse, GHCB_MSR.pageStateRequest, GHCB_MSR.pageStateResponse, PAGE_STATE.private, PAGE_STATE.shared, 52n, GHCB_MSR.terminationRequest, 12n, 16n, BigInt(GUESTMEM_TERM_SET.check), BigInt(GUESTMEM_TERM_SET.vc), 29n],
    );
  });
});

describe('secret-snp as assembled (objdump)', function () {
  let guest: AssembledGuest;
  let code: Instruction[];

  before(function () {
    requireBinutils.call(this);
    guest = assembleGuest('secret-snp');
    code = [...routine(guest, 'start', 'gdt'), ...routine(guest, 'split_2m', 'split_table')];
  });

  it('is the binary the VMM loads (dist/guest/secret-snp.bin)', () => {
    assert.ok(builtGuest('secret-snp').equals(guest.flat), 'dist/guest/secret-snp.bin differs from guest/secret-snp.s: run npm run build:guests');
  });

  it('executes nothing that would raise #VC: no port I/O, VMMCALL, CPUID, HLT', () => {
    const exiting = texts(code).filter((text) => EXITING.test(text));
    assert.deepEqual(exiting, []);
    assert.ok(code.length > 100, `the code disassembled (${code.length} instructions)`);
  });

  it('speaks the MSR protocol: ecx = the GHCB MSR, wrmsr, VMGEXIT (f3 0f 01 d9), rdmsr', () => {
    const call = routine(guest, 'ghcb_call', 'page_state');
    assert.deepEqual(texts(call).filter((t) => /^(mov ecx|wrmsr|vmgexit|rdmsr)/.test(t)), ['mov ecx,0xc0010130', 'wrmsr', 'vmgexit', 'rdmsr']);
    assert.deepEqual(call.find((i) => i.text === 'vmgexit')!.bytes, [0xf3, 0x0f, 0x01, 0xd9]);
  });

  it('builds the page state change as the specification lays it out: GFN << 12, operation << 52, 0x014', () => {
    assert.deepEqual(texts(routine(guest, 'page_state', 'pvalidate_page')), ['shr rax,0xc', 'shl rax,0xc', 'shl rdx,0x34', 'or rax,rdx', 'or rax,0x14', `jmp 0x${guest.labels.get('ghcb_call')!.toString(16)}`]);
    const main = texts(routine(guest, 'start', 'fail_1'));
    // Each request's operation (edx) is set right before the call, and the answer compared with a done response.
    const requests = main.flatMap((t, i) => (t === `call 0x${guest.labels.get('page_state')!.toString(16)}` ? [[main[i - 1], main[i + 1]]] : []));
    assert.deepEqual(requests, [['mov edx,0x1', 'cmp rax,0x15'], ['mov edx,0x2', 'cmp rax,0x15']]);
  });

  it('validates the page it turns private and rescinds it before turning it shared: PVALIDATE (f2 0f 01 ff), 4 KiB', () => {
    const validate = routine(guest, 'pvalidate_page', 'install_vc_handler');
    assert.deepEqual(texts(validate).slice(0, 2), ['xor ecx,ecx', 'pvalidate'], 'rcx 0: a 4 KiB page');
    assert.match(validate[2]!.text, /^jb /, 'CF (no RMP update) is a failure');
    assert.deepEqual(validate[1]!.bytes, [0xf2, 0x0f, 0x01, 0xff]);
    const main = texts(routine(guest, 'start', 'fail_1'));
    const at = (label: string) => main.map((t, i) => (t === `call 0x${guest.labels.get(label)!.toString(16)}` ? i : -1)).filter((i) => i >= 0);
    const [validateCall, rescindCall] = at('pvalidate_page');
    const [privateCall, sharedCall] = at('page_state');
    assert.equal(main[validateCall! - 1], 'mov edx,0x1');
    assert.equal(main[rescindCall! - 1], 'xor edx,edx');
    assert.ok(privateCall! < validateCall! && validateCall! < rescindCall! && rescindCall! < sharedCall!, 'private, validate, ..., rescind, shared');
  });

  it('sends its result as a termination request: set 0 code 0 when done, its own sets otherwise', () => {
    const ors = texts(code).filter((t) => /^or eax,0x[0-9a-f]*100$/.test(t));
    const expected = (set: number) => `or eax,0x${(terminationRequest(set, 0) & 0xffffn).toString(16)}`;
    assert.ok(ors.includes(expected(0)), 'done');
    assert.equal(ors.filter((t) => t === expected(GUESTMEM_TERM_SET.check)).length, 7, 'one per check');
    assert.ok(ors.includes(expected(GUESTMEM_TERM_SET.vc)), 'the #VC handler');
  });

  it('installs its #VC handler in IDT entry 29, a 64-bit interrupt gate through selector 0x08 of its own GDT', () => {
    const install = texts(routine(guest, 'install_vc_handler', 'vc_handler'));
    const gate = install.find((t) => t.startsWith('lea rdx,[rip+'))!;
    assert.equal(Number(/# (0x[0-9a-f]+)/.exec(gate)![1]), guest.labels.get('idt')! + 29 * 16);
    assert.ok(install.includes('mov WORD PTR [rdx+0x2],0x8') && install.includes('mov WORD PTR [rdx+0x4],0x8e00'), install.join('; '));
    const handler = Number(/# (0x[0-9a-f]+)/.exec(install.find((t) => t.startsWith('lea rax,[rip+') && t.includes(`# 0x${guest.labels.get('vc_handler')!.toString(16)}`))!)![1]);
    assert.equal(handler, guest.labels.get('vc_handler'));
    const gdt = guest.flat.subarray(guest.labels.get('gdt')!, guest.labels.get('gdt')! + 24);
    assert.equal(gdt.readBigUInt64LE(8), 0x00af9b000000ffffn, 'selector 0x08: present, 64-bit (L), code');
    assert.ok(install.some((t) => t.startsWith('lgdt')) && install.some((t) => t.startsWith('lidt')), 'lgdt, lidt');
    assert.equal(guest.flat.readUInt16LE(guest.labels.get('idt_pointer')!), 30 * 16 - 1, 'the IDT reaches entry 29');
  });

  it('splits the 2 MiB page and maps the page by its C-bit: invlpg after the entry changes', () => {
    const map = texts(routine(guest, 'map_page', 'split_table'));
    assert.ok(map.indexOf('invlpg BYTE PTR [rax]') > map.findIndex((t) => t.startsWith('mov QWORD PTR [rdi+rcx*8],rax')), map.join('; '));
    assert.equal(guest.labels.get('split_table')! % 4096, 0, 'the table is page-aligned in the image (and the image is loaded page-aligned)');
  });
});

describe('secret-snp\'s host side (lib/vmm/programs/secret-snp.ts)', () => {
  it('reads the guest\'s result from its termination request', () => {
    assert.equal(secretSnpProgram.vmType, 'snp');
    assert.equal(secretSnpProgram.termination!({ reasonSet: 0, reasonCode: 0, ghcbMsr: 0x100n }), null);
    assert.equal(secretSnpProgram.termination!({ reasonSet: GUESTMEM_TERM_SET.check, reasonCode: 6, ghcbMsr: 0x6e100n }), 'guest check 6 failed: PVALIDATE of the private page failed');
    assert.equal(secretSnpProgram.termination!({ reasonSet: GUESTMEM_TERM_SET.vc, reasonCode: 0x7b, ghcbMsr: 0x7bf100n }), 'the guest took a #VC it did not expect (exit code 0x7b)');
    assert.equal(secretSnpProgram.termination!({ reasonSet: 1, reasonCode: 2, ghcbMsr: 0x21100n }), 'the guest terminated with reason set 1 code 0x2');
    assert.equal(secretSnpProgram.termination!(undefined), 'the guest ended without an SEV termination request');
  });

  it('checks the memfd and leaves its note when the guest turns the page shared, before the guest runs again', () => {
    const memfd = Buffer.alloc(2 * 4096);
    const block = { gpa: 0x100000, size: memfd.length, name: 'stand-in', shared: { read: (offset: number, length: number) => Buffer.from(memfd.subarray(offset, offset + length)), write: (offset: number, bytes: Uint8Array) => memfd.set(bytes, offset) } } as unknown as RamBlock;
    const checks: HostCheck[] = [];
    const context = { block, dataGpa: 0x101000n, check: (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail }) } as unknown as ProgramContext;
    const event = { vcpu: 0, source: 'hypercall', gpa: 0x101000n, size: 4096n, result: 0, ns: 0 } as const;
    secretSnpProgram.onConversion!({ ...event, to: 'private', outcome: 'converted' }, context);
    secretSnpProgram.onConversion!({ ...event, to: 'shared', outcome: 'rejected' }, context);
    assert.equal(checks.length, 0, 'only a done conversion to shared of the page counts');
    secretSnpProgram.onConversion!({ ...event, to: 'shared', outcome: 'converted' }, context);
    assert.deepEqual(checks.map((c) => [c.name, c.ok]), [['memfd-hides-secret', true]]);
    assert.ok(memfd.subarray(4096, 4096 + HOST_NOTE.length).equals(HOST_NOTE));
    memfd.set(SECRET, 4096);
    secretSnpProgram.onConversion!({ ...event, to: 'shared', outcome: 'converted' }, context);
    assert.equal(checks[1]!.ok, false, 'a secret the memfd shows fails the check');
  });
});
