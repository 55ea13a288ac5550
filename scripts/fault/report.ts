import { DEFAULT_CLAIM_IDLE_MS } from './instance.ts';
import type { Histogram } from './outcome.ts';

export type { Histogram } from './outcome.ts';

/* What a fault run saw, what is wrong with it, and the lines `pnpm fault` prints. */

export interface FaultReport {
  seed: number;
  /** The consumers' `CLAIM_IDLE_MS`; undefined: the services' default. */
  claimIdleMs: number | undefined;
  ordersAccepted: number;
  /** Requests answered with something other than 202 (or not at all) and sent again with the same key. */
  retriedRequests: number;
  /** SIGKILLs of consumer instances. */
  kills: number;
  /** SIGTERMs of consumer instances: graceful stops in the middle of the work. */
  terms: number;
  redisRestarts: number;
  /** Whether the run had Redis trouble besides its restart. */
  redisTrouble: boolean;
  /** Out-of-memory windows in which Redis was seen refusing a write. */
  oomWindows: number;
  /** Stalls: DEBUG SLEEP and CLIENT PAUSE (WRITE, ALL). */
  stalls: number;
  /** What the Redis trouble was, one line per event, with when it began (restart included). */
  trouble: string[];
  /** Trouble that did not happen as planned: a window in which Redis took writes, a failed AOF rewrite. */
  troubleFailures: string[];
  /** `payment-events` entries per accepted order: all must be 1. */
  payments: Histogram;
  mails: Histogram;
  sms: Histogram;
  /** Payments, mails or SMS for orders nobody placed. */
  strays: number;
  /**
   * Calls to the sender per (order, channel), from its log lines. More than one is allowed only
   * when a process was SIGKILLed between the provider's answer and the record, at most one per
   * send in flight at such a kill; none, only when a SIGKILL took the log line with it.
   */
  sends: Histogram;
  /** SIGKILLs of notification-service instances. */
  notificationKills: number;
  /**
   * The most sends one SIGKILL of a notification instance can catch between the provider's
   * answer and the record: its handlers running at once, over its two subscriptions.
   */
  sendsInFlightPerKill: number;
  /** SIGTERMs to running instances that did not end in exit code 0 within their own 15 s limit. */
  badStops: string[];
  pending: Record<string, number>;
  deadLetters: Record<string, number>;
  /** Why entries were dead-lettered, if some were (see `Outcome.deadLetterReasons`). */
  deadLetterReasons: string[];
  durationMs: number;
}

/**
 * What is wrong with a run, as sentences; empty when every accepted order was paid, mailed and
 * texted exactly once, each notification reached the sender (twice only where a SIGKILL hit the
 * window the Guarantees leave open), nothing is pending, no entry was dead-lettered, and the Redis
 * trouble happened as planned (with `redisTrouble`, an out-of-memory window that refused writes
 * and three stalls).
 */
export function problemsOf(report: FaultReport): string[] {
  const problems: string[] = [];
  const onlyOnce = (histogram: Histogram) => Object.keys(histogram).join() === '1';
  for (const what of ['payments', 'mails', 'sms'] as const) {
    if (!onlyOnce(report[what])) problems.push(`${what} per order: ${JSON.stringify(report[what])}`);
  }
  if (report.badStops.length > 0) problems.push(`graceful stops that failed: ${report.badStops.join(', ')}`);
  if (report.strays > 0) problems.push(`${report.strays} effects for orders nobody placed`);
  // The sends are counted from the sender's log lines, which pino writes asynchronously: a SIGKILL
  // can take the last few with it. So a notification recorded as sent but not seen in the log is
  // allowed for each send in flight at a SIGKILL of a notification instance, no more; so is a repeat.
  const allowed = report.notificationKills * report.sendsInFlightPerKill;
  if ((report.sends[0] ?? 0) > allowed)
    problems.push(`${report.sends[0]} notifications never seen reaching the sender`);
  const extra = Object.entries(report.sends).reduce(
    (sum, [times, n]) => sum + Math.max(0, Number(times) - 1) * n,
    0,
  );
  if (extra > allowed)
    problems.push(
      `${extra} repeated sends, more than the ${report.notificationKills} SIGKILLs could cause (${allowed})`,
    );
  for (const [where, count] of Object.entries(report.pending))
    if (count !== 0) problems.push(`${count} pending in ${where}`);
  for (const [stream, count] of Object.entries(report.deadLetters))
    if (count !== 0) problems.push(`${count} in ${stream}`);
  problems.push(...report.troubleFailures);
  if (report.redisTrouble && report.oomWindows === 0) problems.push('no out-of-memory window refused writes');
  if (report.redisTrouble && report.stalls < 3) problems.push(`${report.stalls} stalls, not 3`);
  return problems;
}

/** The report as a few lines of text. */
export function formatReport(report: FaultReport): string {
  const show = (h: Histogram) =>
    Object.entries(h)
      .map(([times, orders]) => `${orders} orders x${times}`)
      .join(', ');
  const claim =
    report.claimIdleMs === undefined
      ? `CLAIM_IDLE_MS the services' default (${DEFAULT_CLAIM_IDLE_MS})`
      : `CLAIM_IDLE_MS ${report.claimIdleMs}`;
  return [
    `seed ${report.seed}, ${(report.durationMs / 1000).toFixed(1)} s, ${claim}`,
    `orders accepted: ${report.ordersAccepted} (${report.retriedRequests} requests retried with their Idempotency-Key)`,
    `faults: ${report.kills} SIGKILLs and ${report.terms} SIGTERMs of consumer instances, ${report.redisRestarts} Redis restart`,
    report.redisTrouble
      ? `redis trouble: ${plural(report.oomWindows, 'out-of-memory window')}, ${plural(report.stalls, 'stall')}`
      : 'redis trouble: none but the restart (--no-redis-trouble)',
    ...report.trouble.map((line) => `  at ${line}`),
    `payments per order: ${show(report.payments)}`,
    `mails per order:    ${show(report.mails)}`,
    `SMS per order:      ${show(report.sms)}`,
    `sender calls per (order, channel): ${show(report.sends).replaceAll('orders', 'notifications')} (${report.notificationKills} notification-service SIGKILLs)`,
    `strays: ${report.strays}; pending: ${JSON.stringify(report.pending)}; dead letters: ${JSON.stringify(report.deadLetters)}`,
    ...report.deadLetterReasons.slice(0, 10).map((reason) => `  dead-lettered: ${reason}`),
    ...(report.deadLetterReasons.length > 10
      ? [`  ... and ${report.deadLetterReasons.length - 10} more reasons`]
      : []),
  ].join('\n');
}

const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;
