# misbehave: what a VMM must survive, chosen by the boot info's seed: 0 spins forever,
# 1 reads a non-canonical address with no IDT (#GP, #DF, a triple fault: KVM_EXIT_SHUTDOWN),
# 2 writes to a port nobody handles, 3 halts with interrupts off, 4 executes ud2 (KVM
# intercepts #UD to patch hypercall instructions; its emulator gives up: an internal error).
.include "common.inc"
.globl start
start:
  mov rax, [rdi + BOOT_SEED]
  cmp rax, 1
  je fault
  cmp rax, 2
  je stray
  cmp rax, 3
  je halt
  cmp rax, 4
  je undefined
spin:
  jmp spin
fault:
  movabs rax, 0x8000000000000000
  mov rax, [rax]
  jmp fault
stray:
  mov al, 0x42
  out 0x80, al
  jmp stray
halt:
  hlt
  jmp halt
undefined:
  ud2
