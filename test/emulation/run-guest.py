#!/usr/bin/python3
# Runs secret-snp or secret-tdx under an x86 emulator (unicorn, QEMU's TCG; Debian's
# python3-unicorn) with the boot region GuestVm.create would measure (built by the caller,
# test/unit/guest-emulation.test.ts, with the project's own code), and answers what the
# guest asks as KVM and the VMM would: the GHCB MSR protocol, VMGEXIT and PVALIDATE for SNP;
# TDCALL (TDG.VP.INFO, TDG.MEM.PAGE.ACCEPT, TDG.VP.VMCALL MapGPA and Instruction.IO) for a
# TD. Prints one JSON object: the requests in order, and the page tables the guest left.
#
# TCG ignores neither the C-bit nor the shared bit in a page walk, but drops them from data
# accesses, so private and shared memory are one here (the memory is mapped again at the
# bit's alias for the walker): what this proves is the guest's protocol traffic and page
# tables, not the hardware's separation. unicorn's 32-bit CPU model lacks long mode, so a
# TD starts where its 32-bit trampoline lands (the trampoline is checked by objdump), with
# the control registers it loads.
import ctypes
import json
import struct
import sys

from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_64, UC_PROT_ALL, Uc, UcError
from unicorn import x86_const as X

SIZE = 32 << 20
ADDRESS = 0x000ffffffffff000
TERM_STOP = 'stop'


