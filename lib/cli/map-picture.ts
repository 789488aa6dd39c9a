// Pictures of a block's shared/private map: a terminal strip (one cell per N pages, shaded
// by the fraction shared) and an SVG of the map and of the conversions over time.

import type { RamBlockAttributes } from '../tracker/ram-block-attributes';
import type { Run } from '../tracker/page-bitmap';
import { bytesOf } from '../common/byte-range';
import type { ConversionRecord } from './script-runner';
import { formatBytes } from './sizes';

const SHADES = ['·', '░', '▒', '▓', '█'];
/** The fourth state: a cell mostly unplugged (virtio-mem), whatever KVM calls it. */
const UNPLUGGED = '×';

/** Pages of sorted, disjoint `runs` inside [first, end), from run `at` on; returns the count and the run to start the next cell from. */
function pagesIn(runs: readonly Run[], at: number, first: number, end: number): [number, number] {
  let count = 0;
  let i = at;
  for (; i < runs.length && runs[i]![0] < end; i++) {
    const [start, length] = runs[i]!;
    count += Math.max(0, Math.min(end, start + length) - Math.max(first, start));
    if (start + length > end) break;
  }
  return [count, i];
}

/**
 * One character per cell of `pagesPerCell` pages: · all private … █ all shared, × mostly
 * unplugged (`unplugged`: sorted runs of unplugged pages).
 */
export function mapStrip(attributes: RamBlockAttributes, width = 64, unplugged: readonly Run[] = []): { strip: string; pagesPerCell: number } {
  const pages = attributes.granules;
  const pagesPerCell = Math.max(1, Math.ceil(pages / width));
  const g = attributes.granularity;
  let strip = '';
  let run = 0;
  for (let first = 0; first < pages; first += pagesPerCell) {
    const count = Math.min(pagesPerCell, pages - first);
    const [out, next] = pagesIn(unplugged, run, first, first + count);
    run = next;
    if (out * 2 > count) {
      strip += UNPLUGGED;
      continue;
    }
    const shared = attributes.countShared({ offset: first * g, size: count * g });
    const fraction = shared / count;
    strip += fraction === 0 ? SHADES[0] : fraction === 1 ? SHADES[4] : SHADES[1 + Math.min(2, Math.floor(fraction * 3))];
  }
  return { strip, pagesPerCell };
}

export function mapLegend(pagesPerCell: number, unplugged = false): string {
  return `one cell = ${pagesPerCell} page${pagesPerCell === 1 ? '' : 's'}; · private, ░▒▓ partly shared, █ shared${unplugged ? `, ${UNPLUGGED} unplugged` : ''}`;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]!);
}

const COLOURS = { shared: '#3c9a5f', private: '#6b4c9a', refused: '#b0b0b0', axis: '#333333', grid: '#e4e4e4' } as const;
/** At most this many rows of conversions; past it each row is a bucket of consecutive ones. */
export const MAX_TIMELINE_ROWS = 600;
/** Pixel columns of the plot: each row is drawn at this resolution, whatever the conversions. */
const PLOT_WIDTH = 960;
const LEFT = 72;
const RIGHT = 48;

/** A step of 1, 2 or 5 times a power of two in pages, so that ticks fall on round sizes. */
function niceStep(span: number, ticks: number): number {
  const raw = Math.max(1, span / ticks);
  const power = 2 ** Math.floor(Math.log2(raw));
  for (const factor of [1, 2, 4, 8]) if (power * factor >= raw) return power * factor;
  return power * 16;
}

/**
 * The part of the block the conversions touch, in pages, widened to round steps: the
 * plot's width goes to it rather than to untouched memory. Conversions outside the block
 * (rejected, up to 2^64) do not count; with none inside, the whole block.
 */
export function touchedWindow(history: ConversionRecord[], pages: number, granule: number): { first: number; end: number } {
  let first = Infinity;
  let end = -Infinity;
  for (const record of history) {
    const offset = Number(record.offset) / granule;
    if (!(offset < pages)) continue;
    first = Math.min(first, Math.max(0, Math.floor(offset)));
    end = Math.max(end, Math.min(pages, Math.ceil(offset + Math.max(1, Number(record.size) / granule))));
  }
  if (!(end > first)) return { first: 0, end: pages };
  // Bounds on a fine round step: the plot keeps most of its width for what was touched.
  const step = niceStep(end - first, 32);
  first = Math.floor(first / step) * step;
  end = Math.min(pages, Math.ceil(end / step) * step);
  // A window that is most of the block shows the whole block: the axis then reads as the block.
  return end - first > pages * 0.6 ? { first: 0, end: pages } : { first, end };
}

