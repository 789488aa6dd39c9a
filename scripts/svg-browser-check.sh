#!/usr/bin/env bash
# Renders a `guestmem simulate --svg` picture of many conversions in a real browser
# (Debian's Chromium, headless) and checks what a person would see: the picture at its
# viewBox size, a coloured row for every row of conversions down to the last, and the
# plot's width used by the part of the block the conversions touch. Writes a PNG
# screenshot beside the SVG for a look. Usage:
#   scripts/svg-browser-check.sh [--conversions N] [--out DIR]
# Needs chromium (apt-get install chromium: about 300 MB, so CI leaves it out unless
# GUESTMEM_BROWSER_CHECK=1); exits 2 naming it when absent.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
conversions=1876
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --conversions) conversions=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 [--conversions N] [--out DIR]" >&2; exit 2 ;;
  esac
done
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "svg-browser-check: no chromium; install it: apt-get install chromium" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/guestmem-svg-check.XXXXXX")
trap 'rm -rf "$work"' EXIT
out=${out:-$work}
mkdir -p "$out"

# A guest's conversions: random ranges in the first 2 MiB of a 64 MiB block (so the picture
# must zoom to use its width), and one far outside, rejected.
node -e '
  let seed = 7;
  const next = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed >> 12; };
  const lines = ["block 64M", "listen dev 0 64M"];
  for (let i = 0; i < Number(process.argv[1]); i++) {
    lines.push(`convert ${(next() % 512) * 4096} ${(1 + (next() % 16)) * 4096} ${next() % 3 ? "shared" : "private"}`);
  }
  lines.push("convert 0x1000000000 4096 shared");
  require("node:fs").writeFileSync(process.argv[2], lines.join("\n") + "\n");
' "$conversions" "$work/script.txt"
node "$root/bin/guestmem.js" simulate "$work/script.txt" --svg "$out/conversions.svg" >/dev/null

read -r width height < <(sed -n 's/^<svg [^>]*viewBox="0 0 \([0-9]*\) \([0-9]*\)".*/\1 \2/p' "$out/conversions.svg")
cat >"$work/check.html" <<HTML
<!doctype html>
<meta charset="utf-8">
<pre id="result">pending</pre>
<script>
(async () => {
  const result = document.getElementById('result');
  try {
    const text = await (await fetch('conversions.svg')).text();
    const plot = new DOMParser().parseFromString(text, 'image/svg+xml').getElementById('plot');
    const box = ['x', 'y', 'width', 'height'].map((name) => Number(plot.getAttribute(name)));
    const image = new Image();
    image.src = 'conversions.svg';
    await image.decode();
    const canvas = document.createElement('canvas');
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(image, 0, 0);
    const pixels = context.getImageData(box[0], box[1], box[2], box[3]).data;
    // The timeline's colours: shared green, private purple, rejected grey.
    const done = (r, g, b) => (Math.abs(r - 0x3c) < 24 && Math.abs(g - 0x9a) < 24 && Math.abs(b - 0x5f) < 24) ||
      (Math.abs(r - 0x6b) < 24 && Math.abs(g - 0x4c) < 24 && Math.abs(b - 0x9a) < 24);
    const ink = (r, g, b) => done(r, g, b) || (Math.abs(r - 0xb0) < 12 && Math.abs(g - 0xb0) < 12 && Math.abs(b - 0xb0) < 12);
    let inkedRows = 0, lastInkedRow = -1, minX = Infinity, maxX = -Infinity;
    for (let y = 0; y < box[3]; y++) {
      let rowInked = false;
      for (let x = 0; x < box[2]; x++) {
        const i = (y * box[2] + x) * 4;
        if (ink(pixels[i], pixels[i + 1], pixels[i + 2])) rowInked = true;
        // The width the conversions done take (a refused one far away is only an edge mark).
        if (done(pixels[i], pixels[i + 1], pixels[i + 2])) { minX = Math.min(minX, x); maxX = Math.max(maxX, x); }
      }
      if (rowInked) { inkedRows++; lastInkedRow = y; }
    }
    result.textContent = JSON.stringify({ naturalWidth: image.naturalWidth, naturalHeight: image.naturalHeight, plot: box,
      rows: Number(plot.dataset.rows), perRow: Number(plot.dataset.perRow), inkedRows, lastInkedRow, minX, maxX });
  } catch (error) {
    result.textContent = 'error: ' + error;
  }
})();
</script>
HTML
cp "$out/conversions.svg" "$work/conversions.svg" 2>/dev/null || true
flags=(--headless --no-sandbox --disable-gpu --allow-file-access-from-files --hide-scrollbars)
dom=$("$browser" "${flags[@]}" --virtual-time-budget=10000 --dump-dom "file://$work/check.html" 2>/dev/null)
"$browser" "${flags[@]}" --window-size="$width,$height" --screenshot="$out/conversions.png" "file://$out/conversions.svg" >/dev/null 2>&1
[ -z "${GUESTMEM_SVG_DEBUG:-}" ] || echo "$dom" >&2
json=$(sed -n 's:.*<pre id="result">\(.*\)</pre>.*:\1:p' <<<"$dom" | sed 's/&quot;/"/g')
node -e '
  const text = process.argv[1];
  if (!text.startsWith("{")) { console.error(`svg-browser-check: the page could not measure the picture: ${text || "no result"}`); process.exit(1); }
  const r = JSON.parse(text);
  const [width, height, conversions] = process.argv.slice(2).map(Number);
  const problems = [];
  if (r.naturalWidth !== width || r.naturalHeight !== height) problems.push(`rendered ${r.naturalWidth}x${r.naturalHeight}, the viewBox says ${width}x${height}`);
  if (r.rows * r.perRow < conversions + 1) problems.push(`${r.rows} rows of ${r.perRow} hold fewer than the ${conversions + 1} conversions`);
  // Every row holds conversions, so ink must reach the plot'"'"'s last pixel row and cover nearly every row.
  if (r.lastInkedRow < r.plot[3] - 1) problems.push(`the last ink is at row ${r.lastInkedRow} of ${r.plot[3]}: the last conversions are not drawn`);
  if (r.inkedRows < r.plot[3] * 0.95) problems.push(`only ${r.inkedRows} of ${r.plot[3]} pixel rows have ink`);
  if (r.maxX - r.minX < r.plot[2] * 0.8) problems.push(`the conversions use ${r.maxX - r.minX} of ${r.plot[2]} columns`);
  if (problems.length > 0) { console.error(`svg-browser-check: FAILED: ${problems.join("; ")}`); process.exit(1); }
  console.log(`svg-browser-check: ok: ${conversions + 1} conversions in ${r.rows} rows of ${r.perRow}, ink on ${r.inkedRows}/${r.plot[3]} pixel rows down to the last, columns ${r.minX}..${r.maxX} of ${r.plot[2]}, rendered ${r.naturalWidth}x${r.naturalHeight}`);
' "$json" "$width" "$height" "$conversions"
echo "svg-browser-check: picture $out/conversions.svg, screenshot $out/conversions.png"
