#!/usr/bin/env bash
# Builds the harness kernel from Debian's linux-source-6.12 into a cache outside the
# checkout, keyed by the config fragment and the source package version, so a machine
# builds it once and every clone (CI's fresh one included) reuses it.
# Prints the bzImage path on stdout; progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/kernel.config"
tarball=/usr/src/linux-source-6.12.tar.xz

fail() { echo "guestmem kernel build: $*" >&2; exit 2; }

[ -r "$tarball" ] || fail "no $tarball; install it: apt-get install linux-source-6.12 (and: $(cat "$here/build-packages.txt" | tr '\n' ' '))"
for tool in make gcc flex bison bc cpio xz; do
  command -v "$tool" >/dev/null || fail "missing '$tool'; install: apt-get install $(cat "$here/build-packages.txt" | tr '\n' ' ')"
done

source_version=$(dpkg-query -W -f '${Version}' linux-source-6.12 2>/dev/null || stat -c %Y "$tarball")
key=$( (cat "$fragment"; echo "$source_version") | sha256sum | cut -c1-16)
cache="${GUESTMEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guestmem}/kernel/$key"
image="$cache/bzImage"

if [ -s "$image" ]; then
  echo "$image"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
# Another build may have finished while we waited for the lock.
if [ -s "$image" ]; then echo "$image"; exit 0; fi

work="$cache/build"
rm -rf "$work"
mkdir -p "$work"
log="$cache/build.log"
: >"$log"
phase_start=$SECONDS
phase() { echo "guestmem kernel build: $* (after $((SECONDS - phase_start)) s)" >&2; }

phase "unpacking linux-source $source_version (about 1 minute)"
tar -xf "$tarball" -C "$work" --strip-components=1

phase "configuring: tinyconfig + $fragment"
make -C "$work" tinyconfig >>"$log" 2>&1 || fail "make tinyconfig failed; see $log"
cat "$fragment" >>"$work/.config"
make -C "$work" olddefconfig >>"$log" 2>&1 || fail "make olddefconfig failed; see $log"

# kconfig silently drops options whose dependencies are unmet: check each one.
missing=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$work/.config" || missing+=("$line") ;;
  esac
done <"$fragment"
if [ ${#missing[@]} -gt 0 ]; then
  fail "options dropped by olddefconfig (a dependency is missing): ${missing[*]}"
fi

jobs=$(nproc)
phase "compiling bzImage with $jobs jobs (about 6 minutes on 2 cores); log: $log"
make -C "$work" -j"$jobs" bzImage >>"$log" 2>&1 || { tail -n 30 "$log" >&2; fail "kernel compile failed; see $log"; }

cp "$work/arch/x86/boot/bzImage" "$image.tmp"
cp "$work/.config" "$cache/config"
mv "$image.tmp" "$image"
rm -rf "$work"
phase "done: $image"
echo "$image"
