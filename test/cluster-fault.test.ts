import { expect, it } from 'vitest';
import { formatReport, problemsOf } from '../scripts/fault/report.ts';
import { runFault } from '../scripts/fault/run.ts';

/*
 * The fault run on a Redis Cluster (three masters with a replica each, AOF with fsync always), the
 * services with REDIS_CLUSTER=true, order-service with DURABLE_REPLICAS=1, and otherwise their
 * shipped settings (CLAIM_IDLE_MS 60 s): consumers killed, stopped and paused, every
 * payment-service instance down past the payment timeout, the master of order-events restarted,
 * then killed (SIGKILL) and replaced by its replica. `pnpm fault --cluster` runs it at any size;
 * `--durable-replicas 0` counts the accepted orders the failover loses without the wait.
 */

it('settles every accepted order exactly once on a Redis Cluster, losing none in a master failover, while consumers are killed, stopped or paused, payment-service is down past the timeout, and the master of order-events restarts', async () => {
  const orders = Number(process.env.FAULT_ORDERS ?? 1_500);
  const report = await runFault({ orders, cluster: true, redisTrouble: false });
  console.log(formatReport(report));

  expect(report.cluster).toBe(true);
  expect(report.claimIdleMs).toBeUndefined();
  expect(report.kills).toBeGreaterThan(0);
  expect(report.terms).toBeGreaterThan(0);
  expect(report.redisRestarts).toBe(1);
  expect(report.failovers).toBe(1);
  expect(report.durableReplicas).toBe(1);
  expect(report.lost).toBe(0);
  expect(report.outages).toBe(1);
  expect(report.states['CANCELLED payment-timeout']).toBeGreaterThan(0);
  expect(report.ordersAccepted).toBe(orders);
  expect(problemsOf(report)).toEqual([]);
}, 480_000);
