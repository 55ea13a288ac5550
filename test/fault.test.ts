import { expect, it } from 'vitest';
import { formatReport, runFault } from './support/fault.ts';

/*
 * The fault test, in a size that fits CI. `pnpm fault --orders 20000` runs a bigger one.
 */
it('pays, mails and texts every accepted order exactly once while consumers are killed or stopped and Redis restarts', async () => {
  const report = await runFault({ orders: Number(process.env.FAULT_ORDERS ?? 3_000) });
  console.log(formatReport(report));

  const all = { 1: report.ordersAccepted };
  expect(report.kills).toBeGreaterThan(0);
  expect(report.terms).toBeGreaterThan(0);
  expect(report.redisRestarts).toBe(1);
  expect({ payments: report.payments, mails: report.mails, sms: report.sms }).toEqual({
    payments: all,
    mails: all,
    sms: all,
  });
  expect(report.strays).toBe(0);
  expect(Object.values(report.pending)).toEqual([0, 0, 0]);
  expect(Object.values(report.deadLetters)).toEqual([0, 0]);
}, 300_000);
