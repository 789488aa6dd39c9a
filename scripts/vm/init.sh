#!/bin/busybox sh
# shellcheck shell=dash # busybox ash: shellcheck has no ash mode, dash is the nearest
# PID 1 of the harness VM: mount what Node needs, share in the host's root (read-only),
# the project and the run directory (read-write), bind every edu device to vfio-pci, run
# the host's command in a chroot of the host's root, record its exit status, power off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

# shellcheck disable=SC2013 # the kernel command line is one line of space-separated words
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    guestmem.run=*) run=${arg#guestmem.run=} ;;
    guestmem.project=*) project=${arg#guestmem.project=} ;;
  esac
done

say() { echo "guestmem-vm: $*" >/dev/console; }
ninep="trans=virtio,version=9p2000.L,msize=512000,cache=loose"

mkdir -p /host
mount -t 9p -o "$ninep,ro" hostroot /host || { say "cannot mount the host root over 9p"; poweroff -f; }
mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
# devtmpfs has no /dev/fd: bash's process substitution needs it.
ln -sf /proc/self/fd /host/dev/fd
mount -t tmpfs tmp /host/tmp
# The run directory and the project may live under /tmp, which the tmpfs just hid: make
# their mount points again (elsewhere they exist already in the read-only host root).
mkdir -p "/host$run" "/host$project" "/host/dev/shm" 2>/dev/null
mount -t tmpfs shm /host/dev/shm
mount -t 9p -o "$ninep" run "/host$run" || { say "cannot mount the run directory"; poweroff -f; }
# The project is shared without a cache: the host may rebuild between runs, the guest
# must see its files as they are.
mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000" project "/host$project" || { say "cannot mount the project"; poweroff -f; }

# QEMU's edu device (1234:11e8) is our DMA-capable device: hand it to vfio-pci.
for dev in /sys/bus/pci/devices/*; do
  if [ "$(cat "$dev/vendor")" = 0x1234 ] && [ "$(cat "$dev/device")" = 0x11e8 ]; then
    echo vfio-pci >"$dev/driver_override"
    echo "${dev##*/}" >/sys/bus/pci/drivers_probe
  fi
done

# ttyS1 and ttyS2 carry the command's stdout and stderr to the host, byte for byte.
stty -F /dev/ttyS1 raw -echo
stty -F /dev/ttyS2 raw -echo
chroot /host /bin/bash "$run/command.sh" </dev/null >/dev/ttyS1 2>/dev/ttyS2
echo $? >"/host$run/status"
sync
poweroff -f
