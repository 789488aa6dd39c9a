# loop: N x (private, shared) of one 4 KiB page, for the benchmark; exits 1 at the first
# conversion that fails.
.include "common.inc"
.globl start
start:
  mov r12, rdi
  mov r13, [r12 + BOOT_ITERATIONS]
  mov r8, [r12 + BOOT_DATA_GPA]
  mov r9d, 1
  test r13, r13
  jz done
1:
  mov r10d, MAP_TO_PRIVATE
  call map_range
  test rax, rax
  jnz failed
  mov r10d, MAP_TO_SHARED
  call map_range
  test rax, rax
  jnz failed
  dec r13
  jnz 1b
done:
  exit_with 0
failed:
  exit_with 1

.include "routines.inc"
