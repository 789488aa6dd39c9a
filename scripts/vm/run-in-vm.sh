#!/usr/bin/env bash
# Boots the harness kernel under QEMU (software emulation: an AMD CPU with SVM so that
# kvm_amd gives /dev/kvm, q35 with an emulated Intel IOMMU, edu devices bound to vfio-pci)
# and runs a command inside it, in the host's root filesystem and this working directory.
# Streams the command's output and exits with its status; 2 for bad usage or a missing
# tool, 3 for a harness failure (guest panic, timeout, no status).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/../.." && pwd)

memory=2G
edu=1
smp=1
clock=real
timeout=${GUESTMEM_VM_TIMEOUT:-1200}
kernel_log=

usage() {
  cat >&2 <<USAGE
usage: run-in-vm.sh [--kernel 6.12|7.2] [--memory SIZE] [--edu N] [--timeout SECONDS] [--kernel-log FILE] -- COMMAND [ARGS...]
  Runs COMMAND inside the guestmem harness VM, from the current directory.
  --kernel      which harness kernel boots (default \$GUESTMEM_KERNEL or 6.12)
  --memory      guest memory (default 2G)
  --edu         number of edu DMA devices (default 1)
  --timeout     give up after this many seconds (default \$GUESTMEM_VM_TIMEOUT or 1200)
  --kernel-log  keep the kernel's console and QEMU's messages in FILE
  --smp         emulated CPUs (default 1; the host's cores are what MTTCG can use)
  --clock       real (default) or instructions: guest time counts emulated instructions
                (QEMU -icount), so timings inside do not depend on the host's load
USAGE
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) export GUESTMEM_KERNEL=${2:?}; shift 2 ;;
    --memory) memory=${2:?}; shift 2 ;;
    --edu) edu=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --kernel-log) kernel_log=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --clock) clock=${2:?}; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || usage
[[ "$edu" =~ ^[0-9]+$ ]] || { echo "run-in-vm: --edu takes a number, got '$edu'" >&2; exit 2; }
[[ "$timeout" =~ ^[0-9]+$ ]] || { echo "run-in-vm: --timeout takes seconds, got '$timeout'" >&2; exit 2; }
[[ "$smp" =~ ^[1-8]$ ]] || { echo "run-in-vm: --smp takes 1 to 8, got '$smp'" >&2; exit 2; }
case "$clock" in
  real) clock_args=() ;;
  # One emulated instruction = 2^0 ns of guest time; sleep=off keeps idle time from counting.
  instructions) clock_args=(-icount shift=0,sleep=off) ;;
  *) echo "run-in-vm: --clock takes real or instructions, got '$clock'" >&2; exit 2 ;;
esac

need() {
  echo "run-in-vm: $1 is missing; install the harness's packages: apt-get install $(tr '\n' ' ' <"$here/run-packages.txt")" >&2
  exit 2
}
command -v qemu-system-x86_64 >/dev/null || need qemu-system-x86_64
busybox=$(command -v busybox || true)
[ -n "$busybox" ] && file_is_static=$(ldd "$busybox" 2>&1 | grep -c 'not a dynamic' || true)
[ -n "$busybox" ] && [ "${file_is_static:-0}" -gt 0 ] || need "a static busybox"

kernel=$("$here/build-kernel.sh")
source=$(cat "$(dirname "$kernel")/source" 2>/dev/null || echo "${GUESTMEM_KERNEL:-6.12}")

# One harness VM at a time on this machine (2 cores; TCG takes one whole): a second run
# waits here for the first to power off.
lock=${GUESTMEM_VM_LOCK:-${TMPDIR:-/tmp}/guestmem-vm.lock}
exec 8>"$lock"
if ! flock -n 8; then
  echo "run-in-vm: another harness VM is running; waiting for it ($lock)" >&2
  flock 8
fi

run=$(mktemp -d "${TMPDIR:-/tmp}/guestmem-vm.XXXXXX")
trap 'rm -rf "$run"' EXIT

