#!/usr/bin/env bash
# Builds a harness kernel into a cache outside the checkout, keyed by the config fragment
# and the source package version, so a machine builds it once and every clone (CI's fresh
# one included) reuses it. Two kernels:
#   6.12  Debian bookworm's linux-source-6.12 (installed by scripts/install-deps.sh)
#   7.2   Debian unstable's linux-source-7.2, fetched with apt-get download through a
#         private sources list and lists directory in the cache: the machine's own apt
#         configuration is never changed.
# Chosen with --kernel or GUESTMEM_KERNEL (default 6.12). Prints the bzImage path on
# stdout (with --headers: the directory of the kernel's installed uAPI headers, from
# `make headers_install`); progress goes to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment="$here/kernel.config"
kernel=${GUESTMEM_KERNEL:-6.12}
want=image

fail() { echo "guestmem kernel build: $*" >&2; exit 2; }
usage() {
  cat >&2 <<USAGE
usage: build-kernel.sh [--kernel 6.12|7.2] [--headers]
  Builds (or finds in the cache) the harness kernel and prints its bzImage path.
  --kernel   which kernel (default \$GUESTMEM_KERNEL or 6.12)
  --headers  print the directory of its installed uAPI headers instead
USAGE
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --kernel) kernel=${2:-}; shift 2 || usage ;;
    --headers) want=headers; shift ;;
    -h|--help) usage ;;
    *) usage ;;
  esac
done
case "$kernel" in
  6.12|7.2) ;;
  *) fail "unknown kernel '$kernel' (GUESTMEM_KERNEL or --kernel): choose 6.12 or 7.2" ;;
esac

for tool in make gcc flex bison bc cpio xz; do
  command -v "$tool" >/dev/null || fail "missing '$tool'; install: apt-get install $(tr '\n' ' ' <"$here/build-packages.txt")"
done

root="${GUESTMEM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/guestmem}"
started=$SECONDS
phase() { echo "guestmem kernel build ($kernel): $* (after $((SECONDS - started)) s)" >&2; }

# Debian's mirror as this machine's apt sources name it (the one serving bookworm), or
# GUESTMEM_DEBIAN_MIRROR; deb.debian.org where neither says.
debian_mirror() {
  if [ -n "${GUESTMEM_DEBIAN_MIRROR:-}" ]; then echo "$GUESTMEM_DEBIAN_MIRROR"; return; fi
  local found
  found=$(
    {
      cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
        /^[[:space:]]*$/ { if (uris != "" && suites ~ /(^| )bookworm( |$)/) print uris; uris = ""; suites = ""; next }
        /^URIs:/ { uris = $2 }
        /^Suites:/ { $1 = ""; suites = $0 " " }
        END { if (uris != "" && suites ~ /(^| )bookworm( |$)/) print uris }'
      cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        sed -E 's/\[[^]]*\]//' | awk '$1 == "deb" && $3 == "bookworm" { print $2 }'
    } | head -n 1
  )
  echo "${found:-http://deb.debian.org/debian}"
}

# 7.2's source: linux-source-7.2 from the unstable suite, fetched once into the cache
# (GUESTMEM_KERNEL_REFETCH=1 fetches the suite's current version again). Sets tarball and
# source_version.
fetch_unstable_source() {
  local dir="$root/source/linux-source-7.2"
  tarball="$dir/usr/src/linux-source-7.2.tar.xz"
  if [ -s "$tarball" ] && [ -s "$dir/version" ] && [ "${GUESTMEM_KERNEL_REFETCH:-0}" != 1 ]; then
    source_version=$(cat "$dir/version")
    return
  fi
  # shellcheck disable=SC2015 # meant: fail when either tool is missing
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || fail "fetching linux-source-7.2 needs apt-get and dpkg-deb (Debian)"
  local apt="$root/source/apt" mirror keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mirror=$(debian_mirror)
  [ -r "$keyring" ] || fail "no $keyring to check Debian's signatures; install: apt-get install debian-archive-keyring"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dir"
  echo "deb [signed-by=$keyring] $mirror unstable main" >"$apt/sources.list"
  # Only our own files: sources, lists and package cache under $apt; nothing under /etc/apt
  # or /var/lib/apt is read for sources or written.
  local options=(
    -o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
    -o Acquire::Languages=none -o APT::Sandbox::User=root -q
  )
  phase "fetching the package index of $mirror unstable (private apt lists in $apt)"
  apt-get "${options[@]}" update >"$apt/update.log" 2>&1 || { tail -n 20 "$apt/update.log" >&2; fail "apt-get update of $mirror unstable failed; see $apt/update.log"; }
  phase "downloading linux-source-7.2 (about 160 MB)"
  rm -f "$apt"/linux-source-7.2_*.deb
  (cd "$apt" && apt-get "${options[@]}" download linux-source-7.2) >"$apt/download.log" 2>&1 || { tail -n 20 "$apt/download.log" >&2; fail "apt-get download linux-source-7.2 failed; see $apt/download.log"; }
  local deb
  deb=$(ls "$apt"/linux-source-7.2_*.deb)
  phase "extracting $(basename "$deb")"
  rm -rf "${dir:?}/usr"
  dpkg-deb -x "$deb" "$dir"
  [ -s "$tarball" ] || fail "$deb has no usr/src/linux-source-7.2.tar.xz"
  dpkg-deb -f "$deb" Version >"$dir/version"
  source_version=$(cat "$dir/version")
  rm -f "$deb"
}

