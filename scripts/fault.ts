/**
 * `pnpm fault [--orders N] [--seed S]`: the fault test at any size (the suite runs a small one).
 * Exit code 0 when every accepted order was paid, mailed and texted exactly once, with nothing
 * left pending and no dead letters.
 */
import { parseArgs } from 'node:util';
import { formatReport, problemsOf, runFault } from '../test/support/fault.ts';

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
const problems = problemsOf(report);
console.log(problems.length === 0 ? 'OK: exactly once' : `FAILED:\n${problems.join('\n')}`);
process.exit(problems.length === 0 ? 0 : 1);