# The command, as a script the guest runs in a chroot of the host's root. Its stdout and
# stderr reach ours on their own serial ports, apart from the kernel's console. They are
# terminals in the guest: where ours are not, pipe through cat so that the command sees
# pipes too (no colours, no progress bars).
{
  echo "cd $(printf %q "$PWD") || exit 125"
  echo "export HOME=/tmp PATH=$(printf %q "$PATH") GUESTMEM_IN_VM=1"
  env | grep -E '^(GUESTMEM_|MOCHA_|CI=|NO_COLOR=|FORCE_COLOR=|NODE_OPTIONS=|TERM=)' | grep -v '^GUESTMEM_IN_VM=' | while IFS= read -r line; do
    echo "export $(printf %q "$line")"
  done || true
  if [ -t 1 ]; then
    printf 'exec'
    printf ' %q' "$@"
    echo
  else
    printf '%q ' "$@"
    echo '2> >(cat >&2) | cat'
    echo 'exit ${PIPESTATUS[0]}'
  fi
} >"$run/command.sh"

mkdir -p "$run/initramfs/bin" "$run/initramfs/proc" "$run/initramfs/sys" "$run/initramfs/dev"
cp "$busybox" "$run/initramfs/bin/busybox"
cp "$here/init.sh" "$run/initramfs/init"
chmod +x "$run/initramfs/init"
(cd "$run/initramfs" && find . | cpio -o -H newc --quiet) >"$run/initramfs.cpio"

devices=()
for _ in $(seq 1 "$edu"); do devices+=(-device edu); done

# Serial ports: ttyS0 the kernel's console (to a file), ttyS1 the command's stdout (ours),
# ttyS2 its stderr (a FIFO that cat copies to ours).
console="$run/kernel.log"
mkfifo "$run/stderr.fifo"
cat "$run/stderr.fifo" >&2 &
stderr_copier=$!
set +e
timeout --kill-after=10 "$timeout" qemu-system-x86_64 \
  -accel tcg -cpu EPYC -smp "$smp" "${clock_args[@]}" -m "$memory" \
  -machine q35,kernel-irqchip=split \
  -device intel-iommu,intremap=on,caching-mode=on \
  "${devices[@]}" \
  -kernel "$kernel" -initrd "$run/initramfs.cpio" \
  -append "console=ttyS0 intel_iommu=on panic=-1 guestmem.run=$run guestmem.project=$project" \
  -fsdev local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap \
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
  -fsdev local,id=project,path="$project",security_model=none,multidevs=remap \
  -device virtio-9p-pci,fsdev=project,mount_tag=project \
  -fsdev local,id=run,path="$run",security_model=none \
  -device virtio-9p-pci,fsdev=run,mount_tag=run \
  -nodefaults -display none -no-reboot \
  -chardev file,id=kernel,path="$console" -serial chardev:kernel \
  -chardev stdio,id=stdout,signal=on -serial chardev:stdout \
  -chardev file,id=stderr,path="$run/stderr.fifo" -serial chardev:stderr \
  </dev/null 2>"$run/qemu.log"
qemu_status=$?
set -e
wait "$stderr_copier" 2>/dev/null || true

# QEMU's own messages (its emulated IOMMU reports every DMA it blocks) are kept with the
# kernel's, not mixed into the command's output.
grep -v "TCG doesn't support requested feature" "$run/qemu.log" >>"$console" || true
[ -z "$kernel_log" ] || cp "$console" "$kernel_log"
# Which kernel really ran, in the caller's log (CI runs the suites on several).
booted=$(grep -m1 -o 'Linux version [^ ]*' "$console" || true)
echo "run-in-vm: harness kernel $source: ${booted:-no version line on the console}" >&2

fail() {
  echo "run-in-vm: $1; the last lines of the kernel console and QEMU:" >&2
  tail -n 25 "$console" | sed 's/^/  | /' >&2
  exit 3
}
if [ "$qemu_status" -eq 124 ] || [ "$qemu_status" -eq 137 ]; then
  fail "the VM did not finish within $timeout s and was killed (raise --timeout or GUESTMEM_VM_TIMEOUT)"
fi
if [ ! -s "$run/status" ]; then
  if grep -q 'Kernel panic' "$console"; then fail "the guest kernel panicked"; fi
  fail "the guest stopped without reporting the command's status (QEMU exit $qemu_status)"
fi
exit "$(cat "$run/status")"
