/**
 * `pnpm fault [--orders N] [--seed S]`: the fault test at any size (the suite runs a small one).
 * Exit code 0 when every accepted order was paid, mailed and texted exactly once, with nothing
 * left pending and no dead letters.
 */
import { parseArgs } from 'node:util';
import { formatReport, runFault } from '../test/support/fault.ts';

const { values } = parseArgs({
  options: { orders: { type: 'string', default: '5000' }, seed: { type: 'string' } },
});
const report = await runFault({
  orders: Number(values.orders),
  ...(values.seed ? { seed: Number(values.seed) } : {}),
  settleTimeoutMs: 600_000,
  log: (line) => console.log(line),
});
console.log(formatReport(report));
const once = (histogram: Record<number, number>) => Object.keys(histogram).join() === '1';
const ok =
  once(report.payments) &&
  once(report.mails) &&
  once(report.sms) &&
  report.strays === 0 &&
  Object.values(report.pending).every((n) => n === 0) &&
  Object.values(report.deadLetters).every((n) => n === 0);
console.log(ok ? 'OK: exactly once' : 'FAILED');
process.exit(ok ? 0 : 1);