def main():
    kind, layout_file = sys.argv[1], sys.argv[2]
    layout = json.load(open(layout_file))
    refuse = layout.get('refuse')  # a conversion the VMM refuses: 'private' or 'shared'
    mem = ctypes.create_string_buffer(SIZE)
    region = bytes.fromhex(layout['region'])
    ctypes.memmove(ctypes.addressof(mem) + layout['bootGpa'], region, len(region))
    bit = 1 << layout['bit']  # SNP's C-bit, or a TD's shared bit (its GPA width - 1)
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map_ptr(0, SIZE, UC_PROT_ALL, ctypes.addressof(mem))
    uc.mem_map_ptr(bit, SIZE, UC_PROT_ALL, ctypes.addressof(mem))
    events = []
    data = layout['dataGpa']
    note = layout['note'].encode('latin1')

    def q(address):
        return struct.unpack_from('<Q', mem, address)[0]

    def tables(cr3, private_bit):
        # The data page's translation: its directory entry, its entry, and whether the other
        # 511 entries of its table still map their own pages privately (A/D bits aside).
        mask = ADDRESS & ~private_bit
        e = q((cr3 & mask) + 8 * ((data >> 39) & 511))
        e = q((e & mask) + 8 * ((data >> 30) & 511))
        pde = q((e & mask) + 8 * ((data >> 21) & 511))
        if pde & 0x80:
            return {'pde': pde, 'split': False}
        table = pde & mask
        own = (data >> 12) & 511
        base = data & ~0x1fffff
        others = all((q(table + 8 * i) & ~0x60) == (base + i * 4096) | private_bit | 3 for i in range(512) if i != own)
        return {'pde': pde, 'split': True, 'pte': q(table + 8 * own), 'othersPrivate': others}

    if kind == 'snp':
        cr3 = layout['pageTables']
        uc.reg_write(X.UC_X86_REG_CR3, cr3)
        uc.reg_write(X.UC_X86_REG_CR4, 0x20)
        uc.msr_write(0xC0000080, 0x500)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80010033)
        uc.reg_write(X.UC_X86_REG_RSP, layout['rsp'])
        uc.reg_write(X.UC_X86_REG_RDI, layout['bootInfo'])
        start = layout['entry']
        msr = [0]

        def vmgexit():
            value = msr[0]
            info = value & 0xfff
            if info == 0x002:
                events.append({'request': 'sev-info', 'msr': hex(value)})
                msr[0] = (2 << 48) | (1 << 32) | (layout['bit'] << 24) | 0x001
            elif info == 0x014:
                op = (value >> 52) & 0xf
                gpa = ((value >> 12) & ((1 << 40) - 1)) << 12
                to = {1: 'private', 2: 'shared'}.get(op, op)
                events.append({'request': 'page-state', 'msr': hex(value), 'gpa': gpa, 'to': to, 'tables': tables(cr3, bit)})
                if to == 'shared':
                    ctypes.memmove(ctypes.addressof(mem) + gpa, note, len(note))
                msr[0] = (1 << 63) | 0x015 if refuse == to else 0x015
            elif info == 0x100:
                events.append({'request': 'terminate', 'msr': hex(value), 'set': (value >> 12) & 0xf, 'code': (value >> 16) & 0xff, 'tables': tables(cr3, bit)})
                return TERM_STOP
            else:
                events.append({'request': 'unknown', 'msr': hex(value)})

        def hook(uc, address, size, _):
            code = bytes(uc.mem_read(address, 4))
            if code[:2] == b'\x0f\x30':  # wrmsr
                if uc.reg_read(X.UC_X86_REG_ECX) != 0xc0010130:
                    events.append({'request': 'wrmsr', 'msr': hex(uc.reg_read(X.UC_X86_REG_ECX))})
                msr[0] = (uc.reg_read(X.UC_X86_REG_RDX) << 32) | (uc.reg_read(X.UC_X86_REG_RAX) & 0xffffffff)
                uc.reg_write(X.UC_X86_REG_RIP, address + 2)
            elif code[:2] == b'\x0f\x32':  # rdmsr
                uc.reg_write(X.UC_X86_REG_RAX, msr[0] & 0xffffffff)
                uc.reg_write(X.UC_X86_REG_RDX, msr[0] >> 32)
                uc.reg_write(X.UC_X86_REG_RIP, address + 2)
            elif code == b'\xf3\x0f\x01\xd9':  # VMGEXIT
                if vmgexit() == TERM_STOP:
                    uc.emu_stop()
                uc.reg_write(X.UC_X86_REG_RIP, address + 4)
            elif code == b'\xf2\x0f\x01\xff':  # PVALIDATE
                events.append({'request': 'pvalidate', 'va': uc.reg_read(X.UC_X86_REG_RAX), 'size': uc.reg_read(X.UC_X86_REG_RCX), 'validate': uc.reg_read(X.UC_X86_REG_RDX) & 0xffffffff, 'tables': tables(cr3, bit)})
                uc.reg_write(X.UC_X86_REG_RAX, 0)
                uc.reg_write(X.UC_X86_REG_EFLAGS, uc.reg_read(X.UC_X86_REG_EFLAGS) & ~1)
                uc.reg_write(X.UC_X86_REG_RIP, address + 4)
    else:
        reset = ctypes.create_string_buffer(bytes.fromhex(layout['reset']), 4096)
        uc.mem_map_ptr(0xfffff000, 4096, UC_PROT_ALL, ctypes.addressof(reset))
        cr3 = struct.unpack_from('<Q', reset, 0xf00)[0]
        uc.reg_write(X.UC_X86_REG_CR3, cr3)
        uc.reg_write(X.UC_X86_REG_CR4, 0x660)
        uc.msr_write(0xC0000080, 0xd01)
        uc.reg_write(X.UC_X86_REG_CR0, 0x80010033)
        uc.reg_write(X.UC_X86_REG_RSI, 0)  # vCPU 0, as the TDX module leaves ESI
        start = 0xfffff000 + layout['longMode']
        entered = [False]

        def tdcall():
            leaf = uc.reg_read(X.UC_X86_REG_RAX)
            if leaf == 1:
                uc.reg_write(X.UC_X86_REG_RCX, layout['bit'] + 1)
                events.append({'request': 'vp-info'})
            elif leaf == 6:
                events.append({'request': 'accept', 'rcx': uc.reg_read(X.UC_X86_REG_RCX)})
            elif leaf == 0:
                regs = {name: uc.reg_read(getattr(X, f'UC_X86_REG_{name.upper()}')) for name in ('rcx', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15')}
                status = 0
                if regs['r11'] == 0x10001:
                    to = 'shared' if regs['r12'] & bit else 'private'
                    events.append({'request': 'map-gpa', 'gpa': regs['r12'], 'size': regs['r13'], 'to': to, 'expose': regs['rcx'], 'standard': regs['r10'] == 0})
                    if to == 'shared' and refuse != to:
                        ctypes.memmove(ctypes.addressof(mem) + (regs['r12'] & ~bit), note, len(note))
                    status = 0x8000000000000000 if refuse == to else 0
                elif regs['r11'] == 30:
                    events.append({'request': 'io', 'size': regs['r12'], 'out': regs['r13'], 'port': regs['r14'], 'value': regs['r15'], 'expose': regs['rcx']})
                    if regs['r14'] == 0xeb:
                        events.append({'request': 'exit', 'tables': tables(cr3, 0)})
                        return TERM_STOP
                else:
                    events.append({'request': 'tdvmcall', 'r11': regs['r11']})
                uc.reg_write(X.UC_X86_REG_R10, status)
            uc.reg_write(X.UC_X86_REG_RAX, 0)

        def hook(uc, address, size, _):
            if address == layout['entry'] and not entered[0]:
                entered[0] = True
                events.append({'request': 'entry', **{name: uc.reg_read(getattr(X, f'UC_X86_REG_{name.upper()}')) for name in ('rdi', 'rsi', 'rdx', 'rsp')}})
            if bytes(uc.mem_read(address, 4)) == b'\x66\x0f\x01\xcc':
                if tdcall() == TERM_STOP:
                    uc.emu_stop()
                uc.reg_write(X.UC_X86_REG_RIP, address + 4)

    # A hook on each place an instruction the emulator must answer may start (a Python call
    # per instruction would take a minute): where its bytes stand in the boot region.
    patterns = [b'\x0f\x30', b'\x0f\x32', b'\xf3\x0f\x01\xd9', b'\xf2\x0f\x01\xff'] if kind == 'snp' else [b'\x66\x0f\x01\xcc']
    places = {layout['entry']}
    for pattern in patterns:
        at = region.find(pattern)
        while at >= 0:
            places.add(layout['bootGpa'] + at)
            at = region.find(pattern, at + 1)
    for place in places:
        uc.hook_add(UC_HOOK_CODE, hook, begin=place, end=place)
    error = None
    try:
        uc.emu_start(start, 0, count=5_000_000)
    except UcError as e:
        error = f'{e} at 0x{uc.reg_read(X.UC_X86_REG_RIP):x}'
    message = ctypes.string_at(ctypes.addressof(mem) + data + 2048, len(layout['message']))
    print(json.dumps({'events': events, 'error': error, 'message': message.decode('latin1')}))


main()
