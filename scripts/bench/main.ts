/**
 * `pnpm bench [--quick]`: stream-kit beside baselines measured in the same run (these machines
 * are shared and noisy: only ratios within one run mean anything). Each module gets a private
 * redis-server of its own. Prints one table; the full run also writes BENCHMARKS.md and the
 * latency chart it shows.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { startRedisServer, type RedisServer } from '../../harness/redis-server.ts';
import { boardRows } from './board.ts';
import { chainRows } from './chain.ts';
import { growthRows } from './growth.ts';
import { httpRows } from './http.ts';
import { latencyRows } from './latency.ts';
import { partitionRows } from './partitions.ts';
import { benchmarksMarkdown, CHART_PATH, latencyChart, machine, textTable } from './report.ts';
import type { BenchOptions, Row } from './support.ts';
import { throughputRows } from './throughput.ts';

const USAGE = `usage: pnpm bench [--quick] [--only <module>[,<module>…]]
  --quick   a smoke run: every row, in a fraction of the time, writing no files; its ratios are
            noisy and may flip a target either way (only a full run's figures count)
  --only    run these modules alone (throughput, latency, http, growth, chain, board, partitions), writing no files`;

const { values } = (() => {
  try {
    return parseArgs({
      options: {
        quick: { type: 'boolean', default: false },
        only: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    console.error(`pnpm bench: ${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
})();
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const options: BenchOptions = { quick: values.quick };

const all: [string, (server: RedisServer, options: BenchOptions) => Promise<Row[]>][] = [
  ['throughput', throughputRows],
  ['latency', latencyRows],
  ['http', httpRows],
  ['growth', growthRows],
  ['chain', chainRows],
  ['board', boardRows],
  ['partitions', partitionRows],
];
const only = values.only?.split(',').map((name) => name.trim());
const unknown = only?.filter((name) => !all.some(([what]) => what === name));
if (unknown?.length) {
  console.error(`pnpm bench: no module ${unknown.join(', ')}\n${USAGE}`);
  process.exit(2);
}
const modules = only ? all.filter(([what]) => only.includes(what)) : all;
// BENCHMARKS.md holds every section of a full run: a partial or quick run leaves it as it is.
const writes = !options.quick && !only;

// Exit on Ctrl-C or a kill, so that the 'exit' hooks end the redis-servers, services and the bare
// endpoint and bare chain this run started.
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));

const began = Date.now();
const info = await machine();
console.log(
  `pnpm bench${options.quick ? ' --quick' : ''}${only ? ` --only ${only.join(',')}` : ''} on ${info}`,
);
const rows: Row[] = [];
for (const [what, run] of modules) {
  const server = await startRedisServer();
  const started = Date.now();
  try {
    rows.push(...(await run(server, options)));
  } finally {
    await server.stop();
  }
  console.log(`  ${what}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
const seconds = (Date.now() - began) / 1000;
console.log(`\n${textTable(rows)}\n\n${seconds.toFixed(0)} s in all`);
if (writes) {
  writeFileSync(new URL(`../../${CHART_PATH}`, import.meta.url), latencyChart(rows));
  writeFileSync(new URL('../../BENCHMARKS.md', import.meta.url), benchmarksMarkdown(rows, info, seconds));
  console.log(`wrote BENCHMARKS.md and ${CHART_PATH}`);
}
