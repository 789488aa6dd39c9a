# misbehave: what a VMM must survive, chosen by the boot info's seed: 0 spins forever,
# 1 executes ud2 with no IDT (a triple fault: KVM_EXIT_SHUTDOWN), 2 writes to a port
# nobody handles, 3 halts with interrupts off.
.include "common.inc"
.globl start
start:
  mov rax, [rdi + BOOT_SEED]
  cmp rax, 1
  je crash
  cmp rax, 2
  je stray
  cmp rax, 3
  je halt
spin:
  jmp spin
crash:
  ud2
stray:
  mov al, 0x42
  out 0x80, al
  jmp stray
halt:
  hlt
  jmp halt
