# random: N random conversions of the data area (seed and N from the boot info), each
# followed, with FLAG_PATTERNS, by pattern writes and reads of the converted pages and a
# sync so the host can check the tracker, the listener and the memfd against its model.
# Step k's checks have ids 4k (the hypercall returned 0), 4k+1 (patterns read back) and
# 4k+2 (the host's word reached the guest through a page turned shared).
.include "common.inc"
.globl start
start:
  mov r12, rdi                          # boot info
  # Each vCPU its own stream: seed ^ (index + 1) * 2^64/phi, never zero.
  lea rax, [rsi + 1]
  mov rbx, 0x9e3779b97f4a7c15
  imul rax, rbx
  xor rax, [r12 + BOOT_SEED]
  jnz 1f
  mov eax, 1
1:
  mov r15, rax
  mov r13, 1                            # step

next_step:
  cmp r13, [r12 + BOOT_ITERATIONS]
  ja done
  # first page: r % pages
  call xorshift
  xor edx, edx
  div qword ptr [r12 + BOOT_DATA_PAGES]
  mov rbp, rdx
  # page count: 1 + r % min(max run, pages - first)
  mov rcx, [r12 + BOOT_DATA_PAGES]
  sub rcx, rbp
  mov rbx, [r12 + BOOT_MAX_RUN]
  cmp rcx, rbx
  cmova rcx, rbx
  mov r11, rcx
  call xorshift
  xor edx, edx
  div r11
  lea r9, [rdx + 1]
  # direction: the low bit of the next number
  call xorshift
  xor r10d, r10d
  test al, 1
  jz 2f
  mov r10d, MAP_TO_PRIVATE
2:
  mov r8, rbp
  shl r8, 12
  add r8, [r12 + BOOT_DATA_GPA]
  call map_range
  mov rsi, rax                          # the result, kept for below
  test rsi, rsi
  lea edi, [r13 * 4]
  check edi
  test rsi, rsi
  jnz sync_step
  test qword ptr [r12 + BOOT_FLAGS], FLAG_PATTERNS
  jz sync_step

  # Tag each page's first word with step << 32 | index, then read every tag back.
  mov rdi, r8
  mov rcx, r9
  mov rax, r13
  shl rax, 32
3:
  mov [rdi], rax
  inc rax
  add rdi, PAGE
  dec rcx
  jnz 3b
  mov rdi, r8
  mov rcx, r9
  mov rax, r13
  shl rax, 32
  xor ebx, ebx
4:
  cmp [rdi], rax
  setne dl
  movzx edx, dl
  add ebx, edx
  inc rax
  add rdi, PAGE
  dec rcx
  jnz 4b
  test ebx, ebx
  lea edi, [r13 * 4 + 1]
  check edi

sync_step:
  mov eax, r13d
  out PORT_SYNC, eax
  # After a shared conversion the host wrote ~(step << 32) at the first page's second word.
  test rsi, rsi
  jnz 5f
  test qword ptr [r12 + BOOT_FLAGS], FLAG_PATTERNS
  jz 5f
  test r10, r10
  jnz 5f
  mov rax, r13
  shl rax, 32
  not rax
  cmp [r8 + 8], rax
  lea edi, [r13 * 4 + 2]
  check edi
5:
  inc r13
  jmp next_step

done:
  exit_with 0

.include "routines.inc"
