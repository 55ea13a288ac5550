import { DEFAULT_CLAIM_IDLE_MS, PAUSE_MS } from './instance.ts';
import type { Histogram } from './outcome.ts';
import type { Naming, Takeovers } from './takeover.ts';

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
  /** Pauses of consumer instances: SIGSTOP, then SIGCONT after `PAUSE_MS` (unless killed meanwhile). */
  pauses: number;
  /**
   * For each SIGKILL of a consumer instance, the entries it held (pending under its name right
   * after the kill) and how long each took to be acked, by anyone: apart for the instances under
   * a fixed name, whose restart takes its own entries back at once, and those named per start,
   * whose entries another instance must take over.
   */
  takeovers: Record<Naming, Takeovers>;
  redisRestarts: number;
  /** Whether the run had Redis trouble besides its restart. */
  redisTrouble: boolean;
  /** Whether it ran on a Redis Cluster (three masters, a replica each), the services with REDIS_CLUSTER=true. */
  cluster?: boolean;
  /** order-service's DURABLE_REPLICAS: a 202 waited for that many replicas. */
  durableReplicas?: number;
  /** Masters killed (SIGKILL) and replaced by their replica. */
  failovers?: number;
  /** Orders answered 202 that order-events does not hold at the end: lost in a failover. */
  lost: number;
  /** Out-of-memory windows in which Redis was seen refusing a write. */
  oomWindows: number;
  /** Stalls: DEBUG SLEEP and CLIENT PAUSE (WRITE, ALL). */
  stalls: number;
  /** Windows in which every payment-service instance was down for longer than the payment timeout. */
  outages: number;
  /** order-service's `PAYMENT_TIMEOUT_MS` in the run. */
  paymentTimeoutMs: number;
  /**
   * How long after the last fault every accepted order was `PAID` or `CANCELLED` (looked at about
   * every second); undefined: never, within the settling.
   */
  finalAfterMs: number | undefined;
  /** What the Redis trouble was, one line per event, with when it began (restart included). */
  trouble: string[];
  /** Trouble that did not happen as planned: a window in which Redis took writes, a failed AOF rewrite. */
  troubleFailures: string[];
  /** Charges (`payment-completed`) per accepted order: none may be above 1. */
  payments: Histogram;
  mails: Histogram;
  sms: Histogram;
  /** Where the accepted orders ended (see `Outcome.states`): each `PAID` or `CANCELLED ...`. */
  states: Record<string, number>;
  /** Orders whose effects do not match where they ended (see `Outcome.mismatches`): none. */
  mismatches: string[];
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
  /** Pauses of notification-service instances. */
  notificationPauses: number;
  /**
   * The most sends one SIGKILL (or pause) of a notification instance can catch between the
   * provider's answer and the record: its handlers running at once, over its two subscriptions.
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
 * How long after the faults stop every order may take to be PAID or CANCELLED beyond the payment
 * timeout: a takeover of the entries a fault left behind (about 3 s), the timeouts' next look.
 */
export const FINAL_MARGIN_MS = 10_000;

/** What `problemsOf` checks besides exactly once. */
export interface ProblemOptions {
  /**
   * The most the p99 of the per-start instances' takeover times may be, in ms, or undefined: not
   * checked. Only the entries whose wait overlapped no Redis trouble and had a live peer count
   * (`Takeovers.clearMs`): out of memory or held, or with the other instance killed or paused too,
   * nobody can ack. A run with no such entry has nothing to check (its report says `none`).
   * @defaultValue undefined
   */
  takeoverBoundMs?: number;
}

/**
 * What is wrong with a run, as sentences; empty when every accepted order ended paid or cancelled
 * with its effects exactly once (a paid order charged, mailed and texted once; a cancelled one
 * with each charge refunded once and its notices: see `Outcome.mismatches`), each notification reached the sender (twice only where a SIGKILL or a
 * pause hit the window the Guarantees leave open), nothing is pending, no entry was
 * dead-lettered, the Redis trouble happened as planned (with `redisTrouble`, an out-of-memory
 * window that refused writes and three stalls), and, with `takeoverBoundMs`, the per-start
 * instances' entries were taken over in time.
 */
