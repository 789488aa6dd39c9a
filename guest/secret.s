# secret: a private page keeps the guest's secret from the host and the device; a shared
# page carries the host's note to the guest and the guest's message to the device; once
# unplugged (virtio-mem), the page is given back and the device loses it until plugged again.
# Host side: lib/vmm/programs/secret.ts (its checks at sync 1 to 4, and the texts below).
.include "common.inc"
.globl start
start:
  mov r12, rdi
  mov r13, [r12 + BOOT_DATA_GPA]        # the page this program converts
  say hello

  mov r8, r13
  mov r9d, 1
  mov r10d, MAP_TO_PRIVATE
  call map_range
  test rax, rax
  mov edi, 1                            # check 1: the page turned private
  check edi

  lea rsi, [rip + secret]
  mov rdi, r13
  mov ecx, offset secret_length
  rep movsb
  lea rsi, [rip + secret]
  mov rdi, r13
  mov ecx, offset secret_length
  repe cmpsb
  mov edi, 2                            # check 2: the guest reads its secret back
  check edi

  sync 1                                # host: neither the memfd nor the device sees it

  mov r8, r13
  mov r9d, 1
  mov r10d, MAP_TO_SHARED
  call map_range
  test rax, rax
  mov edi, 3                            # check 3: the page turned shared
  check edi

  lea rsi, [rip + host_note]
  mov rdi, r13
  mov ecx, offset host_note_length
  repe cmpsb
  mov edi, 4                            # check 4: the guest reads what the host wrote
  check edi

  lea rsi, [rip + message]
  lea rdi, [r13 + 2048]
  mov ecx, offset message_length
  rep movsb

  sync 2                                # host: the device reads the message by DMA

  mov eax, PLUG_UNPLUG                  # virtio-mem's request: the shared page unplugged
  call ask_plug
  mov edi, 5                            # check 5: the host unplugged it
  check edi
  sync 3                                # host: the memfd gave it back, the device lost it

  mov eax, PLUG_PLUG
  call ask_plug
  mov edi, 6                            # check 6: the host plugged it back
  check edi
  sync 4                                # host: the device reaches it again
  say bye
  exit_with 0

text hello, "secret: converting a page private\n"
text bye, "secret: done\n"
.include "secret-texts.inc"

.include "routines.inc"
