#!/usr/bin/env bash
# Installs the Debian packages guestmem's harness VM needs: QEMU and a static busybox to
# boot it, and the tools to build its kernel from Debian's linux-source-6.12.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# shellcheck disable=SC2046
$sudo apt-get install -y -q --no-install-recommends $(cat "$here/vm/build-packages.txt" "$here/vm/run-packages.txt")
