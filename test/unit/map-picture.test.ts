// The --svg picture: every conversion drawn whatever their number (rows become buckets),
// a viewBox, axes, a legend, and the plot's width given to the part of the block the
// conversions touch. (scripts/svg-browser-check.sh checks the same in a real browser.)

import assert from 'node:assert/strict';
import { MAX_TIMELINE_ROWS, mapSvg, touchedWindow } from '../../lib/cli/map-picture';
import type { ConversionRecord } from '../../lib/cli/script-runner';
import { RamBlockAttributes } from '../../lib/tracker/ram-block-attributes';

const PAGE = 4096;
const MiB = 1 << 20;

/** `count` conversions of 1..16 pages in the first `pages` pages, from a fixed seed. */
function conversions(count: number, pages: number): ConversionRecord[] {
  let seed = 7;
  const next = () => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed >> 12;
  };
  return Array.from({ length: count }, () => ({
    offset: (next() % pages) * PAGE,
    size: (1 + (next() % 16)) * PAGE,
    to: next() % 2 ? 'shared' : 'private',
    outcome: 'done',
  }));
}

function plotOf(svg: string): { rows: number; perRow: number; height: number } {
  const match = /<rect id="plot" [^>]*height="(\d+)" [^>]*data-rows="(\d+)" data-per-row="(\d+)"/.exec(svg);
  assert.ok(match, 'the plot box is named');
  return { height: Number(match[1]), rows: Number(match[2]), perRow: Number(match[3]) };
}

describe('the --svg picture', () => {
  const block = new RamBlockAttributes(64 * MiB);

  for (const count of [1, 20, 1876, 100_000]) {
    it(`holds all of ${count} conversion${count === 1 ? '' : 's'} in at most ${MAX_TIMELINE_ROWS} rows, with a viewBox, axes and a legend`, () => {
      const history = conversions(count, 512);
      const svg = mapSvg(block, history, 'test');
      const { rows, perRow, height } = plotOf(svg);
      assert.ok(rows <= MAX_TIMELINE_ROWS);
      assert.ok(rows * perRow >= count && (rows - 1) * perRow < count, `${rows} rows of ${perRow} hold exactly the ${count} conversions`);
      assert.ok(height >= rows, 'every row at least a pixel high');
      assert.match(svg, /^<svg [^>]*viewBox="0 0 \d+ \d+"/);
      assert.match(svg, /offset within the block/);
      assert.match(svg, new RegExp(`>#${(rows - 1) * perRow + 1}</text>`), 'the last row is labelled');
      assert.match(svg, />shared<\/text>[\s\S]*>private<\/text>[\s\S]*>rejected or failed<\/text>/);
      // Bounded by rows × columns, never by the number of conversions.
      assert.ok(svg.length < 4 * 1024 * 1024, `${svg.length} bytes`);
    });
  }

  it('gives the plot to the part of the block the conversions touch', () => {
    // Conversions in the first 2 MiB of 64 MiB: the window ends near 2 MiB, not at 64 MiB.
    const window = touchedWindow(conversions(1876, 512), block.granules, PAGE);
    assert.equal(window.first, 0);
    assert.ok(window.end >= 512 + 15 && window.end <= 600, `window ends at page ${window.end}`);
    // Spread over the block: the whole block.
    assert.deepEqual(touchedWindow(conversions(100, block.granules), block.granules, PAGE), { first: 0, end: block.granules });
    // None, or only refused ones far outside: the whole block.
    assert.deepEqual(touchedWindow([], block.granules, PAGE), { first: 0, end: block.granules });
    const far: ConversionRecord = { offset: 2n ** 64n - 4096n, size: 4096, to: 'shared', outcome: 'rejected' };
    assert.deepEqual(touchedWindow([far], block.granules, PAGE), { first: 0, end: block.granules });
    // A conversion high in the block: a window around it, starting on a round step.
    const high = touchedWindow([{ offset: 40 * MiB, size: 64 * 1024, to: 'shared', outcome: 'done' }], block.granules, PAGE);
    assert.ok(high.first <= (40 * MiB) / PAGE && high.end >= (40 * MiB + 64 * 1024) / PAGE && high.end - high.first < 64, JSON.stringify(high));
  });

  it('draws a refused conversion far outside the block as a mark at the edge', () => {
    const far: ConversionRecord = { offset: 2n ** 64n - 4096n, size: 4096, to: 'shared', outcome: 'rejected' };
    const svg = mapSvg(block, [...conversions(3, 512), far], 'test');
    assert.match(svg, /<rect x="\d+" y="\d+" width="3" height="\d+" fill="#b0b0b0"\/>/);
  });

  it('escapes the title', () => {
    assert.match(mapSvg(block, [], 'a <b> & "c"'), /<title>a &lt;b&gt; &amp; &quot;c&quot;<\/title>/);
  });
});
