import { expect, it } from 'vitest';
import { formatReport, problemsOf } from '../scripts/fault/report.ts';
import { runFault } from '../scripts/fault/run.ts';

/*
 * The fault run on a Redis Cluster (three masters with a replica each, AOF with fsync always), the
 * services with REDIS_CLUSTER=true and otherwise their shipped settings (CLAIM_IDLE_MS 60 s):
 * consumers killed, stopped and paused, every payment-service instance down past the payment
 * timeout, and the master of order-events restarted. `pnpm fault --cluster` runs it at any size.
 */

it('settles every accepted order exactly once on a Redis Cluster, while consumers are killed, stopped or paused, payment-service is down past the timeout, and the master of order-events restarts', async () => {
  const orders = Number(process.env.FAULT_ORDERS ?? 1_500);
  const report = await runFault({ orders, cluster: true, redisTrouble: false });
  console.log(formatReport(report));

  expect(report.cluster).toBe(true);
  expect(report.claimIdleMs).toBeUndefined();
  expect(report.kills).toBeGreaterThan(0);
  expect(report.terms).toBeGreaterThan(0);
  expect(report.redisRestarts).toBe(1);
  expect(report.outages).toBe(1);
  expect(report.states['CANCELLED payment-timeout']).toBeGreaterThan(0);
  expect(report.ordersAccepted).toBe(orders);
  expect(problemsOf(report)).toEqual([]);
}, 480_000);
