// Writes docs/BENCHMARKS.md from a results object: tables of medians with
// min-max ranges and ratios, and SVG bar charts generated from the same data.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const fmt = (value, digits = 1) => {
  if (value === undefined || value === null || Number.isNaN(value)) return '–';
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString('en-US');
  return value.toFixed(digits);
};

/** A markdown table: rows of { name, median, min, max, extra... }. */
export function table(headers, rows) {
  const lines = [`| ${headers.join(' | ')} |`, `| ${headers.map(() => '---').join(' | ')} |`];
  for (const row of rows) lines.push(`| ${row.join(' | ')} |`);
  return lines.join('\n');
}

export function range(stat, unit = 'ms') {
  return `${fmt(stat.median)} ${unit} (${fmt(stat.min)}–${fmt(stat.max)})`;
}

export function ratio(a, b) {
  return b ? `${(a / b).toFixed(2)}×` : '–';
}

/**
 * A horizontal bar chart (SVG) of medians with min-max whiskers.
 * bars: [{ label, median, min, max, highlight }]
 */
export function barChart({ title, unit, bars }) {
  const width = 640;
  const rowHeight = 28;
  const left = 190;
  const top = 36;
  const height = top + bars.length * rowHeight + 30;
  const maxValue = Math.max(...bars.map((b) => b.max ?? b.median)) * 1.08 || 1;
  const x = (value) => left + ((width - left - 20) * value) / maxValue;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="10" y="20" font-size="14" font-weight="600">${escape(title)}</text>`,
  ];
  bars.forEach((bar, index) => {
    const y = top + index * rowHeight;
    parts.push(`<text x="${left - 8}" y="${y + 15}" text-anchor="end">${escape(bar.label)}</text>`);
    parts.push(`<rect x="${left}" y="${y + 4}" width="${Math.max(1, x(bar.median) - left)}" height="16" fill="${bar.highlight ? '#2563eb' : '#94a3b8'}"/>`);
    if (bar.min !== undefined && bar.max !== undefined) {
      parts.push(`<line x1="${x(bar.min)}" x2="${x(bar.max)}" y1="${y + 12}" y2="${y + 12}" stroke="#111" stroke-width="1"/>`);
      parts.push(`<line x1="${x(bar.min)}" x2="${x(bar.min)}" y1="${y + 7}" y2="${y + 17}" stroke="#111"/>`);
      parts.push(`<line x1="${x(bar.max)}" x2="${x(bar.max)}" y1="${y + 7}" y2="${y + 17}" stroke="#111"/>`);
    }
    parts.push(`<text x="${x(bar.max ?? bar.median) + 6}" y="${y + 15}">${fmt(bar.median)} ${unit}</text>`);
  });
  parts.push(`<text x="${left}" y="${height - 8}" fill="#555">median of runs; whiskers: min–max</text>`);
  parts.push('</svg>');
  return parts.join('\n');
}

function escape(text) {
  return String(text).replace(/[&<>]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;' })[c]);
}

/** Writes an SVG under docs/bench/ and returns its markdown image link. */
export function writeChart(docsDir, file, chart) {
  const dir = join(docsDir, 'bench');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, file), `${barChart(chart)}\n`);
  return `![${chart.title}](bench/${file})`;
}

export { fmt };
