import { performance } from 'node:perf_hooks';
import { isRedisFault, openReaderConnection, reconnectIfStalled, type RedisClient } from '../connection.ts';
import { silentLogger } from '../logger.ts';
import { RENEW_LIVENESS, TAKE_FROM_DEAD } from '../scripts.ts';
import { slotName } from '../stream.ts';
import type { Settings } from './options.ts';
import type { ConsumerContext } from './context.ts';
import { sleep } from './waits.ts';

/**
 * How long a liveness mark lasts without renewal: a consumer not heard from for this long is
 * dead, and the others take its entries at once. Renewed every third of it, so one lost or late
 * renewal (a GC pause, a slow answer) does not kill a live consumer. A consumer wrongly judged
 * dead (a longer pause) costs no guarantee: it finds it lost its entries and lets go (see
 * `Liveness.holdsSince`), and the effects are idempotent anyway.
 */
export const LIVENESS_TTL_MS = 3_000;
/** How often the mark is renewed and the group checked for dead consumers. */
export const LIVENESS_CHECK_MS = LIVENESS_TTL_MS / 3;

/**
 * Where the liveness marks of `group`'s consumers on `stream` are kept: one hash, a field per
 * consumer holding `<deadline> <since>` in Redis's clock (ms): until when it is alive, and since
 * when it has been without a gap. For scripts of handlers that read it: see `CONSUMER_DEAD`.
 */
export function livenessKey(stream: string, group: string): string {
  // In the stream's hash slot: scripts read it with the stream's consumers (see `slotName`).
  return `${slotName(stream)}:alive:${group}`;
}

/**
 * This consumer's liveness mark, renewed on a connection of its own every `LIVENESS_CHECK_MS`
 * (the loop's connection may be blocked in XREADGROUP, and a slow handler must not make a live
 * consumer look dead), and what it tells the loop:
 * - `lapsed()`: whether this process has gone so long without a confirmed renewal that the others
 *   may take it for dead (it was paused: SIGSTOP, a long GC pause, a stalled Redis). It then starts
 *   no handler until a renewal gets through;
 * - `holdsSince(epoch)`: whether nothing of the kind happened since `epoch` (see `epoch`), so an
 *   entry taken in that epoch may still be ours;
 * - `onGap`: called when a renewal finds the mark had lapsed: the loop checks what it still holds.
 */
export class Liveness {
  private readonly redis: RedisClient;
  private readonly timer: NodeJS.Timeout;
  /** Renewals failed in a row. */
  private failures = 0;
  /** When (performance.now()) the last renewal that got through was sent: its deadline is later. */
  private confirmedAt: number;
  /** Grows at each gap found: entries taken before it may have been taken over since. */
  private gaps = 0;
  /** Whether a renewal has got through yet: the first always starts a new life, which is no gap. */
  private started = false;
  /** Closed: nothing is held any more, whatever a handler still running thinks. */
  private closed = false;
  /** The renewal on its way, if one is. */
  private renewal: Promise<void> | undefined;
  private markReady!: () => void;
  /**
   * Resolves once the first renewal got through: the loop reads nothing before it, since a mark
   * left by an earlier process of this consumer name may have lapsed, and others would take what
   * this one reads meanwhile.
   */
  readonly ready = new Promise<void>((resolve) => (this.markReady = resolve));
  /** Whether the lapse that has lasted too long was logged. */
  private warnedLapse = false;
  private readonly key: string;

  constructor(
    private readonly ctx: ConsumerContext,
    settings: Settings,
    private readonly onGap: () => void,
  ) {
    this.redis = openReaderConnection(
      settings.connection,
      silentLogger, // the loop's connection logs Redis's outages already
      `stream-kit:${ctx.group}:${ctx.consumer}:liveness`,
      LIVENESS_TTL_MS,
    );
    this.redis.defineCommand('streamKitRenewLiveness', { numberOfKeys: 1, lua: RENEW_LIVENESS });
    this.key = livenessKey(ctx.stream.name, ctx.group);
    // Not lapsed at start: nothing is held yet, and the first renewal goes out now.
    this.confirmedAt = performance.now();
    this.timer = setInterval(() => void this.renew(), LIVENESS_CHECK_MS);
    this.timer.unref();
    void this.renew();
  }

  private renew(): Promise<void> {
    return (this.renewal ??= this.renewOnce().finally(() => (this.renewal = undefined)));
  }

  /** The current epoch: pass it to `holdsSince` later. */
  get epoch(): number {
    return this.gaps;
  }

  /**
   * Whether the others may take this consumer for dead now: no renewal confirmed for most of the
   * mark's life. Measured from when the renewal was sent, which is no later than Redis set its
   * deadline; a fifth of the life is kept back for clocks that run apart.
   */
  lapsed(now = performance.now()): boolean {
    return this.closed || now - this.confirmedAt >= LIVENESS_TTL_MS * 0.8;
  }