case "$kernel" in
  6.12)
    tarball=/usr/src/linux-source-6.12.tar.xz
    [ -r "$tarball" ] || fail "no $tarball; install it: apt-get install $(tr '\n' ' ' <"$here/build-packages.txt")"
    source_version=$(dpkg-query -W -f '${Version}' linux-source-6.12 2>/dev/null || stat -c %Y "$tarball")
    ;;
  7.2)
    fetch_unstable_source
    ;;
esac

key=$( (cat "$fragment"; echo "$source_version") | sha256sum | cut -c1-16)
cache="$root/kernel/$key"
image="$cache/bzImage"
headers="$root/headers/$kernel-$source_version"

result() {
  if [ "$want" = headers ]; then echo "$headers/include"; else echo "$image"; fi
}
ready() {
  if [ "$want" = headers ]; then [ -d "$headers/include/linux" ]; else [ -s "$image" ]; fi
}

if ready; then result; exit 0; fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
# Another build may have finished while we waited for the lock.
if ready; then result; exit 0; fi

work="$cache/build"
rm -rf "$work"
mkdir -p "$work"
log="$cache/build.log"
: >"$log"

phase "unpacking linux-source $source_version (about 1 minute)"
tar -xf "$tarball" -C "$work" --strip-components=1

# The uAPI headers as a program includes them, for the check that native/uapi.h matches
# this kernel (scripts/vm/check-uapi.sh), as `make headers_install` lays them out. Cheap
# once the tree is unpacked.
install_headers() {
  if [ -d "$headers/include/linux" ]; then return; fi
  phase "installing the uAPI headers into $headers"
  rm -rf "$headers.tmp"
  # `make headers` is headers_install without its final rsync (not a build dependency here).
  make -C "$work" headers >>"$log" 2>&1 || fail "make headers failed; see $log"
  mkdir -p "$headers.tmp"
  cp -a "$work/usr/include" "$headers.tmp/include"
  find "$headers.tmp/include" -name '.*' -delete
  rm -rf "$headers"
  mv "$headers.tmp" "$headers"
}
install_headers
if [ "$want" = headers ] && [ -s "$image" ]; then
  rm -rf "$work"
  result
  exit 0
fi

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

# Progress: the compile steps make reports (CC, AS, LD, ...), counted against the number
# the last build of this kernel took (or a measured default), every 15 s.
count_file="$root/kernel/steps-$kernel"
expected=$(cat "$count_file" 2>/dev/null || true)
[[ "$expected" =~ ^[0-9]+$ ]] || case "$kernel" in 6.12) expected=1880 ;; 7.2) expected=2000 ;; esac
jobs=$(nproc)
phase "compiling bzImage with $jobs jobs (about 5 minutes on 2 cores); log: $log"
steps=0
last=$SECONDS
set +e
make -C "$work" -j"$jobs" bzImage 2>&1 | {
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$log"
    case "$line" in
      "  "[A-Z]*) steps=$((steps + 1)) ;;
    esac
    if [ $((SECONDS - last)) -ge 15 ]; then
      last=$SECONDS
      percent=$((steps * 100 / expected))
      [ "$percent" -le 99 ] || percent=99
      phase "compiling: $steps steps done, about $percent%"
    fi
  done
  echo "$steps" >"$count_file.new"
}
status=${PIPESTATUS[0]}
set -e
[ "$status" -eq 0 ] || { tail -n 30 "$log" >&2; fail "kernel compile failed; see $log"; }
mv "$count_file.new" "$count_file"

cp "$work/arch/x86/boot/bzImage" "$image.tmp"
cp "$work/.config" "$cache/config"
echo "$kernel $source_version" >"$cache/source"
mv "$image.tmp" "$image"
rm -rf "$work"
phase "done: $image"
result
