# secret, as an SEV-SNP guest runs it: a private page keeps the guest's secret from the host;
# a shared page carries the host's note to the guest and the guest's message to the device.
# Host side: lib/vmm/programs/secret-snp.ts.
#
# An SNP guest cannot use port I/O or VMMCALL: each would raise #VC, whose handler must
# then speak the full GHCB page protocol. This program needs neither: it talks to the VMM
# only through the GHCB MSR protocol (ghcb.inc), as the kernel's sev_smoke_test guest does.
# Its conversions are page state change requests, one 4 KiB page each, which KVM hands to
# the VMM as the KVM_HC_MAP_GPA_RANGE exit the loop converts; the host's checks run there
# (the to-shared request is the program's "sync") and at the end. It ends with the
# termination request: reason set 0 code 0 when every check held, else TERM_SET_CHECK and
# the id of the first check that failed. Its #VC handler (vector 29) ends it with
# TERM_SET_VC and the exit code, so an exit it did not expect reads as one, not as a triple
# fault. Checks 1-4 are secret.s's; 5: the SEV info response (GHCB protocol 2 or later, the
# C-bit its page tables carry); 6, 7: PVALIDATE of the page, validating and rescinding.
.include "common.inc"
.include "ghcb.inc"
.globl start
start:
  mov r12, rdi
  mov r13, [r12 + BOOT_DATA_GPA]        # the page this program converts
  call install_vc_handler

  mov eax, GHCB_SEV_INFO_REQ
  call ghcb_call
  mov ecx, eax
  and ecx, GHCB_INFO_MASK
  cmp ecx, GHCB_SEV_INFO_RESP
  jne fail_5
  mov rcx, rax
  shr rcx, 48
  cmp ecx, GHCB_PROTOCOL_SNP
  jb fail_5
  mov ecx, eax
  shr ecx, 24
  and ecx, 0xff
  mov r14d, 1
  shl r14, cl                           # the C-bit, as the hypervisor reports it
  mov rax, cr3
  and rax, -PAGE
  test [rax], r14                       # and as the launch measured it into the tables
  jz fail_5

  # Private: ask, then validate (an unvalidated private page raises #VC on access).
  mov rax, r13
  mov r8, r14
  lea rdi, [rip + split_table]
  call split_2m
  mov rax, r13
  mov edx, GHCB_PSC_PRIVATE
  call page_state
  cmp rax, GHCB_PSC_RESP
  jne fail_1
  mov rax, r13
  mov edx, 1
  call pvalidate_page
  jnz fail_6

  lea rsi, [rip + secret]
  mov rdi, r13
  mov ecx, offset secret_length
  rep movsb
  lea rsi, [rip + secret]
  mov rdi, r13
  mov ecx, offset secret_length
  repe cmpsb
  jne fail_2

  # Shared: rescind the validation first (a validated page must not be handed back), ask,
  # then map the page without the C-bit. The host checks the memfd and writes its note while
  # it answers this request (lib/vmm/programs/secret-snp.ts).
  mov rax, r13
  xor edx, edx
  call pvalidate_page
  jnz fail_7
  mov rax, r13
  mov edx, GHCB_PSC_SHARED
  call page_state
  cmp rax, GHCB_PSC_RESP
  jne fail_3
  mov rax, r13
  xor edx, edx
  lea rdi, [rip + split_table]
  call map_page

  lea rsi, [rip + host_note]
  mov rdi, r13
  mov ecx, offset host_note_length
  repe cmpsb
  jne fail_4

  lea rsi, [rip + message]
  lea rdi, [r13 + 2048]
  mov ecx, offset message_length
  rep movsb
  terminate 0, 0                        # done: the host reads the message at the end

fail_1: terminate TERM_SET_CHECK, 1
fail_2: terminate TERM_SET_CHECK, 2
fail_3: terminate TERM_SET_CHECK, 3
fail_4: terminate TERM_SET_CHECK, 4
fail_5: terminate TERM_SET_CHECK, 5
fail_6: terminate TERM_SET_CHECK, 6
fail_7: terminate TERM_SET_CHECK, 7

# rax = the hypervisor's answer to the GHCB MSR request in rax. Clobbers rcx, rdx.
ghcb_call:
  mov rdx, rax
  shr rdx, 32
  mov ecx, MSR_GHCB
  wrmsr
  vmgexit_bytes
  rdmsr
  shl rdx, 32
  mov eax, eax
  or rax, rdx
  ret

# rax = the answer to a page state change of the page at rax to operation edx (1 private,
# 2 shared). Clobbers rcx, rdx.
page_state:
  shr rax, 12
  shl rax, 12                           # GFN << 12: bits 51:12
  shl rdx, GHCB_PSC_OP_SHIFT
  or rax, rdx
  or rax, GHCB_PSC_REQ
  jmp ghcb_call

# PVALIDATE of the 4 KiB page at rax: validate (edx 1) or rescind (edx 0). ZF set when it
# succeeded and changed the RMP (eax 0, CF clear). Clobbers rax, rcx.
pvalidate_page:
  xor ecx, ecx                          # 4 KiB
  pvalidate_bytes
  jc 1f
  test eax, eax
  ret
1:
  or eax, 1                             # CF: no RMP update; ZF cleared
  ret

# A GDT whose selector 0x08 is the VMM's 64-bit code segment (a #VC reloads CS from it), and
# an IDT whose only gate is #VC's. Clobbers rax, rcx, rdx.
install_vc_handler:
  lea rax, [rip + gdt]
  mov [rip + gdt_base], rax
  lgdt [rip + gdt_pointer]
  lea rax, [rip + vc_handler]
  lea rdx, [rip + idt + X86_TRAP_VC * 16]
  mov [rdx], ax                         # offset 15:0
  mov word ptr [rdx + 2], 0x08          # selector
  mov word ptr [rdx + 4], 0x8e00        # present, DPL 0, 64-bit interrupt gate
  shr rax, 16
  mov [rdx + 6], ax                     # offset 31:16
  shr rax, 16
  mov [rdx + 8], eax                    # offset 63:32
  lea rax, [rip + idt]
  mov [rip + idt_base], rax
  lidt [rip + idt_pointer]
  ret

# #VC: its error code is the exit the instruction would have made. The program makes none.
vc_handler:
  mov rcx, [rsp]
  mov eax, 0xff
  cmp rcx, rax
  cmovb eax, ecx
  mov ecx, eax
  terminate TERM_SET_VC, ecx

.balign 8
gdt:
.include "gdt64.inc"
gdt_end:
gdt_pointer:
  .word gdt_end - gdt - 1
gdt_base:
  .quad 0
.balign 8
idt_pointer:
  .word (X86_TRAP_VC + 1) * 16 - 1
idt_base:
  .quad 0
.balign 16
idt:
  .skip (X86_TRAP_VC + 1) * 16

.include "secret-texts.inc"

.include "page-split.inc"

# The 4 KiB table that split_2m fills: inside the image, so private and validated at launch.
.balign 4096
split_table:
  .skip 4096
