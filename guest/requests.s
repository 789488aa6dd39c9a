# requests: makes each MAP_GPA_RANGE request of the boot info's table, in order, and
# reports each result on PORT_VALUE: the host's tests choose good and bad requests and
# check what the guest was answered.
.include "common.inc"
.globl start
start:
  mov r12, rdi
  mov r13, [r12 + BOOT_REQUEST_COUNT]
  lea r14, [r12 + BOOT_REQUESTS]
1:
  test r13, r13
  jz 2f
  mov r8, [r14]
  mov r9, [r14 + 8]
  mov r10, [r14 + 16]
  call map_range
  out PORT_VALUE, eax
  add r14, 24
  dec r13
  jmp 1b
2:
  exit_with 0

.include "routines.inc"
