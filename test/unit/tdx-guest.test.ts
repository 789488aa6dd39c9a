// The TD's secret program and reset page held to the TDX specifications without the
// hardware: the reset page's layout (its reset vector at 0xfffffff0 jumping into the
// trampoline, the trampoline's absolute addresses and parameters, its GDT), the parameters
// the VMM writes, the shipped binaries against their sources, and secret-tdx's code as
// objdump reads it (no instruction that would raise #VE, the TDCALL leaves and TDVMCALL
// sub-functions with the registers the GHCI gives them).

import assert from 'node:assert/strict';
import { identityMap } from '../../lib/vmm/long-mode';
import { PROGRAM_HOSTS } from '../../lib/vmm/programs';
import { TDCALL_LEAF, TDVMCALL } from '../../lib/vmm/tdvmcall';
import { TDX_RESET_PAGE_GPA, TDX_RESET_PAGE_SIZE, TDX_RESET_PARAMS, TDX_RESET_VECTOR, tdxResetImage, tdxResetPage } from '../../lib/vmm/tdx-reset-page';
import { assembleGuest, builtGuest, disassemble, includeNumbers, requireBinutils, routine, type AssembledGuest, type Instruction } from '../support/guest-disassembly';

/** What a TD cannot execute without #VE (or that the program must not need). */
const EXITING = /^(rep )?(in|out|ins[bwd]?|outs[bwd]?|hlt|cpuid|vmmcall|vmcall|rdmsr|wrmsr|rdtscp|rdpmc|wbinvd|invd|monitor|mwait|ud2)\b/;
const VECTOR = Number(TDX_RESET_VECTOR - TDX_RESET_PAGE_GPA);

function texts(code: Instruction[]): string[] {
  return code.map((i) => i.text);
}

/** The absolute address in objdump's text (`... 0xfffff080`, `# 0x1234`). */
function address(text: string): number {
  const all = [...text.matchAll(/0x([0-9a-f]+)/g)];
  return parseInt(all[all.length - 1]![1]!, 16);
}

