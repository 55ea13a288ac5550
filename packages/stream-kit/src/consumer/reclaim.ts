import { DELETE_IDLE_CONSUMERS } from '../scripts.ts';
import { livenessKey } from './liveness.ts';
import { runPool } from './pool.ts';
import { stillOurs, type ConsumerContext, type PendingInfo } from './context.ts';
import type { OutcomeParts } from './outcomes.ts';
import type { RetrySchedule } from './retry-policy.ts';

/*
 * Pending entries: this consumer's own (left by an earlier run under its name, or failed and due
 * again), and those other consumers left idle too long (their process crashed, or restarted
 * under a new name), with the group's housekeeping.
 */

/**
 * Goes through this consumer's own pending list (XPENDING, a page of `count` at a time) and calls
 * `redeliver` for each entry due: all of them (`'all'`), or those whose retry time has come
 * (`'due'`; the others set the schedule's next wake-up), up to `concurrency` at once, in the list's
 * order (one at a time keeps it, as new entries do). `ordered`: the pass ends at the first entry
 * not due yet, as nothing after it may run before it. `endOfPage` runs after each page (the acks
 * of its entries go out there). Stops early once `isStopping()`; throws the first error
 * `redeliver` threw, once those under way have ended.
 */
export async function walkOwnPending(
  ctx: ConsumerContext,
  {
    mode,
    count,
    concurrency = 1,
    ordered = false,
    retries,
    isStopping,
  }: {
    mode: 'all' | 'due';
    ordered?: boolean;
    count: number;
    /** How many entries are redelivered at once: the subscription's `concurrency`. */
    concurrency?: number;
    retries: RetrySchedule;
    isStopping: () => boolean;
  },
  redeliver: (id: string, idleMs: number) => Promise<void>,
  endOfPage: () => Promise<void>,
): Promise<void> {
  const { redis, stream, group, consumer } = ctx;
  let start = '-';
  const listed = new Set<string>();
  for (;;) {
    // prettier-ignore
    const page = (await redis.xpending(stream.name, group, start, '+', count, consumer)) as PendingInfo[];
    const fetchedAt = Date.now();
    const dueNow: [id: string, idleMs: number][] = [];
    let waiting = false;
    for (const [id, , idleMs, deliveries] of page) {
      listed.add(id);
      if (waiting) continue;
      const due = ordered
        ? retries.dueInOrder(id)
        : retries.dueAt(id, deliveries, idleMs + Date.now() - fetchedAt);
      if (mode === 'due' && due > Date.now()) {
        retries.wakeAt(due);
        waiting = ordered;
      } else dueNow.push([id, idleMs]);
    }
    if (isStopping()) return;
    const { error } = await runPool(
      dueNow,
      concurrency,
      // Idle time goes on growing while earlier entries of the page are handled.
      ([id, idleMs]) => redeliver(id, idleMs + Date.now() - fetchedAt),
      isStopping,
    );
    if (error !== undefined) throw error;
    if (isStopping()) return;
    await endOfPage();
    if (waiting) return;
    if (page.length < count) break;
    start = `(${page.at(-1)![0]}`;
  }
  // Entries that failed here but are no longer ours (taken over and handled elsewhere, acked by
  // the handler's own script, trimmed): forget their retry times, or the map only grows.
  retries.keepOnly(listed);
}

/**
 * Takes over, with XAUTOCLAIM, the entries other consumers of the group have held longer than
 * `claimIdleMs`, following the cursor through the whole pending list. JUSTID moves them to this
 * consumer without counting a delivery; the own pending pass then runs them after the retry delay
 * their delivery count calls for. (It may take this consumer's own entries too, which only resets
 * their idle time: their retry times are kept in the retry schedule.) Entries trimmed while
 * pending are acked, and their run counts (`runsKey`) deleted. Resolves to how many were taken.
 */
export async function takeOverIdle(
  ctx: ConsumerContext,
  {
    claimIdleMs,
    count,
    isStopping,
    runsKey,
  }: {
    claimIdleMs: number;
    count: number;
    isStopping: () => boolean;
    runsKey: (id: string) => string;
  },
): Promise<number> {
  const { redis, stream, group, consumer, log, where } = ctx;
  let cursor = '0-0';
  let taken = 0;
  do {
    // prettier-ignore
    const [next, ids, deleted] = (await redis.xautoclaim(
      stream.name, group, consumer, claimIdleMs, cursor, 'COUNT', count, 'JUSTID',
    )) as [next: string, ids: string[], deleted?: string[]];
    cursor = next;
    if (deleted?.length) {
      // Trimmed while pending: nothing is left to handle. Redis 7 has already dropped them from
      // the pending list; the XACK makes sure of it.
      await redis.xack(stream.name, group, ...deleted);
      await redis.del(...deleted.map(runsKey));
      log.warn(
        { ...where, entryIds: deleted },
        'pending entries were trimmed from the stream before anyone handled them; acked',
      );
    }
    if (ids.length === 0) continue;
    taken += ids.length;
    log.info({ ...where, count: ids.length }, 'took over entries left idle by other consumers');
  } while (cursor !== '0-0' && !isStopping());
  return taken;
}

/**
 * Removes, in one atomic script, the group's consumers idle at least `afterMs` that hold nothing
 * (never this one), with their liveness marks: consumers of processes long gone do not pile up,
 * and one that still holds entries is never removed (that would lose them).
 */
export async function deleteIdleConsumers(ctx: ConsumerContext, afterMs: number): Promise<void> {
  const { redis, stream, group, consumer, log, where } = ctx;
  const removed = (await redis.eval(
    DELETE_IDLE_CONSUMERS,
    2,
    stream.name,
    livenessKey(stream.name, group),
    group,
    afterMs,
    consumer,
  )) as string[];
  if (removed.length > 0) log.info({ ...where, removed }, 'removed idle consumers that held no entries');
}

/**
 * Takes pending entry `id` of ours and counts the run it is taken for (see `RunCounts.claim`),
 * then hands its fields and run number to `handle`, holding its lease meanwhile. The minimum idle
 * time is the one it has if nobody touched it since XPENDING said `idleMs`: if another consumer
 * has taken it since, it is not ours to handle.
 */
export async function redeliver(
  ctx: ConsumerContext,
  { runs, leases, retries }: OutcomeParts,
  id: string,
  idleMs: number,
  handle: (fields: Buffer[], run: number) => Promise<void> | undefined,
): Promise<void> {
  const claimed = await runs.claim(id, stillOurs(idleMs));
  if (!claimed) {
    retries.forget(id);
    // Taken by another consumer meanwhile, or trimmed from the stream (XCLAIM then drops it).
    ctx.log.debug({ ...ctx.where, entryId: id }, 'pending entry no longer ours to handle');
    return;
  }
  leases.track(id);
  try {
    await handle(claimed.fields, claimed.run);
  } finally {
    leases.untrack(id);
    runs.done(id);
  }
}