/** Horizontal runs [x, width) of equal colour in one row of pixel columns; '' is empty. */
function rowRuns(columns: string[]): Array<[number, number, string]> {
  const runs: Array<[number, number, string]> = [];
  for (let x = 0; x < columns.length;) {
    const colour = columns[x]!;
    let end = x + 1;
    while (end < columns.length && columns[end] === colour) end++;
    if (colour !== '') runs.push([x, end - x, colour]);
    x = end;
  }
  return runs;
}

/**
 * An SVG of a block and its conversions over time, whatever their number: on top the whole
 * block's final map with the plotted window marked; below, the window's final map and one
 * row per conversion (time downwards), or per bucket of consecutive conversions once they
 * pass MAX_TIMELINE_ROWS, each row drawn at PLOT_WIDTH columns where the latest conversion
 * of the bucket wins a column. Axes in bytes and conversion numbers, a legend, a viewBox
 * (the picture scales to any width). Its size is bounded by rows × columns, never by the
 * number of conversions.
 */
export function mapSvg(attributes: RamBlockAttributes, history: ConversionRecord[], title: string): string {
  const pages = attributes.granules;
  const g = attributes.granularity;
  const window = touchedWindow(history, pages, g);
  const span = window.end - window.first;
  const rows = Math.min(history.length, MAX_TIMELINE_ROWS);
  const perRow = rows > 0 ? Math.ceil(history.length / rows) : 1;
  const rowCount = rows > 0 ? Math.ceil(history.length / perRow) : 0;
  const rowHeight = rowCount > 0 ? Math.max(1, Math.min(14, Math.floor(480 / rowCount))) : 0;
  const width = LEFT + PLOT_WIDTH + RIGHT;
  const xWhole = (page: number) => LEFT + (page / pages) * PLOT_WIDTH;
  const xWindow = (page: number) => LEFT + ((Math.min(Math.max(page, window.first), window.end) - window.first) / span) * PLOT_WIDTH;
  const f = (n: number) => (Math.round(n * 100) / 100).toString();
  const parts: string[] = [];
  let y = 22;
  parts.push(`<text x="${LEFT}" y="${y}" font-size="15" font-weight="bold">${escapeXml(title)}</text>`);
  y += 18;
  parts.push(`<text x="${LEFT}" y="${y}">${pages} pages of ${g} bytes (${escapeXml(formatPageBytes(pages, g))}); ${attributes.sharedGranules} shared, ${attributes.privateGranules} private; ${history.length} conversion${history.length === 1 ? '' : 's'}</text>`);

  // The whole block, with the plotted window outlined.
  y += 14;
  parts.push(`<text x="${LEFT - 8}" y="${y + 13}" text-anchor="end">block</text>`);
  parts.push(`<rect x="${LEFT}" y="${y}" width="${PLOT_WIDTH}" height="18" fill="${COLOURS.private}"/>`);
  for (const [first, count] of attributes.runs('shared')) {
    parts.push(`<rect x="${f(xWhole(first))}" y="${y}" width="${f(Math.max(0.5, (count / pages) * PLOT_WIDTH))}" height="18" fill="${COLOURS.shared}"/>`);
  }
  if (span < pages) {
    parts.push(`<rect x="${f(xWhole(window.first))}" y="${y - 3}" width="${f(Math.max(1, (span / pages) * PLOT_WIDTH))}" height="24" fill="none" stroke="#d9480f" stroke-width="2"/>`);
    parts.push(`<text x="${LEFT + PLOT_WIDTH}" y="${y - 5}" text-anchor="end" fill="#d9480f">plotted below: [${escapeXml(formatPageBytes(window.first, g))}, ${escapeXml(formatPageBytes(window.end, g))})</text>`);
  }
  y += 30;

  // The window's final map, then the conversions.
  parts.push(`<text x="${LEFT - 8}" y="${y + 13}" text-anchor="end">final</text>`);
  parts.push(`<rect x="${LEFT}" y="${y}" width="${PLOT_WIDTH}" height="18" fill="${COLOURS.private}"/>`);
  for (const [first, count] of attributes.runs('shared', { offset: window.first * g, size: span * g })) {
    parts.push(`<rect x="${f(xWindow(first))}" y="${y}" width="${f(Math.max(0.5, xWindow(first + count) - xWindow(first)))}" height="18" fill="${COLOURS.shared}"/>`);
  }
  y += 26;
  const plotTop = y;
  const plotHeight = Math.max(rowCount * rowHeight, 1);
  // Grid and x axis ticks (byte offsets within the block).
  const step = niceStep(span, 8);
  const ticks: number[] = [];
  for (let page = Math.ceil(window.first / step) * step; page <= window.end; page += step) ticks.push(page);
  for (const page of ticks) {
    parts.push(`<line x1="${f(xWindow(page))}" y1="${plotTop}" x2="${f(xWindow(page))}" y2="${plotTop + plotHeight}" stroke="${COLOURS.grid}"/>`);
  }
  for (let row = 0; row < rowCount; row++) {
    const columns = new Array<string>(PLOT_WIDTH).fill('');
    for (let i = row * perRow; i < Math.min(history.length, (row + 1) * perRow); i++) {
      const record = history[i]!;
      const colour = record.outcome !== 'done' ? COLOURS.refused : record.to === 'shared' ? COLOURS.shared : COLOURS.private;
      const first = Number(record.offset) / g;
      const count = Math.max(Number(record.size) / g, 0);
      if (first >= window.end || first + count <= window.first) {
        // Outside the plotted window: only a refused conversion can be (the window holds every
        // one done); it may lie far outside the block, up to 2^64. A mark at the nearer edge.
        const edge = first >= window.end ? PLOT_WIDTH - 3 : 0;
        for (let x = edge; x < edge + 3; x++) columns[x] = colour;
        continue;
      }
      const from = Math.max(0, Math.floor(xWindow(first) - LEFT));
      const to = Math.min(PLOT_WIDTH, Math.max(from + 1, Math.ceil(xWindow(first + count) - LEFT)));
      for (let x = from; x < to; x++) columns[x] = colour;
    }
    for (const [x, w, colour] of rowRuns(columns)) {
      parts.push(`<rect x="${LEFT + x}" y="${plotTop + row * rowHeight}" width="${w}" height="${rowHeight}" fill="${colour}"/>`);
    }
  }
  // Axes: x along the bottom in bytes, y down the left in conversion numbers. The plot's
  // box is named, invisible, so that a check (scripts/svg-browser-check.sh) can find it.
  const axisY = plotTop + plotHeight;
  parts.push(`<rect id="plot" x="${LEFT}" y="${plotTop}" width="${PLOT_WIDTH}" height="${plotHeight}" fill="none" data-rows="${rowCount}" data-per-row="${perRow}"/>`);
  // Half-pixel positions keep the 1 px axes crisp and off the plot's first and last rows.
  parts.push(`<line x1="${LEFT - 0.5}" y1="${axisY + 0.5}" x2="${LEFT + PLOT_WIDTH}" y2="${axisY + 0.5}" stroke="${COLOURS.axis}"/>`);
  parts.push(`<line x1="${LEFT - 0.5}" y1="${plotTop}" x2="${LEFT - 0.5}" y2="${axisY + 0.5}" stroke="${COLOURS.axis}"/>`);
  for (const page of ticks) {
    parts.push(`<line x1="${f(xWindow(page))}" y1="${axisY}" x2="${f(xWindow(page))}" y2="${axisY + 5}" stroke="${COLOURS.axis}"/>`);
    parts.push(`<text x="${f(xWindow(page))}" y="${axisY + 18}" text-anchor="${page === window.end ? 'end' : 'middle'}">${escapeXml(formatPageBytes(page, g))}</text>`);
  }
  parts.push(`<text x="${LEFT + PLOT_WIDTH / 2}" y="${axisY + 36}" text-anchor="middle">offset within the block</text>`);
  if (rowCount > 0) {
    const labelled = new Set([0, Math.floor((rowCount - 1) / 2), rowCount - 1]);
    for (const row of labelled) {
      const yRow = plotTop + row * rowHeight + rowHeight / 2;
      parts.push(`<text x="${LEFT - 8}" y="${f(yRow + 4)}" text-anchor="end">#${row * perRow + 1}</text>`);
    }
    parts.push(`<text transform="translate(16 ${f(plotTop + plotHeight / 2)}) rotate(-90)" text-anchor="middle">conversions, in order ↓${perRow > 1 ? ` (${perRow} a row)` : ''}</text>`);
  } else {
    parts.push(`<text x="${LEFT + 8}" y="${plotTop + 14}">no conversions</text>`);
  }
  // The legend.
  let legendX = LEFT;
  const legendY = axisY + 52;
  for (const [label, colour] of [['shared', COLOURS.shared], ['private', COLOURS.private], ['rejected or failed', COLOURS.refused]] as const) {
    parts.push(`<rect x="${legendX}" y="${legendY}" width="14" height="14" fill="${colour}"/>`);
    parts.push(`<text x="${legendX + 20}" y="${legendY + 12}">${label}</text>`);
    legendX += 40 + label.length * 8;
  }
  if (perRow > 1) parts.push(`<text x="${legendX + 20}" y="${legendY + 12}">a row holds ${perRow} consecutive conversions; the latest wins each column</text>`);
  const height = legendY + 28;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="${width}" height="${height}" font-family="monospace" font-size="12">`,
    `<title>${escapeXml(title)}</title>`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    ...parts,
    '</svg>',
  ].join('\n') + '\n';
}

/** A page offset as bytes, in the largest unit that divides it (64 KiB, 16 MiB). */
function formatPageBytes(pages: number, granule: number): string {
  return formatBytes(bytesOf(pages, granule));
}
