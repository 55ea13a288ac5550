/**
 * `pnpm fault [--orders N] [--seed S] [--claim-idle-ms MS] [--no-redis-trouble] [--cluster [--durable-replicas N]] [--kill-every-ms MS] [--takeover-bound-ms MS]`: the fault test
 * at any size (the suite runs one of 3,000 orders at the services' default CLAIM_IDLE_MS).
 * `--claim-idle-ms 1000` makes a quick run: a crashed instance's entries are taken over after a
 * second instead of a minute. `--no-redis-trouble` leaves out the out-of-memory window and the
 * stalls (Redis still restarts once). `--cluster` runs on a Redis Cluster of three masters with a
 * replica each (no out-of-memory window or stalls; the master of order-events restarts once, then
 * is killed and replaced by its replica); `--durable-replicas 0` counts the accepted orders that
 * failover loses when a 202 does not wait for a replica (order-service's DURABLE_REPLICAS, 1 by default there).
 * `--takeover-bound-ms 5000` fails a run whose per-start
 * instances' entries took longer than that to be taken over after a SIGKILL (p99). Exit code 0
 * when every accepted order was paid, mailed and texted exactly once, with nothing left pending and
 * no dead letters (and the bound held, if given).
 */
import { parseArgs } from 'node:util';
import { DEFAULT_CLAIM_IDLE_MS } from './instance.ts';
import { formatReport, problemsOf } from './report.ts';
import { runFault } from './run.ts';

const USAGE = `usage: pnpm fault [--orders N] [--seed S] [--claim-idle-ms MS] [--no-redis-trouble] [--cluster [--durable-replicas N]] [--kill-every-ms MS] [--takeover-bound-ms MS]
  --orders N              orders to place (default 5000)
  --seed S                replay the kill and trouble schedules of an earlier run
  --claim-idle-ms MS      the consumers' CLAIM_IDLE_MS (default: the services' own, ${DEFAULT_CLAIM_IDLE_MS})
  --no-redis-trouble      no out-of-memory window and no stalls (Redis still restarts once)
  --cluster               on a Redis Cluster of three masters with a replica each, the services
                          with REDIS_CLUSTER=true (implies --no-redis-trouble; the master of
                          order-events restarts once, then is killed and its replica takes over)
  --durable-replicas N    with --cluster: order-service's DURABLE_REPLICAS (default 1); 0 counts
                          the accepted orders the failover loses
  --kill-every-ms MS      mean time between two kills or stops (default 700); pauses come about
                          one in four. Calmer runs leave each service a live peer to take over
  --takeover-bound-ms MS  fail the run if the p99 of the per-start instances' takeover times
                          (entries a SIGKILL left, waiting with a live peer and no Redis
                          trouble) is over MS (default: not checked)`;

const { values } = (() => {
  try {
    return parseArgs({
      options: {
        orders: { type: 'string', default: '5000' },
        seed: { type: 'string' },
        'claim-idle-ms': { type: 'string' },
        'no-redis-trouble': { type: 'boolean', default: false },
        cluster: { type: 'boolean', default: false },
        'durable-replicas': { type: 'string' },
        'kill-every-ms': { type: 'string' },
        'takeover-bound-ms': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    console.error(`pnpm fault: ${(err as Error).message}\n${USAGE}`);
    process.exit(2);
  }
})();
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
const number = (name: string, value: string, min = 0) => {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < min) {
    console.error(
      `pnpm fault: --${name} must be a whole number of at least ${min}, got ${JSON.stringify(value)}\n${USAGE}`,
    );
    process.exit(2);
  }
  return parsed;
};
if (values['durable-replicas'] !== undefined && !values.cluster) {
  console.error(`pnpm fault: --durable-replicas needs --cluster\n${USAGE}`);
  process.exit(2);
}
const claimIdleMs = values['claim-idle-ms'];
const killEvery = values['kill-every-ms'];
const bound = values['takeover-bound-ms'];
const takeoverBoundMs = bound === undefined ? undefined : number('takeover-bound-ms', bound, 1);
const report = await runFault({
  orders: number('orders', values.orders, 1),
  ...(values.seed !== undefined ? { seed: number('seed', values.seed) } : {}),
  ...(claimIdleMs !== undefined ? { claimIdleMs: number('claim-idle-ms', claimIdleMs, 100) } : {}),
  redisTrouble: !values['no-redis-trouble'] && !values.cluster,
  cluster: values.cluster,
  ...(values['durable-replicas'] !== undefined
    ? { durableReplicas: number('durable-replicas', values['durable-replicas']) }
    : {}),
  ...(killEvery !== undefined ? { killEveryMs: number('kill-every-ms', killEvery, 50) } : {}),
  settleTimeoutMs: 600_000,
  log: (line) => console.log(line),
});
console.log(formatReport(report));
const problems = problemsOf(report, { takeoverBoundMs });
console.log(problems.length === 0 ? 'OK: exactly once' : `FAILED:\n${problems.join('\n')}`);
process.exit(problems.length === 0 ? 0 : 1);