describe('the TD reset page (lib/vmm/tdx-reset-page.ts, guest/tdx-reset.s)', function () {
  let reset: AssembledGuest;

  before(function () {
    requireBinutils.call(this);
    reset = assembleGuest('tdx-reset');
  });

  it('is one page, the last below 4 GiB, the one the VMM loads (dist/guest/tdx-reset.bin)', () => {
    assert.equal(TDX_RESET_PAGE_GPA + BigInt(TDX_RESET_PAGE_SIZE), 1n << 32n);
    assert.equal(TDX_RESET_VECTOR, 0xfffffff0n);
    assert.equal(tdxResetImage().length, TDX_RESET_PAGE_SIZE);
    assert.ok(builtGuest('tdx-reset').equals(reset.flat), 'dist/guest/tdx-reset.bin differs from guest/tdx-reset.s: run npm run build:guests');
  });

  it('holds at 0xfffffff0 a 32-bit jump that lands inside the page, on the trampoline', () => {
    const [jump] = disassemble(reset.flat, 'i386', VECTOR, VECTOR + 5);
    assert.equal(jump!.bytes[0], 0xe9, 'a near jump, relative: it lands where it is placed');
    assert.equal(jump!.text, `jmp 0x${reset.labels.get('start')!.toString(16)}`);
    assert.equal(reset.labels.get('start'), 0);
    assert.ok([...reset.flat.subarray(VECTOR + 5)].every((b) => b === 0xcc), 'the rest of the last 16 bytes is int3');
  });

  it('the trampoline: GDT, CR4 with PAE and MCE, CR3 from the parameters, CR0 with paging, a far jump to 64-bit code in the page', () => {
    const code = texts(routine(reset, 'start', 'long_mode', 'i386'));
    const base = Number(TDX_RESET_PAGE_GPA);
    assert.equal(address(code.find((t) => t.startsWith('lgdt'))!), base + reset.labels.get('gdt_pointer')!);
    const cr4 = address(code[code.indexOf('mov cr4,eax') - 1]!);
    assert.equal(cr4 & 0x60, 0x60, 'PAE, and MCE (fixed to 1 in a TD)');
    assert.equal(cr4 & 0x2000, 0, 'VMXE (fixed to 0 in a TD) clear');
    assert.equal(address(code[code.indexOf('mov cr3,eax') - 1]!), base + TDX_RESET_PARAMS);
    const cr0 = address(code[code.indexOf('mov cr0,eax') - 1]!);
    assert.equal((cr0 & 0x80000021) >>> 0, 0x80000021, 'PG, NE, PE');
    assert.equal(code[code.length - 1], `jmp 0x8:0x${(base + reset.labels.get('long_mode')!).toString(16)}`);
    const pointer = reset.labels.get('gdt_pointer')!;
    assert.equal(reset.flat.readUInt32LE(pointer + 2), base + reset.labels.get('gdt')!, 'the GDT pointer is absolute');
    assert.equal(reset.flat.readBigUInt64LE(reset.labels.get('gdt')! + 8), 0x00af9b000000ffffn, 'selector 0x08: present, 64-bit (L), code');
  });

  it('the 64-bit entry reads each parameter where tdxResetPage writes it, and enters the program as the long-mode entry does', () => {
    const code = texts(routine(reset, 'long_mode', 'gdt'));
    const at = (field: number) => `[rbx+0x${(TDX_RESET_PARAMS + 8 * field).toString(16)}]`;
    assert.deepEqual(code.slice(0, 9), [
      'mov esi,esi', `mov ebx,0x${Number(TDX_RESET_PAGE_GPA).toString(16)}`, 'lea rax,[rsi+0x1]',
      `imul rax,QWORD PTR ${at(3)}`, `add rax,QWORD PTR ${at(2)}`, 'mov rsp,rax',
      `mov rdx,QWORD PTR ${at(4)}`, `mov rdi,QWORD PTR ${at(5)}`, `jmp QWORD PTR ${at(1)}`,
    ]);
  });

  it('tdxResetPage writes the parameters and refuses page tables a 32-bit CR3 cannot reach', () => {
    const page = tdxResetPage({ pageTables: 0x1001000n, entry: 0x1007000n, stacks: 0x1009000n, stackSize: 16384, vcpus: 2, bootInfo: 0x1000000n });
    const view = Buffer.from(page);
    assert.deepEqual([0, 1, 2, 3, 4, 5].map((i) => view.readBigUInt64LE(TDX_RESET_PARAMS + 8 * i)), [0x1001000n, 0x1007000n, 0x1009000n, 16384n, 2n, 0x1000000n]);
    assert.ok(view.subarray(0, TDX_RESET_PARAMS).equals(reset.flat.subarray(0, TDX_RESET_PARAMS)) && view.subarray(TDX_RESET_PARAMS + 48).equals(reset.flat.subarray(TDX_RESET_PARAMS + 48)), 'nothing else changes');
    assert.throws(() => tdxResetPage({ pageTables: 1n << 32n, entry: 0n, stacks: 0n, stackSize: 1, vcpus: 1, bootInfo: 0n }), { code: 'ERR_OUT_OF_RANGE', message: /below 4 GiB/ });
    assert.throws(() => tdxResetPage({ pageTables: 0n, entry: 0n, stacks: 0n, stackSize: 1, vcpus: 1, bootInfo: 0n }, new Uint8Array(16)), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('the identity map GuestVm builds once the reset page\'s block exists reaches the page (paging turns on there)', () => {
    const tables = new BigUint64Array(identityMap(1n << 32n, 0x1001000n).bytes.buffer);
    // PML4, PDPT, then the fourth page directory's last entry maps [0xffe00000, 4 GiB).
    assert.equal(tables[512 + 3]! & 0xfffn, 3n, 'the fourth GiB has a directory');
    assert.equal(tables[(2 + 3) * 512 + 511], 0xffe00000n | 0x83n, 'present, writable, 2 MiB, identity');
  });
});

describe('secret-tdx as assembled (objdump)', function () {
  let guest: AssembledGuest;
  let code: Instruction[];

  before(function () {
    requireBinutils.call(this);
    guest = assembleGuest('secret-tdx');
    code = [...routine(guest, 'start', 'shared_bit'), ...routine(guest, 'split_2m', 'split_table')];
  });

  it('is the binary the VMM loads, and a TD-only program', () => {
    assert.ok(builtGuest('secret-tdx').equals(guest.flat), 'dist/guest/secret-tdx.bin differs from guest/secret-tdx.s: run npm run build:guests');
    assert.equal(PROGRAM_HOSTS['secret-tdx'].vmType, 'tdx');
    assert.equal(PROGRAM_HOSTS['secret-tdx'].onSync, PROGRAM_HOSTS.secret.onSync, 'secret\'s host checks serve it');
  });

  it('executes nothing that would raise #VE: no port I/O, MSR access, CPUID, HLT, VMCALL', () => {
    assert.deepEqual(texts(code).filter((t) => EXITING.test(t)), []);
    assert.ok(code.length > 100, `the code disassembled (${code.length} instructions)`);
  });

  it('tdcall.inc uses the specifications\' numbers', () => {
    const inc = includeNumbers('tdcall.inc');
    assert.deepEqual(
      ['TDG_VP_VMCALL', 'TDG_VP_INFO', 'TDG_MEM_PAGE_ACCEPT', 'TDVMCALL_MAP_GPA', 'TDVMCALL_IO', 'TDVMCALL_EXPOSE'].map((name) => inc.get(name)),
      [BigInt(TDCALL_LEAF.vpVmcall), BigInt(TDCALL_LEAF.vpInfo), BigInt(TDCALL_LEAF.memPageAccept), TDVMCALL.mapGpa, TDVMCALL.instructionIo, 0xfc00n],
    );
    assert.equal(TDVMCALL.mapGpa, 0x10001n, 'GHCI: MapGPA');
    assert.equal(TDVMCALL.instructionIo, 30n, 'GHCI: Instruction.IO is EXIT_REASON_IO_INSTRUCTION');
  });

  it('every TDCALL is 66 0f 01 cc, each with its leaf in eax right before', () => {
    const calls = code.flatMap((i, n) => (i.text === 'tdcall' ? [[code[n - 1]!.text, i.bytes]] : []));
    assert.deepEqual(calls, [
      [`mov eax,0x${TDCALL_LEAF.vpInfo}`, [0x66, 0x0f, 0x01, 0xcc]],
      [`mov eax,0x${TDCALL_LEAF.memPageAccept}`, [0x66, 0x0f, 0x01, 0xcc]],
      ['xor eax,eax', [0x66, 0x0f, 0x01, 0xcc]],
    ]);
  });

  it('TDG.VP.VMCALL: standard (r10 0), R10..R15 exposed, status from RAX and R10', () => {
    assert.deepEqual(texts(routine(guest, 'td_vmcall', 'shared_bit')).slice(0, 6), ['xor r10d,r10d', 'mov ecx,0xfc00', 'xor eax,eax', 'tdcall', 'or rax,r10', 'ret']);
  });

  it('MapGPA: r11 0x10001, r12 the GPA (with the shared bit for shared), r13 one page', () => {
    assert.deepEqual(texts(routine(guest, 'map_gpa', 'td_check')).slice(0, 2), ['mov r13d,0x1000', 'mov r11d,0x10001']);
    const main = texts(routine(guest, 'start', 'map_gpa'));
    const mapCalls = main.flatMap((t, i) => (t === `call 0x${guest.labels.get('map_gpa')!.toString(16)}` ? [main.slice(i - 2, i)] : []));
    assert.deepEqual(mapCalls, [['call 0x' + guest.labels.get('split_2m')!.toString(16), 'mov r12,rbx'], ['mov r12,rbx', `or r12,QWORD PTR [rip+0x${(guest.labels.get('shared_bit')! - (routine(guest, 'start', 'map_gpa').find((i) => i.text.startsWith('or r12,'))!.offset + 7)).toString(16)}] # 0x${guest.labels.get('shared_bit')!.toString(16)}`]]);
  });

  it('Instruction.IO: r11 30, r12 the size, r13 1 (out), the port in r14 and the value in r15', () => {
    assert.deepEqual(texts(routine(guest, 'td_out32', 'td_vmcall')), ['mov r12d,0x4', 'mov r13d,0x1', 'mov r11d,0x1e']);
  });

  it('accepts the page it turns private (TDG.MEM.PAGE.ACCEPT, 4 KiB) before writing to it, and finds the shared bit from TDG.VP.INFO', () => {
    const main = texts(routine(guest, 'start', 'map_gpa'));
    const accept = main.indexOf(`mov eax,0x${TDCALL_LEAF.memPageAccept}`);
    assert.equal(main[accept - 1], 'mov rcx,rbx', 'RCX: the GPA, level 0 (4 KiB)');
    assert.ok(accept < main.indexOf('rep movs BYTE PTR es:[rdi],BYTE PTR ds:[rsi]'), main.join('; '));
    const info = main.indexOf(`mov eax,0x${TDCALL_LEAF.vpInfo}`);
    assert.deepEqual(main.slice(info + 2, info + 6), ['and ecx,0x3f', 'dec ecx', 'mov r8d,0x1', 'shl r8,cl'], 'the shared bit is GPAW - 1');
  });
});