  /** Whether this consumer has been alive without a gap since `epoch`, and is not lapsed now. */
  holdsSince(epoch: number): boolean {
    return epoch === this.gaps && !this.lapsed();
  }

  /**
   * Takes the entries of the group's dead consumers (their marks lapsed) to this one, whatever their
   * idle time, in one atomic step (two live consumers cannot both take an entry), unless this one
   * has itself been alive for less than a mark's life: after a pause of its own, or of Redis, the
   * others need that long to renew theirs. Consumers that keep no mark (another library, an older
   * stream-kit) are left to `claimIdleMs`. Resolves to the IDs taken and whom from.
   */
  async takeFromDead(count: number): Promise<{ ids: string[]; from: string[]; more: boolean }> {
    const { redis, stream, group, consumer } = this.ctx;
    // At most this many a call, whatever the number of dead consumers: one script must not hold
    // Redis for long. A full call means more may wait.
    const most = Math.min(count, 1_000);
    // prettier-ignore
    const [ids, from] = (await redis.eval(
      TAKE_FROM_DEAD, 2, stream.name, this.key, group, consumer, most, LIVENESS_TTL_MS,
    )) as [string[], string[]];
    return { ids, from, more: ids.length >= most };
  }

  /**
   * Marks this consumer dead (its deadline in the past), so that whatever it still holds (a
   * handler that outlived `closeTimeoutMs`) is taken at once, and closes the connection. Best
   * effort: if it fails, the mark lapses by itself.
   */
  async close(): Promise<void> {
    clearInterval(this.timer);
    // A handler still running (it outlived closeTimeoutMs) holds nothing from now on: others take
    // its entry at once, so `stillHeld()` must say so before they can.
    this.closed = true;
    this.gaps += 1;
    // Not while Redis is away: close() must not wait for it (the mark lapses by itself then). A
    // renewal still on its way goes first, or it would bring the mark back to life.
    if (this.redis.status === 'ready') {
      const marked = Promise.resolve(this.renewal)
        .then(() => this.redis.hset(this.key, this.ctx.consumer, '0 0'))
        .catch(() => {});
      await Promise.race([marked, sleep(500, { unref: true })]);
    }
    this.redis.disconnect();
  }

  private async renewOnce() {
    if (this.closed) return;
    const sentAt = performance.now();
    const previous = this.confirmedAt;
    const wasLapsed = this.lapsed(sentAt);
    try {
      const aliveForMs = (await (
        this.redis as unknown as { streamKitRenewLiveness(...args: unknown[]): Promise<number> }
      ).streamKitRenewLiveness(this.key, this.ctx.consumer, LIVENESS_TTL_MS)) as number;
      // Lapsed while this renewal was on its way (a slow answer): the loop may have skipped
      // entries meanwhile, which only a pass through its pending list finds again.
      const lapsedMeanwhile = this.lapsed();
      this.confirmedAt = sentAt;
      const first = !this.started;
      this.started = true;
      this.warnedLapse = false;
      if (first) {
        this.markReady();
        return;
      }
      // A gap: Redis found the mark expired (0: this renewal started a new life), or this process
      // went too long without one. Either way others may have taken our entries meanwhile.
      if (aliveForMs === 0 || wasLapsed || lapsedMeanwhile) {
        this.gaps += 1;
        // Info, not a warning: after a Redis restart or flush every consumer sees one, as expected.
        this.ctx.log.info(
          { ...this.ctx.where, silentForMs: Math.round(sentAt - previous) },
          'liveness mark lapsed (this process was paused, or Redis stalled): other consumers may have taken its entries; going on with what is still its own',
        );
        this.onGap();
      }
      this.failures = 0;
    } catch (err) {
      reconnectIfStalled(this.redis, err, this.ctx.log, this.ctx.where);
      // Redis away or in trouble is logged by the loop's own connection already; anything else (a
      // refused script, say: NOPERM) is worth a warning, once in a row.
      this.failures += 1;
      this.ctx.log[this.failures === 1 && !isRedisFault(err) ? 'warn' : 'debug'](
        { ...this.ctx.where, err },
        'cannot renew the liveness mark; if this lasts, other consumers will take this one for dead',
      );
      // The loop handles nothing while lapsed: say so once it lasts, whatever the cause.
      if (!this.warnedLapse && performance.now() - this.confirmedAt > 10_000) {
        this.warnedLapse = true;
        this.ctx.log.warn(
          { ...this.ctx.where, err },
          'liveness mark not renewed for over 10 s: this consumer handles nothing until it is',
        );
      }
    }
  }
}
