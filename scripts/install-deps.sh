#!/usr/bin/env bash
# Installs the Debian packages guestmem needs: a C++ toolchain and Python for node-gyp (the
# addon; gcc also builds the C yardsticks of `npm run bench`), QEMU and a static busybox to
# boot the harness VM, and the tools to build its kernels: Debian's linux-source-6.12 from bookworm here; 7.2's source comes from Debian
# unstable through scripts/vm/build-kernel.sh's private apt lists (apt-get and dpkg-deb,
# with debian-archive-keyring to check the suite's signature), not from this machine's sources.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# shellcheck disable=SC2046 # the package lists split into one argument a package, as meant
$sudo apt-get install -y -q --no-install-recommends gcc g++ make python3 binutils debian-archive-keyring $(cat "$here/vm/build-packages.txt" "$here/vm/run-packages.txt")
# The linters of `npm run lint` and `npm run format`: clang-format for native/ (bookworm's 14;
# another major version may lay out the same code differently) and shellcheck for scripts/.
$sudo apt-get install -y -q --no-install-recommends clang-format shellcheck
# An x86 emulator for test/emulation/run-guest.py: the SNP and TDX guest programs run under it
# in the unit suite (test/unit/guest-emulation.test.ts), with no SNP or TDX hardware.
$sudo apt-get install -y -q --no-install-recommends python3-unicorn
# Headless Chromium for scripts/svg-browser-check.sh (an --svg picture checked in a real browser).
$sudo apt-get install -y -q --no-install-recommends chromium
