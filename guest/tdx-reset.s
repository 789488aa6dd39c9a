# The page a TD starts in: the last 4 KiB below 4 GiB, whose last 16 bytes hold the reset
# vector (0xfffffff0), where the TDX module starts every vCPU: 32-bit protected mode with
# flat segments, paging off (CR0 0x21, CR4 0x2040, EFER 0x901: LME set; the TDX module's
# td_vmcs_init.c), ESI = the vCPU's index, RCX = what KVM_TDX_INIT_VCPU gave (tdh_vp_init.c;
# the kernel's TDX selftests' td_boot relies on the same). It does what td_boot does with its boot
# parameters: loads a GDT, CR4, CR3 and CR0 (EFER.LME is already set in a TD, so paging on
# is long mode), far-jumps to 64-bit code, and enters the program as the VMM's long-mode
# entry would (common.inc: rdi boot info, rsi index, rdx count, rsp this vCPU's stack).
# The VMM (lib/vmm/tdx-reset-page.ts) writes the parameters at PARAMS before the launch
# measures the page; the identity map must reach this page, so that the instruction after
# the write to CR0 is fetched through it.
.intel_syntax noprefix
.set RESET_PAGE, 0xfffff000
.set PARAMS, 0xf00
.set PARAM_CR3, PARAMS + 0x00        # the PML4 (below 4 GiB: 32-bit code loads it)
.set PARAM_ENTRY, PARAMS + 0x08      # the program's first instruction
.set PARAM_STACKS, PARAMS + 0x10     # vCPU i's stack ends at stacks + (i + 1) * stack size
.set PARAM_STACK_SIZE, PARAMS + 0x18
.set PARAM_VCPUS, PARAMS + 0x20
.set PARAM_BOOT_INFO, PARAMS + 0x28
.set CR0_LONG_MODE, 0x80010033       # PG WP NE ET MP PE
.set CR4_LONG_MODE, 0x660            # OSXMMEXCPT OSFXSR MCE (fixed to 1 in a TD) PAE

.code32
.globl start
start:
  lgdt [RESET_PAGE + gdt_pointer]
  mov eax, 0x10
  mov ds, eax
  mov es, eax
  mov ss, eax
  mov eax, CR4_LONG_MODE
  mov cr4, eax
  mov eax, [RESET_PAGE + PARAM_CR3]
  mov cr3, eax
  mov eax, CR0_LONG_MODE
  mov cr0, eax
  .byte 0xea                           # ljmp 0x08:long_mode
  .long RESET_PAGE + long_mode
  .word 0x08

.code64
long_mode:
  mov esi, esi                         # the vCPU's index, zero-extended
  mov ebx, RESET_PAGE
  lea rax, [rsi + 1]
  imul rax, [rbx + PARAM_STACK_SIZE]
  add rax, [rbx + PARAM_STACKS]
  mov rsp, rax
  mov rdx, [rbx + PARAM_VCPUS]
  mov rdi, [rbx + PARAM_BOOT_INFO]
  jmp [rbx + PARAM_ENTRY]

.balign 8
gdt:
.include "gdt64.inc"
gdt_end:
gdt_pointer:
  .word gdt_end - gdt - 1
  .long RESET_PAGE + gdt

.org PARAMS, 0
  .skip 0x30                           # the VMM's parameters

.org 0xff0, 0xcc
.code32
reset_vector:
  jmp start
.org 0x1000, 0xcc
