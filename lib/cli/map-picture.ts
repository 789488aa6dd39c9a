// Pictures of a block's shared/private map: a terminal strip (one cell per N pages, shaded
// by the fraction shared) and an SVG of the map and of the conversions over time.

import type { RamBlockAttributes } from '../tracker/ram-block-attributes';
import type { ConversionRecord } from './script-runner';

const SHADES = ['·', '░', '▒', '▓', '█'];

/** One character per cell of `pagesPerCell` pages: · all private … █ all shared. */
export function mapStrip(attributes: RamBlockAttributes, width = 64): { strip: string; pagesPerCell: number } {
  const pages = attributes.granules;
  const pagesPerCell = Math.max(1, Math.ceil(pages / width));
  const g = attributes.granularity;
  let strip = '';
  for (let first = 0; first < pages; first += pagesPerCell) {
    const count = Math.min(pagesPerCell, pages - first);
    const shared = attributes.countShared({ offset: first * g, size: count * g });
    const fraction = shared / count;
    strip += fraction === 0 ? SHADES[0] : fraction === 1 ? SHADES[4] : SHADES[1 + Math.min(2, Math.floor(fraction * 3))];
  }
  return { strip, pagesPerCell };
}

export function mapLegend(pagesPerCell: number): string {
  return `one cell = ${pagesPerCell} page${pagesPerCell === 1 ? '' : 's'}; · private, ░▒▓ partly shared, █ shared`;
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' })[c]!);
}

/**
 * An SVG: on top, the final map (shared runs in green over a private background); below,
 * one column per conversion, a bar at its offset coloured by its target (green shared,
 * purple private, grey rejected or failed).
 */
export function mapSvg(attributes: RamBlockAttributes, history: ConversionRecord[], title: string): string {
  const width = 800;
  const mapHeight = 40;
  const timelineHeight = 300;
  const pages = attributes.granules;
  const g = attributes.granularity;
  const x = (page: number) => (page / pages) * width;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${mapHeight + timelineHeight + 50}" font-family="monospace" font-size="12">`);
  parts.push(`<text x="0" y="14">${escapeXml(title)}: ${pages} pages of ${g} bytes, ${attributes.sharedGranules} shared</text>`);
  parts.push(`<rect x="0" y="20" width="${width}" height="${mapHeight}" fill="#6b4c9a"/>`);
  for (const [first, count] of attributes.runs('shared')) {
    parts.push(`<rect x="${x(first).toFixed(2)}" y="20" width="${Math.max(0.5, x(count)).toFixed(2)}" height="${mapHeight}" fill="#3c9a5f"/>`);
  }
  const top = 30 + mapHeight;
  parts.push(`<text x="0" y="${top + 10}">conversions over time (top to bottom), ${history.length} in all</text>`);
  const rowHeight = history.length > 0 ? Math.max(0.5, (timelineHeight - 20) / history.length) : 1;
  history.forEach((record, i) => {
    const colour = record.outcome !== 'done' ? '#aaaaaa' : record.to === 'shared' ? '#3c9a5f' : '#6b4c9a';
    // Rejected conversions may lie far outside the block (up to 2^64 and past): clamp them.
    const first = Number(record.offset) / g;
    const count = Math.max(1, Number(record.size) / g);
    parts.push(
      `<rect x="${x(Math.max(0, Math.min(first, pages))).toFixed(2)}" y="${(top + 20 + i * rowHeight).toFixed(2)}" width="${Math.max(0.5, x(Math.min(count, pages))).toFixed(2)}" height="${rowHeight.toFixed(2)}" fill="${colour}"/>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
