/* How `pnpm bench` shows its rows: a text table, BENCHMARKS.md, and the latency chart. */
import { execFile } from 'node:child_process';
import { cpus, totalmem } from 'node:os';
import { promisify } from 'node:util';
import type { Row, Unit } from './support.ts';

/** Where the full run draws the latency percentiles; BENCHMARKS.md and the README show it. */
export const CHART_PATH = 'docs/bench-latency.svg';

/** One line on the machine the figures come from. */
export async function machine(): Promise<string> {
  const { stdout } = await promisify(execFile)('redis-server', ['--version']);
  const redis = /v=(\S+)/.exec(stdout)?.[1] ?? 'unknown';
  const gib = (totalmem() / 2 ** 30).toFixed(0);
  return `${cpus().length} × ${cpus()[0]?.model.trim() ?? 'unknown CPU'}, ${gib} GiB, Node ${process.version}, redis-server ${redis}`;
}

/** Rates: higher is better; latencies and sizes: lower is. */
const higherIsBetter = (unit: Unit) => unit === 'per second';

function figure(row: Row): string {
  if (row.unit === 'per second') return `${Math.round(row.value).toLocaleString('en')}/s`;
  if (row.unit === 'MB') return `${row.value.toFixed(1)} MB`;
  return row.percentiles
    ? `${ms(row.percentiles.p50)} / ${ms(row.percentiles.p99)} / ${ms(row.percentiles.p999)} ms`
    : `${ms(row.value)} ms`;
}

const ms = (value: number) => (value < 10 ? value.toFixed(2) : value.toFixed(1));

/** `51% of "raw" (target ≥ 70%: missed)`, for each comparison of the row. */
function comparisons(row: Row, rows: readonly Row[]): string {
  return (row.vs ?? [])
    .map(({ baseline, target }) => {
      const base = rows.find((other) => other.name === baseline);
      if (!base) throw new Error(`row "${row.name}" compares with a missing row "${baseline}"`);
      const ratio = row.value / base.value;
      const shown = ratio >= 2 ? `${ratio.toFixed(1)}x` : `${(ratio * 100).toFixed(0)}%`;
      const what = row.percentiles ? `${ratio >= 2 ? '' : 'of '}the p99 of` : ratio >= 2 ? '' : 'of';
      const against = `${shown} ${what} "${baseline}"`.replace('  ', ' ');
      if (target === undefined) return against;
      const met = higherIsBetter(row.unit) ? ratio >= target : ratio <= target;
      const wanted = target >= 2 ? `${target}x` : `${(target * 100).toFixed(0)}%`;
      const sign = higherIsBetter(row.unit) ? '≥' : '≤';
      return `${against} (target ${sign} ${wanted}: ${met ? 'met' : 'MISSED'})`;
    })
    .join('; ');
}

function cells(rows: readonly Row[]): string[][] {
  return rows.map((row) => [
    row.section,
    row.name,
    figure(row),
    [comparisons(row, rows), row.note].filter(Boolean).join('; ') || 'baseline',
  ]);
}

export function textTable(rows: readonly Row[]): string {
  const lines: string[] = [];
  let section = '';
  const body = cells(rows);
  const nameWidth = Math.max(...body.map(([, name]) => name!.length));
  const figureWidth = Math.max(...body.map(([, , value]) => value!.length));
  for (const [rowSection, name, value, versus] of body) {
    if (rowSection !== section) lines.push(`${lines.length ? '\n' : ''}${(section = rowSection!)}`);
    lines.push(`  ${name!.padEnd(nameWidth)}  ${value!.padStart(figureWidth)}  ${versus}`);
  }
  return lines.join('\n');
}

export function benchmarksMarkdown(rows: readonly Row[], machineInfo: string, seconds: number): string {
  const sections = [...new Set(rows.map((row) => row.section))];
  const tables = sections.map((section) => {
    const lines = cells(rows.filter((row) => row.section === section)).map(
      ([, name, value, versus]) => `| ${name} | ${value} | ${versus!.replaceAll('|', '\\|')} |`,
    );
    return `### ${section}\n\n| row | figure | compared with |\n|---|---:|---|\n${lines.join('\n')}`;
  });
  return `# Benchmarks

Written by \`pnpm bench\` (the full run) on ${new Date().toISOString().slice(0, 10)}, in ${seconds.toFixed(0)} s, on:
${machineInfo}.

Every row was measured in the same run, on private redis-servers started by the benchmark, beside
the baselines it is compared with: only the ratios carry over to another machine. The rows of a
section take turns (throughput and stream length: the median of several turns each, after a
warm-up; latency, HTTP and chain CPU: alternating turns), so that a busy neighbour on a shared machine spoils a turn of every row
rather than the whole of one. Latency rows read p50 / p99 / p99.9; their ratio compares the
p99s. Chain CPU rows read the CPU time (user + system) of every process of a chain, Redis
included, per order carried; their notes give each process's part, the next bottleneck first
to see. \`pnpm bench --quick\` runs the same rows with less work in under a minute, and prints them
without writing this file.

![Latency percentiles](${CHART_PATH})

${tables.join('\n\n')}
`;
}

/** Horizontal bars, p50 / p99 / p99.9 of each latency row, on one shared linear scale. */
export function latencyChart(rows: readonly Row[]): string {
  const latency = rows.filter((row) => row.percentiles);
  const labelWidth = 360;
  const plotWidth = 440;
  const barHeight = 10;
  const groupHeight = 3 * barHeight + 16;
  const top = 40;
  const height = top + latency.length * groupHeight + 30;
  const max = Math.max(...latency.map((row) => row.percentiles!.p999), 1);
  const scale = (value: number) => (value / max) * plotWidth;
  const colours = { p50: '#4c78a8', p99: '#f58518', p999: '#e45756' } as const;
  const escape = (text: string) =>
    text.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;');
  const parts: string[] = [];
  latency.forEach((row, index) => {
    const y = top + index * groupHeight;
    parts.push(
      `<text x="${labelWidth - 8}" y="${y + 1.5 * barHeight + 4}" text-anchor="end">${escape(row.name)}</text>`,
    );
    (['p50', 'p99', 'p999'] as const).forEach((key, bar) => {
      const value = row.percentiles![key];
      const barY = y + bar * barHeight;
      parts.push(
        `<rect x="${labelWidth}" y="${barY}" width="${scale(value).toFixed(1)}" height="${barHeight - 1}" fill="${colours[key]}"/>`,
        `<text x="${labelWidth + scale(value) + 4}" y="${barY + barHeight - 1}" font-size="9">${ms(value)} ms</text>`,
      );
    });
  });
  const legend = (['p50', 'p99', 'p999'] as const)
    .map(
      (key, i) =>
        `<rect x="${labelWidth + i * 90}" y="12" width="10" height="10" fill="${colours[key]}"/>` +
        `<text x="${labelWidth + i * 90 + 14}" y="21">${key === 'p999' ? 'p99.9' : key}</text>`,
    )
    .join('');
  const width = labelWidth + plotWidth + 70;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="8" y="21" font-weight="bold">Latency (ms), pnpm bench</text>
${legend}
${parts.join('\n')}
</svg>
`;
}
