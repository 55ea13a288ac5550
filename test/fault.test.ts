import { expect, it } from 'vitest';
import { formatReport, problemsOf } from '../scripts/fault/report.ts';
import { runFault } from '../scripts/fault/run.ts';

/*
 * The fault test, in a size that fits CI, at the services' shipped CLAIM_IDLE_MS (60 s): what
 * users run. `pnpm fault --orders 20000` runs a bigger one, `--claim-idle-ms 1000` a quicker one.
 */
it('pays, mails and texts every accepted order exactly once while consumers are killed or stopped and Redis runs out of memory, stalls and restarts', async () => {
  const orders = Number(process.env.FAULT_ORDERS ?? 3_000);
  const report = await runFault({ orders });
  console.log(formatReport(report));

  expect(report.claimIdleMs).toBeUndefined();
  expect(report.kills).toBeGreaterThan(0);
  expect(report.terms).toBeGreaterThan(0);
  expect(report.redisRestarts).toBe(1);
  expect(report.oomWindows).toBe(1);
  expect(report.stalls).toBe(3);
  expect(report.ordersAccepted).toBe(orders);
  expect(problemsOf(report)).toEqual([]);
}, 480_000);
