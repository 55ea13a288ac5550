import { expect, it } from 'vitest';
import { formatReport, problemsOf, runFault } from './support/fault.ts';

/*
 * The fault test, in a size that fits CI. `pnpm fault --orders 20000` runs a bigger one.
 */
it('pays, mails and texts every accepted order exactly once while consumers are killed or stopped and Redis restarts', async () => {
  const orders = Number(process.env.FAULT_ORDERS ?? 3_000);
  const report = await runFault({ orders });
  console.log(formatReport(report));

  expect(report.kills).toBeGreaterThan(0);
  expect(report.terms).toBeGreaterThan(0);
  expect(report.redisRestarts).toBe(1);
  expect(report.ordersAccepted).toBe(orders);
  expect(problemsOf(report)).toEqual([]);
}, 300_000);
