import { reconnectIfStalled } from '../connection.ts';
import { stillOurs, type ConsumerContext, type PendingInfo } from './context.ts';

/**
 * The leases on the entries this consumer works on (a batch read, an entry redelivered), with
 * when we last touched each in Redis. While an entry is tracked its lease is renewed every
 * `claimIdleMs / 3`, so that a slow but live handler keeps it; an entry another consumer took
 * over meanwhile is dropped. In the manner of BullMQ's LockManager: the keeper sees the loop only
 * through `isRunning`.
 */
export class LeaseKeeper {
  private readonly held = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;
  private renewing = false;
  /** Once closing, only the entries whose handlers run are renewed: the rest go to other consumers. */
  private runningOnly = false;

  constructor(
    private readonly ctx: ConsumerContext,
    private readonly claimIdleMs: number,
    /** Whether the handler of entry `id` is running now. */
    private readonly isRunning: (id: string) => boolean,
  ) {
    this.timer = setInterval(() => void this.renew(), Math.max(claimIdleMs / 3, 10));
    this.timer.unref();
  }

  /** Starts renewing the lease on `id`, last touched in Redis at `touchedAt`. */
  track(id: string, touchedAt = Date.now()): void {
    this.held.set(id, touchedAt);
  }

  /** Done with `id`: a renewal sent after its ack would find it gone and call it lost. */
  untrack(id: string): void {
    this.held.delete(id);
  }

  /** Whether `id` is still ours to handle (not taken over by another consumer meanwhile). */
  holds(id: string): boolean {
    return this.held.has(id);
  }

  /**
   * Hands back, at close, the entries held whose handlers never started (the rest of a batch, a
   * batch read ahead): XCLAIM to ourselves with IDLE `claimIdleMs` makes them look long idle, so
   * any other consumer takes them over at its next reclaim pass instead of `claimIdleMs` later (a
   * restarted instance usually comes back under a new name). Only those still ours: the minimum
   * idle time is the time since we touched them. From then on only running handlers' entries are
   * renewed. Best effort: if it fails they wait as before. Resolves to the IDs handed back.
   */
  async handBackUnstarted(): Promise<string[]> {
    this.runningOnly = true;
    const unstarted = [...this.held].filter(([id]) => !this.isRunning(id));
    for (const [id] of unstarted) this.held.delete(id);
    const handedBack: string[] = [];
    try {
      for (const [touchedAt, ids] of byTouch(unstarted)) {
        const { stream, group, consumer } = this.ctx;
        // prettier-ignore
        handedBack.push(...((await this.ctx.redis.xclaim(
          stream.name, group, consumer, stillOurs(Date.now() - touchedAt), ...ids,
          'IDLE', this.claimIdleMs, 'JUSTID',
        )) as string[]));
      }
    } catch (err) {
      this.ctx.log.debug({ ...this.ctx.where, err }, 'cannot hand back unstarted entries');
    }
    return handedBack;
  }

  /**
   * Forgets, after a gap in this consumer's liveness, the entries held whose handlers have not
   * started: another consumer may have taken them meanwhile, so they are not to be started from
   * the batch; the pass through the pending list takes back those still ours. Returns their IDs.
   */
  dropUnstarted(): string[] {
    const unstarted = [...this.held.keys()].filter((id) => !this.isRunning(id));
    for (const id of unstarted) this.held.delete(id);
    return unstarted;
  }

  /** Stops renewing. Safe to call twice. */
  close(): void {
    clearInterval(this.timer);
  }

  /**
   * Renews the leases: XCLAIM JUSTID to ourselves resets their idle time without counting a
   * delivery, and its minimum idle time (the time since we last touched them) makes it claim only
   * entries nobody touched since: still ours, that is. Ones it does not claim were taken over by
   * another consumer, which now handles them.
   */
  private async renew() {
    if (this.renewing || this.held.size === 0) return;
    const leased = this.runningOnly ? [...this.held].filter(([id]) => this.isRunning(id)) : [...this.held];
    if (leased.length === 0) return;
    this.renewing = true;
    const { redis, stream, group, consumer } = this.ctx;
    try {
      for (const [touchedAt, ids] of byTouch(leased)) {
        // prettier-ignore
        const kept = new Set((await redis.xclaim(
          stream.name, group, consumer, stillOurs(Date.now() - touchedAt), ...ids, 'JUSTID',
        )) as string[]);
        // Redis reset their idle time somewhere between `now` and this moment: taking this
        // moment keeps the next minimum idle time at or under their real idle time.
        const renewedAt = Date.now();
        const lost = ids.filter((id) => this.held.has(id) && !kept.has(id));
        for (const id of ids) if (kept.has(id) && this.held.has(id)) this.held.set(id, renewedAt);
        if (lost.length > 0) await this.checkLost(lost);
      }
    } catch (err) {
      reconnectIfStalled(redis, err, this.ctx.log, this.ctx.where);
      // The next renewal, a third of claimIdleMs later, tries again.
      this.ctx.log.debug({ ...this.ctx.where, err }, 'cannot renew leases');
    } finally {
      this.renewing = false;
    }
  }

  /**
   * Why entries were not renewed: acked meanwhile (a handler that acks in its own script), which
   * is no news; still ours (something touched them after we did: keep them); or held by another
   * consumer, which took them over: only that is a lost lease, worth a warning if the handler
   * still runs.
   */
  private async checkLost(ids: string[]) {
    const { redis, stream, group, consumer } = this.ctx;
    // prettier-ignore
    const owners = await Promise.all(ids.map((id) =>
      redis.xpending(stream.name, group, id, id, 1) as Promise<PendingInfo[]>,
    ));
    ids.forEach((id, i) => {
      if (!this.held.has(id)) return; // handled meanwhile
      const [owner] = owners[i]!;
      if (owner && owner[1] === consumer) {
        this.held.set(id, Date.now() - owner[2]);
        return;
      }
      this.held.delete(id);
      if (!owner) return; // acked
      const running = this.isRunning(id);
      this.ctx.log[running ? 'warn' : 'info'](
        { ...this.ctx.where, entryId: id, takenBy: owner[1] },
        running
          ? 'lost the lease on the entry being handled (the process stalled longer than claimIdleMs); another consumer may handle it too'
          : 'entry taken over by another consumer before its turn; skipping it',
      );
    });
  }
}

/** Entry IDs by when we last touched them in Redis: one XCLAIM per group. */
function byTouch(entries: [id: string, touchedAt: number][]): Map<number, string[]> {
  const groups = new Map<number, string[]>();
  for (const [id, at] of entries) {
    const ids = groups.get(at);
    if (ids) ids.push(id);
    else groups.set(at, [id]);
  }
  return groups;
}
