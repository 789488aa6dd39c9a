# secret, as a TD runs it: a private page keeps the guest's secret from the host and the
# device; a shared page carries the host's note to the guest and the guest's message to the
# device. Host side: lib/vmm/programs/secret.ts, unchanged: the TD reaches the same ports.
#
# Entered from the reset page (tdx-reset.s) in long mode. A TD's port I/O would raise #VE;
# it asks the VMM instead with TDG.VP.VMCALL<Instruction.IO>, which KVM hands to the VMM as
# the KVM_EXIT_IO the loop's ports answer, so the checks, syncs and exit of secret.s work
# as they are. Conversions are TDG.VP.VMCALL<MapGPA> (KVM_HC_MAP_GPA_RANGE to the VMM),
# the shared one naming the page by its shared alias (GPA | the shared bit, which
# TDG.VP.INFO's GPA width gives); a page turned private is accepted (TDG.MEM.PAGE.ACCEPT)
# before use. Checks 1-4 are secret.s's; 5: TDG.MEM.PAGE.ACCEPT of the page.
.include "common.inc"
.include "tdcall.inc"
.globl start
start:
  mov rbp, rdi                          # boot info; TDVMCALLs clobber R10..R15 only
  mov rbx, [rbp + BOOT_DATA_GPA]        # the page this program converts
  lea rsi, [rip + hello]
  mov ecx, offset hello_length
  call td_print

  mov eax, TDG_VP_INFO
  tdcall_bytes
  and ecx, 0x3f
  dec ecx
  mov r8d, 1
  shl r8, cl                            # the shared bit
  mov [rip + shared_bit], r8

  mov rax, rbx
  xor r8d, r8d                          # a TD's private entries carry no extra bit
  lea rdi, [rip + split_table]
  call split_2m

  mov r12, rbx
  call map_gpa
  mov edi, 1                            # check 1: the page turned private
  call td_check
  mov rcx, rbx                          # 4 KiB
  mov eax, TDG_MEM_PAGE_ACCEPT
  tdcall_bytes
  test rax, rax
  mov edi, 5                            # check 5: the TD accepted the page
  call td_check

  lea rsi, [rip + secret]
  mov rdi, rbx
  mov ecx, offset secret_length
  rep movsb
  lea rsi, [rip + secret]
  mov rdi, rbx
  mov ecx, offset secret_length
  repe cmpsb
  mov edi, 2                            # check 2: the guest reads its secret back
  call td_check

  mov edi, 1
  call td_sync                          # host: neither the memfd nor the device sees it

  mov r12, rbx
  or r12, [rip + shared_bit]
  call map_gpa
  mov edi, 3                            # check 3: the page turned shared
  call td_check
  mov rax, rbx
  mov rdx, [rip + shared_bit]
  lea rdi, [rip + split_table]
  call map_page                         # reach it through its shared alias

  lea rsi, [rip + host_note]
  mov rdi, rbx
  mov ecx, offset host_note_length
  repe cmpsb
  mov edi, 4                            # check 4: the guest reads what the host wrote
  call td_check

  lea rsi, [rip + message]
  lea rdi, [rbx + 2048]
  mov ecx, offset message_length
  rep movsb

  mov edi, 2
  call td_sync                          # host: the device reads the message by DMA
  lea rsi, [rip + bye]
  mov ecx, offset bye_length
  call td_print
  xor r15d, r15d
  mov r14d, PORT_EXIT
  call td_out32
  # The host stops this vCPU at the exit port. No HLT: in a TD it would raise #VE.
9:
  pause
  jmp 9b

# MapGPA of the page at r12 (its shared alias for shared); ZF set when the TDCALL and the
# VMM both answered success. Clobbers rax, rcx, r10..r13.
map_gpa:
  mov r13d, PAGE
  mov r11d, TDVMCALL_MAP_GPA
  jmp td_vmcall

# Reports check edi: passed if ZF is set. Clobbers rax, rcx, r10..r15.
td_check:
  setnz al
  movzx eax, al
  shl eax, 31
  or eax, edi
  mov r15d, eax
  mov r14d, PORT_CHECK
  jmp td_out32

# Sync step edi: the host checks, then resumes us. Clobbers rax, rcx, r10..r15.
td_sync:
  mov r15d, edi
  mov r14d, PORT_SYNC
  jmp td_out32

# Writes rcx bytes from rsi to the console. Clobbers rax, rsi, r10..r15.
td_print:
  test ecx, ecx
  jz 1f
  push rcx
  movzx r15d, byte ptr [rsi]
  mov r14d, PORT_CONSOLE
  mov r12d, 1
  call td_out
  pop rcx
  inc rsi
  dec ecx
  jmp td_print
1:
  ret

# out r14 (port), r15 (value) through TDG.VP.VMCALL<Instruction.IO>: 32 bits (td_out32) or
# r12 bytes (td_out). Clobbers rax, rcx, r10..r13.
td_out32:
  mov r12d, 4
td_out:
  mov r13d, 1                           # a write
  mov r11d, TDVMCALL_IO
# TDG.VP.VMCALL of sub-function r11; ZF set when the TDCALL and the VMM both answered
# success (RAX and R10 zero). Clobbers rax, rcx, r10.
td_vmcall:
  xor r10d, r10d                        # a standard TDVMCALL
  mov ecx, TDVMCALL_EXPOSE
  xor eax, eax
  tdcall_bytes
  or rax, r10
  ret

.balign 8
shared_bit: .quad 0
text hello, "secret (TD): converting a page private\n"
text bye, "secret (TD): done\n"
.include "secret-texts.inc"

.include "page-split.inc"

# The 4 KiB table that split_2m fills: inside the image, so private and accepted at launch.
.balign 4096
split_table:
  .skip 4096
