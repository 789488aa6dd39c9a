#!/usr/bin/env bash
# Installs the Debian packages guestmem needs: a C++ toolchain and Python for node-gyp (the
# addon), QEMU and a static busybox to boot the harness VM, and the tools to build its
# kernels: Debian's linux-source-6.12 from bookworm here; 7.2's source comes from Debian
# unstable through scripts/vm/build-kernel.sh's private apt lists (apt-get and dpkg-deb,
# with debian-archive-keyring to check the suite's signature), not from this machine's sources.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# shellcheck disable=SC2046
$sudo apt-get install -y -q --no-install-recommends g++ make python3 binutils debian-archive-keyring $(cat "$here/vm/build-packages.txt" "$here/vm/run-packages.txt")
# Headless Chromium for scripts/svg-browser-check.sh (an --svg picture checked in a real browser).
$sudo apt-get install -y -q --no-install-recommends chromium
