/*
 * When things are tried again: a failed entry (its retry schedule), and the loop itself while
 * Redis fails. The one place to change either backoff.
 */

/** Retries wait `retryDelayMs`, doubling with each run, up to this. */
export const MAX_RETRY_DELAY_MS = 60_000;

/** The wait after run number `run` of an entry failed: `baseMs` after the first, doubling after each one after. */
export function retryDelay(baseMs: number, run: number): number {
  return Math.min(baseMs * 2 ** Math.max(run - 1, 0), MAX_RETRY_DELAY_MS);
}

/** The loop's wait after its `failures`-th failure in a row (Redis down or refusing): 200 ms doubling to 5 s. */
export function pauseDelay(failures: number): number {
  return Math.min(100 * 2 ** failures, 5_000);
}

/**
 * When each failed entry of this consumer is due for its next run. Kept here, not read off the
 * entries' idle time, which any XAUTOCLAIM pass (ours included) resets.
 */
export class RetrySchedule {
  private readonly due = new Map<string, number>();
  /** When the first entry is due again; 0 when none waits. */
  private next = 0;

  constructor(private readonly baseMs: number) {}

  /** When the first entry is due again; 0 when none waits. */
  get nextAt(): number {
    return this.next;
  }

  /** Run number `run` of entry `id` did not finish it: it is due again after `retryDelay`. */
  failed(id: string, run: number, now = Date.now()): void {
    const at = now + retryDelay(this.baseMs, run);
    this.due.set(id, at);
    this.wakeAt(at);
  }

  /** The entry is done with (acked, dead-lettered, or no longer ours). */
  forget(id: string): void {
    this.due.delete(id);
  }

  /**
   * When pending entry `id` is due: as noted when it failed here, or, for one this process never
   * saw fail (left by an earlier run, or taken over), from its delivery count and idle time.
   */
  dueAt(id: string, deliveries: number, idleMs: number, now = Date.now()): number {
    let at = this.due.get(id);
    if (at === undefined) {
      at = now + retryDelay(this.baseMs, deliveries) - idleMs;
      this.due.set(id, at);
    }
    return at;
  }

  /**
   * When pending entry `id` is due in a subscription that keeps order: as noted when it failed
   * here, else now. An entry it did not see fail (the rest of a batch stopped at a failure, what an
   * earlier owner of the partition left) must not wait out a backoff its delivery count suggests:
   * everything after it waits too.
   */
  dueInOrder(id: string, now = Date.now()): number {
    return this.due.get(id) ?? now;
  }

  /**
   * Entries taken from a dead consumer: due now. They did not fail; their consumer died (the few
   * that had failed there lose the rest of their wait, which is no harm).
   */
  dueNow(ids: readonly string[], now = Date.now()): void {
    for (const id of ids) this.due.set(id, now);
    if (ids.length > 0) this.wakeAt(now);
  }

  /** Makes sure the loop looks at its pending list again by `at`. */
  wakeAt(at: number): void {
    if (this.next === 0 || at < this.next) this.next = at;
  }

  /** The loop is about to go through the due entries: they set the next wake-up anew. */
  taken(): void {
    this.next = 0;
  }

  /** Forgets entries no longer in our pending list, so the map does not only grow. */
  keepOnly(listed: ReadonlySet<string>): void {
    for (const id of this.due.keys()) if (!listed.has(id)) this.due.delete(id);
  }

  clear(): void {
    this.due.clear();
  }
}
