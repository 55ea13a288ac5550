import { CLAIM_RUN, FORGET_RUNS_IF_ACKED, UNCOUNT_RUNS } from '../scripts.ts';
import { slotName } from '../stream.ts';
import type { ConsumerContext } from './context.ts';

/**
 * How long the run count of an entry handled more than once is kept (see CLAIM_RUN): a count
 * left behind (its entry acked by the handler's own script, and this process gone before it
 * deleted the count) expires.
 */
export const RUNS_TTL_MS = 7 * 24 * 60 * 60 * 1000;

interface RunCommands {
  streamKitClaimRunBuffer(...args: unknown[]): Promise<unknown>;
  streamKitUncountRuns(...args: unknown[]): Promise<unknown>;
}

/**
 * How many times the handler ran for each entry: what `DeliveryContext.deliveryCount` and
 * `maxDeliveries` count. The first run writes nothing (the hot path); a redelivery is claimed and
 * counted in Redis in one script, in `{<stream>}:runs:<group>:<id>` (the stream's slot), so that any consumer that
 * takes the entry over counts on. Runs that must not count (a Redis fault, `RetryLaterError`,
 * never started) are taken off again, in Redis too.
 */
export class RunCounts {
  /**
   * Runs that must not count, by entry, not yet taken off its count in Redis (UNCOUNT_RUNS).
   * Kept until Redis takes them: in Redis, not here, so that another consumer that takes the
   * entry over sees the right count.
   */
  private readonly uncounted = new Map<string, number>();
  /** When `writeBack` may try again. */
  private retryAt = 0;
  /** Entries being handled whose run count is in Redis (claimed by `claim`): delete it when done. */
  private readonly inRedis = new Set<string>();

  constructor(private readonly ctx: ConsumerContext) {
    ctx.redis.defineCommand('streamKitClaimRun', { numberOfKeys: 2, lua: CLAIM_RUN });
    ctx.redis.defineCommand('streamKitUncountRuns', { numberOfKeys: 1, lua: UNCOUNT_RUNS });
  }

  /** Where the number of handler runs of entry `id` is kept. */
  key(id: string): string {
    return `${slotName(this.ctx.stream.name)}:runs:${this.ctx.group}:${id}`;
  }

  /**
   * Takes entry `id` with XCLAIM, if idle at least `minIdleMs` (still ours), and counts the run it
   * is taken for, in one step. Resolves to its fields and the number of this run, or undefined if
   * it is no longer ours (or was trimmed). Call `done(id)` when its run ends.
   */
  async claim(id: string, minIdleMs: number): Promise<{ fields: Buffer[]; run: number } | undefined> {
    const { redis, stream, group, consumer } = this.ctx;
    // prettier-ignore
    const claimed = (await (redis as unknown as RunCommands).streamKitClaimRunBuffer(
      stream.name, this.key(id), group, consumer, minIdleMs, id, RUNS_TTL_MS,
    )) as [id: Buffer, fields: Buffer[] | null, run: number] | null;
    if (!claimed) return undefined;
    this.inRedis.add(id);
    return { fields: claimed[1] ?? [], run: claimed[2] };
  }

  /** Whether entry `id`'s run count sits in Redis, to be deleted once the entry is done with. */
  inRedisFor(id: string): boolean {
    return this.inRedis.has(id);
  }

  /**
   * Deletes the run count of `id` if its entry is no longer pending (a handler that acks in its
   * own script resolved: `handlerAcks`); one left pending keeps counting. Best effort: a count
   * left behind expires.
   */
  forgetIfAcked(id: string): void {
    const { redis, stream, group } = this.ctx;
    redis.eval(FORGET_RUNS_IF_ACKED, 2, stream.name, this.key(id), group, id).catch(() => {});
  }

  /** The run of `id` claimed by `claim` has ended. */
  done(id: string): void {
    this.inRedis.delete(id);
  }

  /** A run of `id` that must not count: taken off at the next `writeBack`. */
  uncount(id: string): void {
    this.uncounted.set(id, (this.uncounted.get(id) ?? 0) + 1);
  }

  get hasUncounted(): boolean {
    return this.uncounted.size > 0;
  }

  /**
   * Takes the runs that must not count off their entries' counts in Redis. Those Redis refuses
   * (it is still in trouble) stay queued, and are tried again a second later at the earliest,
   * unless `force`d (at close).
   */
  async writeBack(force = false): Promise<void> {
    if (this.uncounted.size === 0 || (!force && Date.now() < this.retryAt)) return;
    const redis = this.ctx.redis as unknown as RunCommands;
    await Promise.all(
      [...this.uncounted].map(async ([id, runs]) => {
        try {
          await redis.streamKitUncountRuns(this.key(id), runs, RUNS_TTL_MS);
          const left = this.uncounted.get(id)! - runs;
          if (left > 0) this.uncounted.set(id, left);
          else this.uncounted.delete(id);
        } catch {
          this.retryAt = Date.now() + 1_000;
        }
      }),
    );
  }
}