export function problemsOf(report: FaultReport, options: ProblemOptions = {}): string[] {
  const problems: string[] = [];
  if (Object.keys(report.payments).some((times) => Number(times) > 1))
    problems.push(`payments per order: ${JSON.stringify(report.payments)}`);
  const unsettled = Object.entries(report.states).filter(([state]) => !/^(PAID|CANCELLED)\b/.test(state));
  if (unsettled.length > 0)
    problems.push(`orders not settled: ${JSON.stringify(Object.fromEntries(unsettled))}`);
  if (report.mismatches.length > 0)
    problems.push(`orders whose effects do not match where they ended: ${report.mismatches.join('; ')}`);
  if (report.badStops.length > 0) problems.push(`graceful stops that failed: ${report.badStops.join(', ')}`);
  if (report.strays > 0) problems.push(`${report.strays} effects for orders nobody placed`);
  if (report.lost > 0)
    problems.push(
      `${report.lost} accepted orders lost (DURABLE_REPLICAS ${report.durableReplicas ?? 0}): answered 202, not on order-events`,
    );
  // The sends are counted from the sender's log lines. A service writes each line to stdout at once
  // while the pipe has room, but when this run's reading lags behind, lines wait in the process's
  // memory, and a SIGKILL takes them with it. So a notification recorded as sent but not seen in
  // the log is allowed for each send in flight at a SIGKILL of a notification instance, no more;
  // so is a repeat.
  const unseen = report.notificationKills * report.sendsInFlightPerKill;
  if ((report.sends[0] ?? 0) > unseen)
    problems.push(`${report.sends[0]} notifications never seen reaching the sender`);
  // A pause long enough for another instance to take the entries over is, for a send already on
  // its way to the provider, a crash: the other sends it again, and the paused one, let go,
  // records its own. So each pause of a notification instance allows as many repeats as a SIGKILL
  // (it loses no log line: the process lives on). The records stay exactly once (checked above).
  const faults = report.notificationKills + report.notificationPauses;
  const repeats = faults * report.sendsInFlightPerKill;
  const extra = Object.entries(report.sends).reduce(
    (sum, [times, n]) => sum + Math.max(0, Number(times) - 1) * n,
    0,
  );
  if (extra > repeats)
    problems.push(
      `${extra} repeated sends, more than the ${report.notificationKills} SIGKILLs and ${report.notificationPauses} pauses could cause (${repeats})`,
    );
  for (const [where, count] of Object.entries(report.pending))
    if (count !== 0) problems.push(`${count} pending in ${where}`);
  for (const [stream, count] of Object.entries(report.deadLetters))
    if (count !== 0) problems.push(`${count} in ${stream}`);
  problems.push(...report.troubleFailures);
  if (report.redisTrouble && report.oomWindows === 0) problems.push('no out-of-memory window refused writes');
  if (report.redisTrouble && report.stalls < 3) problems.push(`${report.stalls} stalls, not 3`);
  if (report.outages !== 1) problems.push(`${report.outages} payment-service outages, not 1`);
  const finalBound = report.paymentTimeoutMs + FINAL_MARGIN_MS;
  if (report.finalAfterMs === undefined || report.finalAfterMs > finalBound)
    problems.push(
      `orders final ${report.finalAfterMs === undefined ? 'never' : `${sec(report.finalAfterMs)} s`} after the faults stopped, over PAYMENT_TIMEOUT_MS plus ${FINAL_MARGIN_MS / 1000} s (${sec(finalBound)} s)`,
    );
  if (options.takeoverBoundMs !== undefined) {
    const p99 = summary(report.takeovers.perStart.clearMs)?.p99;
    if (p99 !== undefined && p99 > options.takeoverBoundMs)
      problems.push(
        `takeover of a per-start instance's entries: p99 ${p99} ms, over the bound of ${options.takeoverBoundMs} ms`,
      );
  }
  return problems;
}

