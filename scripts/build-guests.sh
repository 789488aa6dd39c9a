#!/usr/bin/env bash
# Assembles the guest programs (guest/*.s, GNU as from binutils) into flat binaries in
# dist/guest/, position-independent so that the VMM loop can load them at any address.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out="$root/dist/guest"
mkdir -p "$out"
# shellcheck disable=SC2015 # meant: the error runs when either tool is missing
command -v as >/dev/null && command -v ld >/dev/null || {
  echo "build-guests: GNU as and ld are missing; install: apt-get install binutils" >&2
  exit 2
}
for source in "$root"/guest/*.s; do
  name=$(basename "$source" .s)
  as --64 -I "$root/guest" -o "$out/$name.o" "$source"
  ld -m elf_x86_64 -nostdlib --oformat binary -Ttext 0 -e start -o "$out/$name.bin" "$out/$name.o"
  rm -f "$out/$name.o"
done
