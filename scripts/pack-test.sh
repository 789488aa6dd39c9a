#!/usr/bin/env bash
# The package as a user gets it. `npm pack` (which builds the prebuilt N-API binary and the
# TypeScript), then two installs of the tarball into empty projects, each on a PATH with no
# compiler (no cc, c++, gcc, g++, make, python3: what node-gyp needs) and with
# npm_config_build_from_source=false:
# The list is checked first: no source maps, CLI declarations or CI-only files, and every
# relative link of the README and docs/ resolves inside the tarball. Then:
#   1. as packed: the prebuilt binary loads (nothing is compiled), `guestmem simulate` runs
#      a script, `guestmem probe` finds the addon, examples/library-tour.js runs against
#      the installed package, and the exports map keeps the internals out of reach;
#   2. with prebuilds/ taken out of the tarball: the fallback compile fails for want of a
#      compiler, the install still succeeds, `guestmem simulate` still runs (the tracker is
#      pure TypeScript) and `guestmem probe` says why the addon is missing.
# Exits non-zero, naming the step, if any of that does not hold.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/guestmem-pack-test.XXXXXX")
trap 'rm -rf "$work"' EXIT

fail() {
  echo "pack-test: FAILED: $*" >&2
  exit 1
}

echo "pack-test: npm pack (prebuilt binary and TypeScript build)"
tarball=$(cd "$root" && npm pack --silent --pack-destination "$work" | tail -n 1)
tarball="$work/$tarball"
[ -f "$tarball" ] || fail "npm pack made no tarball"
contents=$(tar -tzf "$tarball")
grep -qx 'package/prebuilds/linux-x64/guestmem.node' <<<"$contents" || fail "the tarball lacks prebuilds/linux-x64/guestmem.node"
grep -qx 'package/dist/guest/secret.bin' <<<"$contents" || fail "the tarball lacks the assembled guest programs (dist/guest/)"
if grep -q '^package/\(build\|dist/test\|test\|node_modules\)/' <<<"$contents"; then
  fail "the tarball carries a build tree, tests or node_modules"
fi
# Source maps would point at TypeScript the package does not ship; the CLI's declarations are
# no API; CI's own scripts and the guest programs' sources are no use to an installed package.
if grep -q '\.map$\|^package/dist/lib/cli/.*\.d\.ts$\|^package/scripts/test\.js$\|^package/scripts/vm/\(check-uapi\.sh\|uapi-check\.cc\)$\|^package/guest/' <<<"$contents"; then
  fail "the tarball carries source maps, the CLI's declarations or CI-only files: $(grep '\.map$\|^package/dist/lib/cli/.*\.d\.ts$\|^package/scripts/test\.js$\|^package/scripts/vm/\(check-uapi\.sh\|uapi-check\.cc\)$\|^package/guest/' <<<"$contents" | head -5 | tr '\n' ' ')"