/** Count, median, 99th percentile and maximum of some values. */
export interface Summary {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

/**
 * The `Summary` of `values` (in any order), or undefined for none. Percentiles by nearest rank:
 * the smallest value with at least p% of the values at or below it, always one of the values.
 */
export function summary(values: readonly number[]): Summary | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p: number) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!;
  return { count: sorted.length, p50: rank(50), p99: rank(99), max: sorted.at(-1)! };
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
    `seed ${report.seed}, ${(report.durationMs / 1000).toFixed(1)} s, ${claim}${report.cluster ? ', on a Redis Cluster of three masters with a replica each' : ''}`,
    `orders accepted: ${report.ordersAccepted} (${report.retriedRequests} requests retried with their Idempotency-Key)${report.cluster ? `; DURABLE_REPLICAS ${report.durableReplicas ?? 0}; lost: ${report.lost}` : ''}`,
    `faults: ${report.kills} SIGKILLs, ${report.terms} SIGTERMs and ${report.pauses} pauses (SIGSTOP, SIGCONT ${PAUSE_MS.min / 1000}-${PAUSE_MS.max / 1000} s later) of consumer instances, ${report.redisRestarts} Redis restart`,
    report.redisTrouble
      ? `redis trouble: ${plural(report.oomWindows, 'out-of-memory window')}, ${plural(report.stalls, 'stall')}`
      : 'redis trouble: none but the restart (--no-redis-trouble)',
    ...report.trouble.map((line) => `  at ${line}`),
    `orders ended: ${Object.entries(report.states)
      .map(([state, n]) => `${n} ${state}`)
      .join(
        ', ',
      )}; all final ${report.finalAfterMs === undefined ? 'never' : `${sec(report.finalAfterMs)} s`} after the faults stopped (bound: PAYMENT_TIMEOUT_MS ${sec(report.paymentTimeoutMs)} s + ${FINAL_MARGIN_MS / 1000} s)`,
    `payments per order: ${show(report.payments)}`,
    `mails per order:    ${show(report.mails)}`,
    `SMS per order:      ${show(report.sms)}`,
    `takeover after SIGKILL, fixed names (the restart takes its own back): ${takeoverLine(report.takeovers.fixed)}`,
    `takeover after SIGKILL, per-start names (another instance takes over): ${takeoverLine(report.takeovers.perStart)}`,
    `sender calls per (order, channel): ${show(report.sends).replaceAll('orders', 'notifications')} (${report.notificationKills} notification-service SIGKILLs, ${plural(report.notificationPauses, 'pause')})`,
    `strays: ${report.strays}; pending: ${JSON.stringify(report.pending)}; dead letters: ${JSON.stringify(report.deadLetters)}`,
    ...report.deadLetterReasons.slice(0, 10).map((reason) => `  dead-lettered: ${reason}`),
    ...(report.deadLetterReasons.length > 10
      ? [`  ... and ${report.deadLetterReasons.length - 10} more reasons`]
      : []),
  ].join('\n');
}

const plural = (n: number, what: string, many = `${what}s`) => `${n} ${n === 1 ? what : many}`;

/** `12 SIGKILLs, 80 entries held: p50 61.0 s, p99 89.9 s, max 90.2 s; 60 with a live peer and no Redis trouble: ...` */
function takeoverLine(takeovers: Takeovers): string {
  const times = (values: number[]) => {
    const s = summary(values);
    return s === undefined ? 'none' : `p50 ${sec(s.p50)} s, p99 ${sec(s.p99)} s, max ${sec(s.max)} s`;
  };
  return [
    `${plural(takeovers.kills, 'SIGKILL')}, ${plural(takeovers.ms.length, 'entry', 'entries')} held and acked: ${times(takeovers.ms)}`,
    `${takeovers.clearMs.length} with a live peer and no Redis trouble: ${times(takeovers.clearMs)}`,
    ...(takeovers.unhandled > 0 ? [`${takeovers.unhandled} never acked`] : []),
  ].join('; ');
}

const sec = (ms: number) => (ms / 1000).toFixed(1);
