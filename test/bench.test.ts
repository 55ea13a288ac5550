import { execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { sharesNote } from '../scripts/bench/chain.ts';
import {
  assertNodeProcess,
  cpuMsOfInfo,
  cpuShares,
  cpuSpent,
  processCpuMs,
  ticksOfStat,
} from '../scripts/bench/cpu.ts';
import { benchmarksMarkdown, CHART_PATH, latencyChart, textTable } from '../scripts/bench/report.ts';
import { median, percentiles, type Row } from '../scripts/bench/support.ts';

/* `pnpm bench` itself is run by hand (figures are not asserted in tests); this pins its report. */

const rows: Row[] = [
  { section: '1. publish', name: 'raw', value: 80_000, unit: 'per second' },
  {
    section: '1. publish',
    name: 'kit',
    value: 60_000,
    unit: 'per second',
    vs: [{ baseline: 'raw', target: 0.8 }],
  },
  {
    section: '4. latency',
    name: 'raw hop',
    value: 2,
    unit: 'ms',
    percentiles: { p50: 1, p99: 2, p999: 4 },
  },
  {
    section: '4. latency',
    name: 'kit hop',
    value: 2.5,
    unit: 'ms',
    percentiles: { p50: 1.2, p99: 2.5, p999: 5 },
    vs: [{ baseline: 'raw hop', target: 1.5 }],
  },
  { section: '6. growth', name: 'bullmq', value: 10_000, unit: 'per second' },
  {
    section: '6. growth',
    name: 'more',
    value: 60_000,
    unit: 'per second',
    vs: [{ baseline: 'bullmq', target: 5 }],
  },
];

describe('pnpm bench report', () => {
  it('gives each row its ratio to its baseline, and says whether the target was met', () => {
    const table = textTable(rows);

    expect(table).toMatch(/kit +60,000\/s +75% of "raw" \(target ≥ 80%: MISSED\)/);
    expect(table).toMatch(
      /kit hop +1\.20 \/ 2\.50 \/ 5\.00 ms +125% of the p99 of "raw hop" \(target ≤ 150%: met\)/,
    );
    expect(table).toMatch(/more +60,000\/s +6\.0x "bullmq" \(target ≥ 5x: met\)/);
  });

  it('refuses a comparison with a row that is not there', () => {
    expect(() => textTable([{ ...rows[1]!, vs: [{ baseline: 'nowhere' }] }])).toThrow(/nowhere/);
  });

  it('writes one markdown table per section and links the chart', () => {
    const markdown = benchmarksMarkdown(rows, '2 × Test CPU', 42);

    expect(markdown.match(/^### /gm)).toHaveLength(3);
    expect(markdown).toContain('| kit | 60,000/s | 75% of "raw" (target ≥ 80%: MISSED) |');
    expect(markdown).toContain(`![Latency percentiles](${CHART_PATH})`);
    expect(markdown).toContain('2 × Test CPU');
  });

  it('draws three bars per latency row, as wide as their values', () => {
    const svg = latencyChart(rows);

    const widths = [...svg.matchAll(/<rect x="360" y="\d+" width="([\d.]+)" height="9"/g)].map(([, w]) =>
      Number(w),
    );
    // The longest bar is the largest p99.9 (5 ms); the others scale from it.
    expect(widths).toEqual([88, 176, 352, 105.6, 220, 440]);
  });

  it('takes the median of the turns of a row', () => {
    expect(median([30, 10, 20])).toBe(20);
    expect(median([40, 10, 30, 20])).toBe(25);
  });

  it('takes nearest-rank percentiles', () => {
    const samples = Array.from({ length: 1000 }, (_, i) => i + 1);

    expect(percentiles(samples)).toEqual({ p50: 500, p99: 990, p999: 999 });
  });
});

describe('the chain rows', () => {
  describe('when reading a process from /proc/<pid>/stat', () => {
    it('adds utime and stime, counting the fields from the last parenthesis of the name', () => {
      // A command name may hold spaces and parentheses: `(node (x) y)`.
      const stat = '4242 (node (x) y) S 1 4242 4242 0 -1 4194560 9000 0 0 0 1234 567 0 0 20 0 11 0 8600 1';

      expect(ticksOfStat(stat)).toBe(1234 + 567);
    });

    it('refuses a line that is not a stat line', () => {
      expect(() => ticksOfStat('no such thing')).toThrow(/not a \/proc\/<pid>\/stat line/);
    });

    it('reads this very process, and knows it for a Node process', () => {
      expect(processCpuMs(process.pid)).toBeGreaterThan(0);
      expect(() => assertNodeProcess(process.pid, 'this test')).not.toThrow();
    });

    it('refuses a process that is not node, such as a wrapper', async () => {
      const child = spawn('sleep', ['5']);
      try {
        expect(() => assertNodeProcess(child.pid!, 'sleep')).toThrow(/sleep: pid \d+ runs .*sleep, not node/);
      } finally {
        child.kill();
      }
    });
  });

  it("reads Redis's CPU from INFO cpu as user + system ms", () => {
    const info =
      '# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.000000\r\n';

    expect(cpuMsOfInfo(info)).toBe(3_750);
  });

  it('shares the CPU spent in a window among the orders and the processes', () => {
    const spent = cpuSpent({ order: 100, redis: 50 }, { order: 400, redis: 150 });
    const { perOrder, shares } = cpuShares(spent, 200);

    expect(spent).toEqual({ order: 300, redis: 100 });
    expect(perOrder).toBe(2);
    expect(shares).toEqual([
      { name: 'order', perOrder: 1.5, share: 0.75 },
      { name: 'redis', perOrder: 0.5, share: 0.25 },
    ]);
    expect(sharesNote(shares, [{ name: 'order', perOrder: 1, share: 1 }])).toBe(
      'order 1.500 ms (75%, 1.5x bare) · redis 0.500 ms (25%)',
    );
  });

  it('refuses a window without orders, or a process read only once', () => {
    expect(() => cpuShares({ order: 1 }, 0)).toThrow(RangeError);
    expect(() => cpuSpent({ order: 1, redis: 1 }, { order: 2 })).toThrow(/redis/);
  });
});

describe('pnpm bench --only', () => {
  it('names a module it does not know and exits 2, before starting anything', async () => {
    const main = fileURLToPath(new URL('../scripts/bench/main.ts', import.meta.url));
    const failed = await promisify(execFile)(process.execPath, [
      '--import',
      'tsx',
      main,
      '--only',
      'chain,nowhere',
    ]).then(
      () => undefined,
      (err: { code: number; stdout: string; stderr: string }) => err,
    );

    expect(failed?.code).toBe(2);
    expect(failed?.stdout).toBe('');
    expect(failed?.stderr).toMatch(/^pnpm bench: no module nowhere\nusage: pnpm bench/);
  });
});

describe('BENCHMARKS.md', () => {
  it('holds a full run with every section of the suite, and the README links it', () => {
    const markdown = readFileSync(new URL('../BENCHMARKS.md', import.meta.url), 'utf8');
    const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');

    for (const section of [
      '1. publish',
      '2. consume',
      '3. payment-like',
      '4. latency',
      '5. HTTP',
      '6. cost',
      '7. chain CPU',
    ]) {
      expect(markdown).toContain(`### ${section}`);
    }
    expect(readFileSync(new URL(`../${CHART_PATH}`, import.meta.url), 'utf8')).toMatch(/^<svg/);
    expect(readme).toContain('(BENCHMARKS.md)');
    expect(readme).toContain(CHART_PATH);
  });
});