fi
# Every relative link and picture of the README and the docs it links resolves in the tarball.
mkdir "$work/unpacked"
tar -xzf "$tarball" -C "$work/unpacked"
# shellcheck disable=SC2016 # JavaScript for node -e: its $ and backticks are not the shell's
node -e '
  const fs = require("fs"), path = require("path");
  const root = process.argv[1];
  const broken = [];
  for (const page of ["README.md", ...fs.readdirSync(path.join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => `docs/${f}`), "CONTRIBUTING.md"]) {
    const text = fs.readFileSync(path.join(root, page), "utf8").replace(/```[\s\S]*?```/g, "");
    for (const [, target] of text.matchAll(/\]\(([^)#\s]+)(?:#[^)]*)?\)/g)) {
      if (/^[a-z]+:/.test(target)) continue;
      if (!fs.existsSync(path.join(root, path.dirname(page), target))) broken.push(`${page}: ${target}`);
    }
  }
  if (broken.length > 0) { console.error(broken.join("\n")); process.exit(1); }' "$work/unpacked/package" ||
  fail "a link of the README or docs/ points at a file the tarball lacks"

# A PATH like this machine's, less every compiler and build tool node-gyp would call.
nocc="$work/bin"
mkdir "$nocc"
IFS=: read -r -a dirs <<<"$PATH"
for dir in "${dirs[@]}"; do
  [ -d "$dir" ] || continue
  for tool in "$dir"/*; do
    name=$(basename "$tool")
    case "$name" in
      cc | c++ | cpp | gcc* | g++* | clang* | *-gcc* | *-g++* | *-cc | *-c++ | make | gmake | python*) continue ;;
    esac
    [ -e "$nocc/$name" ] || ln -s "$tool" "$nocc/$name"
  done
done

SCRIPT='block 1M
listen dev 0 1M
convert 0 64K shared
convert 16K 4K private
'

# Installs a tarball into an empty project without a compiler; runs simulate and probe there.
install_and_run() {
  local label=$1 package=$2 project="$work/$1"
  mkdir -p "$project"
  (cd "$project" && npm init -y >/dev/null)
  echo "pack-test: $label: npm install without a compiler"
  (cd "$project" && env -u CC -u CXX PATH="$nocc" npm_config_build_from_source=false \
    npm install --no-audit --no-fund --prefer-offline --foreground-scripts "$package" >"$project/install.log" 2>&1) ||
    { cat "$project/install.log" >&2; fail "$label: npm install failed"; }
  echo "pack-test: $label: guestmem simulate"
  local simulated
  simulated=$(cd "$project" && PATH="$nocc" npx --no-install guestmem simulate - --json <<<"$SCRIPT") ||
    fail "$label: guestmem simulate failed"
  # shellcheck disable=SC2016 # JavaScript for node -e: its $ and backticks are not the shell's
  node -e '
    const report = JSON.parse(process.argv[1]);
    const want = { shared: [[0, 4], [5, 11]], listeners: { dev: { mapped: [[0, 4], [5, 11]], errors: 0 } }, ops: 2 };
    for (const [key, value] of Object.entries(want)) {
      if (JSON.stringify(report[key]) !== JSON.stringify(value)) {
        console.error(`simulate ${key}: ${JSON.stringify(report[key])}, want ${JSON.stringify(value)}`);
        process.exit(1);
      }
    }' "$simulated" || fail "$label: simulate gave the wrong map: $simulated"
  (cd "$project" && PATH="$nocc" npx --no-install guestmem probe --json >"$project/probe.json") ||
    fail "$label: guestmem probe failed"
}

install_and_run prebuilt "$tarball"
# shellcheck disable=SC2015 # meant: fail unless both checks hold
[ ! -e "$work/prebuilt/node_modules/guestmem/build" ] && ! grep -q 'gyp info' "$work/prebuilt/install.log" ||
  fail "prebuilt: the install compiled the addon although a prebuilt binary fits"
# shellcheck disable=SC2016 # JavaScript for node -e: its $ and backticks are not the shell's
node -e '
  const probe = require(process.argv[1]);
  if (!probe.nativeAddon.ok) { console.error(`the prebuilt addon did not load: ${probe.nativeAddon.why}`); process.exit(1); }' \
  "$work/prebuilt/probe.json" || fail "prebuilt: probe does not find the addon"
echo "pack-test: prebuilt: the plain-JavaScript example against the installed package"
cp "$root/examples/library-tour.js" "$work/prebuilt/"
(cd "$work/prebuilt" && PATH="$nocc" node library-tour.js >tour.log 2>&1) || { cat "$work/prebuilt/tour.log" >&2; fail "prebuilt: examples/library-tour.js failed"; }
# The exports map: the package's entry point and nothing behind it (the raw addon stays inside).
(cd "$work/prebuilt" && node -e '
  const guestmem = require("guestmem");
  if (typeof guestmem.RamBlockAttributes !== "function" || "native" in guestmem) throw new Error("the entry point exports the wrong things");
  try {
    require("guestmem/dist/lib/common/native.js");
  } catch (error) {
    if (error.code === "ERR_PACKAGE_PATH_NOT_EXPORTED") process.exit(0);
    throw error;
  }
  throw new Error("an internal module could be required past the exports map");
') || fail "prebuilt: the exports map does not hide the internals"
echo "pack-test: prebuilt: the prebuilt binary loads; simulate, probe and the example work; internals are not exported"

# The same package without its prebuilt binary: what a host no prebuild fits gets.
rm -rf "$work/unpacked/package/prebuilds"
tar -czf "$work/no-prebuild.tgz" -C "$work/unpacked" package
install_and_run no-prebuild "$work/no-prebuild.tgz"
grep -q 'compiling one failed' "$work/no-prebuild/install.log" ||
  fail "no-prebuild: the install did not try (and fail) to compile: $(cat "$work/no-prebuild/install.log")"
# shellcheck disable=SC2016 # JavaScript for node -e: its $ and backticks are not the shell's
node -e '
  const probe = require(process.argv[1]);
  const addon = probe.nativeAddon;
  if (addon.ok || !/No native build was found/.test(addon.why) || !/npm rebuild guestmem/.test(addon.fix)) {
    console.error(`probe should say why the addon is missing and how to build it: ${JSON.stringify(addon)}`);
    process.exit(1);
  }' "$work/no-prebuild/probe.json" || fail "no-prebuild: probe does not say why the addon is missing"
echo "pack-test: no-prebuild: the failed compile left the install working; simulate runs and probe says why the addon is missing"
echo "pack-test: ok"
