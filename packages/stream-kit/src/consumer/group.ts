import { isRedisFault } from '../connection.ts';
import { fieldsFromReply } from '../stream.ts';
import type { ConsumerContext } from './context.ts';
import { pauseDelay } from './retry-policy.ts';

/**
 * The consumer group: created if missing (safe to repeat), and recreated where it stood if it is
 * lost (FLUSHALL, a restart without persistence, XGROUP DESTROY).
 */
export class GroupKeeper {
  /**
   * Where to recreate the group if it is lost: before the oldest entry that may not have been
   * acked when we last looked (its oldest pending entry, or anything delivered after that look).
   */
  private recreateFrom: string | undefined;

  constructor(
    private readonly ctx: ConsumerContext,
    /** Where a group created here starts: `'0'` or `'$'`. */
    private readonly startId: '0' | '$',
    /** The loop's wait, cut short at close. */
    private readonly sleep: (ms: number) => Promise<void>,
    private readonly isStopping: () => boolean,
  ) {}

  /**
   * Creates the group at `startId` unless it exists (`BUSYGROUP`), trying again with backoff
   * until it can or the subscription closes. A group that exists needs no write: while Redis is
   * out of memory, a read tells so and we go on.
   */
  async ensure(startId: string = this.startId): Promise<void> {
    const { redis, stream, group, log, where } = this.ctx;
    for (let attempt = 1; !this.isStopping(); attempt += 1) {
      try {
        await redis.xgroup('CREATE', stream.name, group, startId, 'MKSTREAM');
        log.info({ ...where, startId }, 'consumer group created');
        return;
      } catch (err) {
        if (err instanceof Error && err.message.startsWith('BUSYGROUP')) return;
        if (this.isStopping()) return;
        // XGROUP CREATE is a write: out of memory Redis refuses it even for a group that exists,
        // which a read can tell, so a consumer restarted meanwhile need not wait for memory.
        if (isRedisFault(err) && (await this.exists())) return;
        if (attempt === 1) log.warn({ ...where, err }, 'cannot create consumer group; retrying');
        await this.sleep(pauseDelay(attempt));
      }
    }
  }

  /**
   * Notes where a lost group must be recreated so that nothing unacked is lost: just before its
   * oldest pending entry, or after its last delivered entry if that is earlier (entries delivered
   * after this look come after it). Entries acked since are handed out again: the price of not
   * knowing, once the group is gone, which of them were. Called at start and with each reclaim
   * pass.
   */
  async markRecreatePoint(): Promise<void> {
    const { redis, stream, group } = this.ctx;
    // prettier-ignore
    const [summary, groups] = await Promise.all([
      redis.xpending(stream.name, group) as Promise<[number, string | null, string | null, unknown]>,
      redis.xinfo('GROUPS', stream.name) as Promise<unknown[][]>,
    ]);
    const info = groups.map((flat) => fieldsFromReply(flat.map(String))).find((g) => g.name === group);
    if (!info) return;
    const lastDelivered = info['last-delivered-id'] ?? '0-0';
    const oldestPending = summary[1];
    this.recreateFrom =
      oldestPending && compareIds(idBefore(oldestPending), lastDelivered) < 0
        ? idBefore(oldestPending)
        : lastDelivered;
  }

  /**
   * After the group vanished: recreates it early enough that no entry it had not acked is lost,
   * those of crashed consumers included: at the point `markRecreatePoint` last noted (at most a
   * reclaim interval ago), not at the start of the stream, which would hand out again every entry
   * ever handled. Entries acked since that look are handed out again; handlers must tolerate
   * repeats anyway. After a flush the stream is empty, and new entries have later IDs.
   */
  async recreate(): Promise<void> {
    const from = this.recreateFrom ?? (this.startId === '$' ? '$' : '0');
    this.ctx.log.warn(
      { ...this.ctx.where, from },
      'consumer group is gone (Redis restarted or flushed, or the group destroyed); recreating it',
    );
    await this.ensure(from);
  }

  private async exists(): Promise<boolean> {
    try {
      const groups = (await this.ctx.redis.xinfo('GROUPS', this.ctx.stream.name)) as unknown[][];
      return groups.some((flat) => fieldsFromReply(flat.map(String)).name === this.ctx.group);
    } catch {
      return false;
    }
  }
}

/** Orders stream entry IDs (`<ms>-<seq>`) as Redis does. */
export function compareIds(a: string, b: string): number {
  const [aMs, aSeq] = a.split('-').map(BigInt) as [bigint, bigint];
  const [bMs, bSeq] = b.split('-').map(BigInt) as [bigint, bigint];
  return aMs !== bMs ? (aMs < bMs ? -1 : 1) : aSeq === bSeq ? 0 : aSeq < bSeq ? -1 : 1;
}

/** The greatest entry ID below `id`: a group created there reads `id` next. */
export function idBefore(id: string): string {
  const [ms, seq] = id.split('-').map(BigInt) as [bigint, bigint];
  return seq > 0n ? `${ms}-${seq - 1n}` : `${ms - 1n}-18446744073709551615`;
}
