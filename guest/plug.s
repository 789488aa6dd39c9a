# plug: the guest drives both discard sources of its data area: it converts the area with
# MAP_GPA_RANGE and asks the host to unplug and plug it through PORT_PLUG, as virtio-mem's
# driver asks through its queue; each answer (0, or a negative errno) is read back by IN.
# Host side: lib/vmm/programs/plug.ts (its checks at sync 1 to 4), lib/vmm/plug-port.ts.
.include "common.inc"
.globl start
start:
  mov r12, rdi
  mov r13, [r12 + BOOT_DATA_GPA]
  mov r14, [r12 + BOOT_DATA_PAGES]
  say hello

  mov r10d, MAP_TO_SHARED
  call convert
  mov edi, 1                            # check 1: the area turned shared
  check edi
  sync 1                                # host: the device reaches it

  mov eax, PLUG_UNPLUG
  call ask_plug
  mov edi, 2                            # check 2: the host unplugged it
  check edi
  sync 2                                # host: the device no longer reaches it

  mov r10d, MAP_TO_PRIVATE              # converting unplugged memory: KVM follows, no listener
  call convert
  mov edi, 3
  check edi
  mov r10d, MAP_TO_SHARED
  call convert
  mov edi, 4
  check edi
  mov eax, PLUG_PLUG
  call ask_plug
  mov edi, 5                            # check 5: the host plugged it back
  check edi
  sync 3                                # host: the device reaches it again

  mov r10d, MAP_TO_PRIVATE
  call convert
  mov edi, 6
  check edi
  mov eax, PLUG_UNPLUG
  call ask_plug
  mov edi, 7
  check edi
  mov eax, PLUG_PLUG
  call ask_plug
  mov edi, 8                            # check 8: a private area unplugged and plugged back
  check edi
  sync 4                                # host: the device does not reach the private area
  say bye
  exit_with 0

# The data area converted to r10 (attributes); ZF set when the host answered 0.
convert:
  mov r8, r13
  mov r9, r14
  call map_range
  test rax, rax
  ret

text hello, "plug: converting, unplugging and plugging the data area\n"
text bye, "plug: done\n"

.include "routines.inc"
