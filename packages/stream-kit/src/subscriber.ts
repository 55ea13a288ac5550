import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { ServerClock } from './clock.ts';
import { isNoGroupError, isRedisFault, openReaderConnection, type Connection } from './connection.ts';
import { NonRetryableError, RetryLaterError } from './errors.ts';
import { silentLogger, type Logger } from './logger.ts';
import {
  decode,
  defaultDeadLetterStream,
  fieldsFromReply,
  maxIdAheadMs,
  textFields,
  type EventOf,
  type Fields,
  type StreamDefinition,
} from './stream.ts';
import { CLAIM_RUN, DELETE_IDLE_CONSUMERS, UNCOUNT_RUNS } from './scripts.ts';

/** Where an event came from, given to the handler beside it. */
export interface DeliveryContext {
  /** The entry ID, e.g. `1700000000000-0`; unique within the stream. */
  readonly id: string;
  readonly stream: string;
  readonly group: string;
  /** The consumer it was delivered to: this subscription's. */
  readonly consumer: string;
  /**
   * Which run of the handler this is for the entry: 1 the first time, then one more each time it
   * is handled again, by this consumer or another. Runs that Redis's trouble cut short (out of
   * memory, a timeout, a lost connection) or that ended in `RetryLaterError` are not counted;
   * nor are deliveries whose handler never ran (Redis's own delivery counter counts those).
   */
  readonly deliveryCount: number;
}

/**
 * Handles one event. The outcome is the acknowledgement:
 * - resolves: the entry is acked (XACK) and never delivered to this group again;
 * - throws: the entry stays pending and is delivered again, `retryDelayMs` after its first
 *   delivery, then after twice as long each time (at most 60 s); once the handler has failed on
 *   its run number `maxDeliveries` it goes to the dead-letter stream instead;
 * - throws `NonRetryableError`: the entry goes to the dead-letter stream at once;
 * - throws `RetryLaterError`: the entry comes back `retryDelayMs` later; the run does not count;
 * - throws an error from Redis or the connection (out of memory, a timeout, `READONLY`, ...;
 *   also when wrapped as another error's `cause`): not the entry's fault, so the run does not
 *   count; the subscription pauses, backing off, and handles the entry again once Redis works.
 * Delivery is at least once: a crash between the handler's effect and the ack delivers the entry
 * again (to this consumer when it restarts under the same name, or to another one after
 * `claimIdleMs`), so effects must tolerate repeats.
 */
export type Handler<T> = (event: T, context: DeliveryContext) => Promise<void> | void;

/** Options of `subscribe()`; all but `connection` have defaults. */
export interface SubscribeOptions {
  /** A Redis URL, or a client whose settings to copy. The subscription always opens its own connection. */
  connection: Connection;
  /** @defaultValue silent */
  logger?: Logger;
  /** Entries read per XREADGROUP. @defaultValue 10 */
  count?: number;
  /**
   * How many handlers may run at once. 1 handles entries one after another, in their order in the
   * stream. More handle the entries of a batch side by side, at most this many at a time, so their
   * order is lost (use it for independent events, such as one order each). Either way one batch
   * at most is read ahead while another is handled: at most twice `count` entries are held per
   * subscription, and a slow handler slows the reads instead of piling entries up in memory.
   * @defaultValue 1
   */
  concurrency?: number;
  /** How long one XREADGROUP waits for new entries, in ms. @defaultValue 2000 */
  blockMs?: number;
  /**
   * Runs of the handler after which a failing entry goes to the dead-letter stream (counted as
   * `DeliveryContext.deliveryCount` is). @defaultValue 5
   */
  maxDeliveries?: number;
  /** Wait before a failed entry's second delivery, in ms; it doubles for each one after. @defaultValue 1000 */
  retryDelayMs?: number;
  /**
   * Where a group created by this subscription starts: `'0'` reads the stream from its first
   * entry (events published before the service first ran are not skipped), `'$'` only new ones.
   * @defaultValue '0'
   */
  startId?: '0' | '$';
  /**
   * An entry another consumer of the group has held this long without acking it is taken over
   * (its process most likely crashed or restarted under a new name), in ms. Checked every
   * `claimIdleMs / 2`, at most every 30 s. While a handler runs, its entry's lease is renewed
   * every `claimIdleMs / 3`, so a slow but live handler keeps it.
   * @defaultValue 60000
   */
  claimIdleMs?: number;
  /**
   * A consumer of the group that holds no pending entries and has not been seen for this long is
   * removed from the group (XGROUP DELCONSUMER), so that consumers of processes long gone do not
   * pile up. Checked with each reclaim pass; a consumer that still holds entries is never
   * removed (that would lose them). @defaultValue 3600000 (1 hour)
   */
  deleteIdleConsumersAfterMs?: number;
  /** How long `close()` waits for a running handler before it gives up on it, in ms. @defaultValue 10000 */
  closeTimeoutMs?: number;
  /** @defaultValue `${stream}:dlq` */
  deadLetterStream?: string;
  /**
   * The handler acks its entry itself, in the same atomic step as its effect (a Lua script that
   * writes its records and runs `XACK <context.stream> <context.group> <context.id>`): when it
   * resolves, the subscription sends no XACK of its own. A handler that resolves without having
   * acked leaves its entry pending: it is handled again after `claimIdleMs`, and dead-lettered
   * after `maxDeliveries` runs. Dead letters are acked by the subscription either way.
   * @defaultValue false
   */
  handlerAcks?: boolean;
}

/** A running subscription, as `subscribe()` returns it. */
export interface Subscription {
  /**
   * Stops reading, waits for the running handlers (up to `closeTimeoutMs`) and their acks, then
   * closes the connection. Entries read but not yet handled stay pending, handed back as long idle:
   * any other consumer takes them over at its next reclaim pass, and a consumer of the same name
   * handles them when it starts. Safe to call twice.
   */
  close(): Promise<void>;
}

/** `hostname-pid`: unique per process, and recognisable in XINFO CONSUMERS. */
export function defaultConsumerName(): string {
  return `${hostname()}-${process.pid}`;
}

/** As Redis sends it: field names and values stay bytes until checked to be UTF-8. */
type Entry = [id: string, fields: Buffer[]];
/** `retry`: the handler failed, the run counts; `later`: try again, the run does not count. */
type Outcome = 'done' | 'retry' | 'later';

/**
 * How long the run count of an entry handled more than once is kept (see CLAIM_RUN): a count
 * left behind (its entry acked by the handler's own script, and this process gone before it
 * deleted the count) expires.
 */
const RUNS_TTL_MS = 7 * 24 * 60 * 60 * 1000;

/**
 * Consumes `stream` as `consumer` of `group` on a connection of its own: creates the group if
 * missing, first handles the entries this consumer left pending, then new ones, calling
 * `handler` for one entry at a time (entries keep their order within a consumer) unless
 * `concurrency` says more. Entries other
 * consumers have left pending longer than `claimIdleMs` are taken over. Entries that fail the
 * stream's schema go to the dead-letter stream at once. The loop rides out Redis restarts and
 * recreates a lost group.
 */
export function subscribe<D extends StreamDefinition>(
  group: string,
  consumer: string,
  stream: D,
  handler: Handler<EventOf<D>>,
  options: SubscribeOptions,
): Subscription {
  const settings = withDefaults(stream, options);
  const loop = new ConsumerLoop(group, consumer, stream, handler as Handler<unknown>, settings);
  return { close: () => loop.close() };
}

type Settings = Required<Omit<SubscribeOptions, 'connection'>> & { connection: Connection };

function withDefaults(stream: StreamDefinition, options: SubscribeOptions): Settings {
  const settings: Settings = {
    logger: silentLogger,
    count: 10,
    concurrency: 1,
    blockMs: 2_000,
    maxDeliveries: 5,
    retryDelayMs: 1_000,
    startId: '0',
    claimIdleMs: 60_000,
    deleteIdleConsumersAfterMs: 3_600_000,
    closeTimeoutMs: 10_000,
    deadLetterStream: defaultDeadLetterStream(stream),
    handlerAcks: false,
    // An option given as `undefined` keeps its default.
    ...(Object.fromEntries(
      Object.entries(options).filter(([, value]) => value !== undefined),
    ) as SubscribeOptions),
  };
  for (const key of ['count', 'concurrency', 'blockMs', 'maxDeliveries'] as const) {
    if (!Number.isInteger(settings[key]) || settings[key] < 1)
      throw new RangeError(`${key} must be a positive integer, got ${settings[key]}`);
  }
  for (const key of ['claimIdleMs', 'deleteIdleConsumersAfterMs'] as const) {
    if (!Number.isFinite(settings[key]) || settings[key] < 1)
      throw new RangeError(`${key} must be at least 1, got ${settings[key]}`);
  }
  for (const key of ['retryDelayMs', 'closeTimeoutMs'] as const) {
    if (!Number.isFinite(settings[key]) || settings[key] < 0)
      throw new RangeError(`${key} must be a non-negative number, got ${settings[key]}`);
  }
  if (settings.deadLetterStream === stream.name)
    throw new RangeError('deadLetterStream must differ from the stream itself');
  return settings;
}

type PendingInfo = [id: string, consumer: string, idleMs: number, deliveries: number];

/** The dead-letter stream refused a write: retry the entry later rather than stop the loop. */
class DeadLetterError extends Error {
  constructor(cause: unknown) {
    super('dead-letter write failed', { cause });
    this.name = new.target.name;
  }
}

/** Retries wait `retryDelayMs`, doubling with each delivery, up to this. */
const MAX_RETRY_DELAY_MS = 60_000;

class ConsumerLoop {
  private readonly redis: Redis;
  private readonly log: Logger;
  private stopping = false;
  private closing: Promise<void> | undefined;
  /** The handlers under way, by entry ID: what `close()` waits for. */
  private readonly handling = new Map<string, Promise<unknown>>();
  private wakeSleeper: (() => void) | undefined;
  /** Set once `close()` has dropped the connection: the loop stops waiting on Redis. */
  private dropped = false;
  /** Ends the wait of `unlessStopped` for the step under way. */
  private abandonStep: (() => void) | undefined;
  private readonly running: Promise<void>;
  /**
   * Whether to go through this consumer's own pending list before reading on: `'all'` handles
   * every entry in it (at start, after an error), `'due'` those whose retry delay has passed.
   */
  private ownPending: 'all' | 'due' | undefined = 'all';
  /** When the next failed entry is due again (0: none is waiting). */
  private retryAt = 0;
  /**
   * When each entry waiting in our pending list is due for its next delivery. Kept here, not read
   * off the idle time, which any XAUTOCLAIM pass (ours included) resets. A lost group is
   * recreated before the first of them.
   */
  private readonly retryDue = new Map<string, number>();
  /**
   * The entries this consumer is working on (the batch being handled, the entry being
   * redelivered), with when we last touched each in Redis: their leases are renewed every
   * `claimIdleMs / 3` while they are here. An entry whose lease another consumer took is dropped.
   */
  private readonly held = new Map<string, number>();
  private readonly leaseTimer: NodeJS.Timeout;
  private renewing = false;
  /**
   * Acks go out in one multi-ID XACK for the entries whose handlers resolved (never before) since
   * the last one was sent: as soon as the loop waits for anything (a handler's own I/O), or at the
   * end of the batch. The next handler does not wait for Redis's answer; `flushAcks` awaits the
   * answers at the end of a batch or pending page, and `close()` before it drops the connection.
   */
  private ackQueue: string[] = [];
  private ackSoon: NodeJS.Immediate | undefined;
  /** XACKs sent, not yet answered. */
  private acks: Promise<unknown>[] = [];
  /** The next batch, asked for while this one is handled (see `handleNew`). */
  private readAhead: Promise<Entry[]> | undefined;
  /** When the next reclaim pass is due; the first runs at start. */
  private claimAt = 0;
  private readonly claimIntervalMs: number;
  /**
   * Where to recreate the group if it is lost: before the oldest entry that may not have been
   * acked when we last looked (its oldest pending entry, or anything delivered after that look).
   * Refreshed at start and with each reclaim pass.
   */
  private recreateFrom: string | undefined;
  /**
   * Runs that must not count, by entry, not yet taken off its count in Redis (UNCOUNT_RUNS): they
   * ended in a Redis fault or a `RetryLaterError`, or never started. Written back before the next
   * step, and kept until Redis takes them: in Redis, not here, so that another consumer that
   * takes the entry over sees the right count.
   */
  private readonly uncounted = new Map<string, number>();
  /** Run counts of entries acked since the last XACK was sent: deleted with it. */
  private forget: string[] = [];
  private readonly clock: ServerClock;
  /** When `writeBackUncounted` may try again. */
  private uncountAt = 0;
  /** Entries being handled whose run count is in Redis (claimed by CLAIM_RUN): deleted with their ack. */
  private readonly countedInRedis = new Set<string>();

  constructor(
    private readonly group: string,
    private readonly consumer: string,
    private readonly stream: StreamDefinition,
    private readonly handler: Handler<unknown>,
    private readonly settings: Settings,
  ) {
    this.log = settings.logger;
    this.claimIntervalMs = Math.min(Math.max(settings.claimIdleMs / 2, 50), 30_000);
    // Named so that CLIENT LIST tells which subscription a connection serves.
    this.redis = openReaderConnection(
      settings.connection,
      this.log,
      `stream-kit:${group}:${consumer}`,
      // The watchdog (see `giveUpOnSocket`): the longest command, a blocked read, answers within BLOCK.
      settings.blockMs + Math.max(settings.blockMs, 1_000),
    );
    // A read that Redis served just as the connection died delivered entries whose reply never
    // came: they sit in our pending list, and only a pass through it finds them.
    this.redis.on('close', () => (this.ownPending = 'all'));
    this.clock = new ServerClock(this.redis);
    this.redis.defineCommand('streamKitClaimRun', { numberOfKeys: 2, lua: CLAIM_RUN });
    this.redis.defineCommand('streamKitUncountRuns', { numberOfKeys: 1, lua: UNCOUNT_RUNS });
    this.leaseTimer = setInterval(() => void this.renewLeases(), Math.max(settings.claimIdleMs / 3, 10));
    this.leaseTimer.unref();
    this.running = this.run();
  }

  close(): Promise<void> {
    return (this.closing ??= this.shutdown());
  }

  private async shutdown() {
    this.stopping = true;
    this.wakeSleeper?.();
    const releasing = this.releaseUnstarted();
    // The lease timer runs on while the handler under way finishes (it renews that entry alone),
    // or another consumer could take the entry and run it at the same time.
    const timedOut =
      this.handling.size > 0
        ? await Promise.race([
            Promise.allSettled(this.handling.values()).then(() => false),
            sleep(this.settings.closeTimeoutMs).then(() => true),
          ])
        : false;
    clearInterval(this.leaseTimer);
    // Send the acks still queued for handlers that finished, and let them land (a blocked read's
    // answer comes first, within BLOCK) before the connection goes.
    this.sendAcks();
    // The runs that must not count, the handed-back entries' included: so that whoever takes the
    // entries over counts right.
    const uncounting = releasing.then(() => this.writeBackUncounted(true));
    await Promise.race([Promise.allSettled([...this.acks, uncounting]), sleep(this.settings.closeTimeoutMs)]);
    // A blocked XREADGROUP only returns when its BLOCK expires; dropping the connection ends it
    // now. Whatever it would have returned stays in this consumer's pending list.
    this.redis.disconnect();
    // While ioredis is between reconnect attempts, disconnect() leaves queued commands hanging:
    // the loop must not wait on them.
    this.dropped = true;
    this.abandonStep?.();
    if (timedOut) {
      // The loop is still inside the handler and may never come out: do not wait for it.
      this.log.warn(
        { ...this.where(), timeoutMs: this.settings.closeTimeoutMs },
        'handler still running at close; its entry stays pending',
      );
      return;
    }
    await this.running;
  }

  /**
   * Hands back, at close, the entries read but not started (the rest of a batch, a batch read
   * ahead): XCLAIM to ourselves with IDLE `claimIdleMs` makes them look long idle, so any other
   * consumer takes them over at its next reclaim pass instead of `claimIdleMs` later (a restarted
   * instance usually comes back under a new name). Only those still ours: the minimum idle time
   * is the time since we touched them. Best effort: if it fails they wait as before.
   */
  private async releaseUnstarted() {
    const unstarted = [...this.held].filter(([id]) => !this.handling.has(id));
    for (const [id] of unstarted) this.held.delete(id);
    try {
      for (const [touchedAt, ids] of groupByTouch(unstarted)) {
        // prettier-ignore
        const handedBack = (await this.redis.xclaim(
          this.stream.name, this.group, this.consumer, stillOurs(Date.now() - touchedAt), ...ids,
          'IDLE', this.settings.claimIdleMs, 'JUSTID',
        )) as string[];
        // Never started here: whoever takes them runs them for the first time.
        for (const id of handedBack) this.uncount(id);
      }
    } catch (err) {
      this.log.debug({ ...this.where(), err: describe(err) }, 'cannot hand back unstarted entries');
    }
  }

  private async run() {
    let failures = 0;
    await this.unlessStopped(this.start());
    while (!this.stopping) {
      try {
        await this.unlessStopped(this.step());
        if (failures > 0) {
          this.log.info({ ...this.where(), failures }, 'consumer loop recovered');
          failures = 0;
        }
      } catch (err) {
        if (this.stopping) break;
        this.giveUpOnSocket(err);
        // Entries read before the error may sit in our pending list unhandled: go through it,
        // in order. A batch read ahead is in that list too (Redis served the read before the
        // pass's XPENDING, on the same connection): handling it first would break the order.
        this.ownPending = 'all';
        // Its entries, if it brought any, were never started: their first run is still to come.
        this.readAhead?.then(
          (entries) => entries.forEach(([id]) => this.uncount(id)),
          () => {},
        );
        this.readAhead = undefined;
        if (isNoGroupError(err)) {
          await this.unlessStopped(this.recreateGroup());
          continue;
        }
        failures += 1;
        // The first failure of a run is a warning; repeats of it would only flood the log.
        const level = failures === 1 ? 'warn' : 'debug';
        this.log[level](
          { ...this.where(), err: describe(err), failures },
          isRedisFault(err)
            ? 'redis is failing or refusing work; pausing, and trying again with backoff (entries stay pending, nothing counts as a failed delivery)'
            : 'consumer loop failed; retrying',
        );
        await this.sleep(Math.min(100 * 2 ** failures, 5_000));
      }
    }
  }

  /**
   * The watchdog. Every command on this connection has `commandTimeout`, twice BLOCK: a command
   * that got no answer in that time means a socket dead without TCP knowing it (a peer gone in a
   * failover, a NAT timeout), where every later command would hang too. Destroying the socket makes
   * ioredis reconnect and resend what is queued; the 'close' listener sends us through our pending
   * list, where a read whose answer was lost left its entries.
   */
  private giveUpOnSocket(err: unknown) {
    if (!(err instanceof Error) || err.message !== 'Command timed out') return;
    // Between reconnect attempts commands wait in the offline queue and time out there: nothing
    // to give up on, and the outage is logged already.
    if (this.redis.status !== 'ready') return;
    this.log.warn({ ...this.where() }, 'redis did not answer; reconnecting');
    this.redis.stream?.destroy();
  }

  /**
   * Resolves with `work`, or as soon as the subscription is closed, abandoning `work`. Not a
   * `Promise.race` with a promise that settles at close: each race would leave a reaction on that
   * promise until then, a leak of a few hundred bytes per step of a long-lived loop.
   */
  private unlessStopped(work: Promise<void>): Promise<void> {
    work.catch(() => {}); // an abandoned command may still fail later; nobody is listening then
    if (this.dropped) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.abandonStep = resolve;
      work.then(resolve, reject).finally(() => {
        if (this.abandonStep === resolve) this.abandonStep = undefined;
      });
    });
  }

  private async start() {
    await this.ensureGroup(this.settings.startId);
    // Where the group stands, in case it is lost before the first reclaim pass.
    await this.markRecreatePoint().catch(() => {});
  }

  /**
   * Notes where a lost group must be recreated so that nothing unacked is lost: just before its
   * oldest pending entry, or after its last delivered entry if that is earlier (entries delivered
   * after this look come after it). Entries acked since are handed out again: the price of not
   * knowing, once the group is gone, which of them were.
   */
  private async markRecreatePoint() {
    // prettier-ignore
    const [summary, groups] = await Promise.all([
      this.redis.xpending(this.stream.name, this.group) as Promise<[number, string | null, string | null, unknown]>,
      this.redis.xinfo('GROUPS', this.stream.name) as Promise<unknown[][]>,
    ]);
    const info = groups.map((flat) => fieldsFromReply(flat.map(String))).find((g) => g.name === this.group);
    if (!info) return;
    const lastDelivered = info['last-delivered-id'] ?? '0-0';
    const oldestPending = summary[1];
    this.recreateFrom =
      oldestPending && compareIds(idBefore(oldestPending), lastDelivered) < 0
        ? idBefore(oldestPending)
        : lastDelivered;
  }

  /**
   * One round: this consumer's own pending entries when some are due (left by an earlier run
   * under the same name, or failed and due for a retry), else entries other consumers have left
   * idle too long, else new entries. A batch read ahead comes first: its entries are ours already.
   */
  private async step() {
    if (this.uncounted.size > 0) await this.writeBackUncounted();
    if (this.readAhead) {
      const next = this.readAhead;
      this.readAhead = undefined;
      await this.handleNew(await next);
      return;
    }
    if (this.ownPending === undefined && this.retryAt !== 0 && Date.now() >= this.retryAt) {
      this.ownPending = 'due';
      this.retryAt = 0;
    }
    if (this.ownPending !== undefined) {
      const mode = this.ownPending;
      this.ownPending = undefined;
      await this.handleOwnPending(mode);
    } else if (Date.now() >= this.claimAt) {
      await this.reclaim();
      this.claimAt = Date.now() + this.claimIntervalMs;
    } else {
      await this.handleNew(await this.readNew());
    }
  }

  /**
   * Handles a batch of new entries. When it was full, more are likely waiting: the next batch is
   * asked for now, without BLOCK, so that Redis serves it while this one is handled (at most two
   * batches are held). Not when a pending pass or a reclaim is due, which would wait behind it.
   */
  private async handleNew(entries: Entry[]) {
    const now = Date.now();
    const due =
      this.ownPending !== undefined || now >= this.claimAt || (this.retryAt !== 0 && now >= this.retryAt);
    if (entries.length === this.settings.count && !due && !this.stopping) {
      this.readAhead = this.read(undefined);
      this.readAhead.catch(() => {}); // awaited at the next step
    }
    await this.handleBatch(entries);
  }

  /**
   * Handles freshly read entries, `concurrency` at a time (one at a time keeps their order),
   * skipping any whose lease another consumer took meanwhile.
   */
  private async handleBatch(entries: Entry[]) {
    let next = 0;
    // IDs grow along a batch: if its last is not ahead of the clock, none is (one check a batch).
    const last = entries.at(-1);
    const mayBeAhead = last !== undefined && this.clock.looksAhead(last[0], maxIdAheadMs(this.stream));
    let failed = false;
    const work = async () => {
      while (next < entries.length && !this.stopping && !failed) {
        const [id, fields] = entries[next++]!;
        try {
          if (this.held.has(id)) await this.handleOne(id, fields, 1, mayBeAhead);
        } catch (err) {
          // A Redis error (a dead letter not acked, say): stop taking entries, and let the loop
          // go through the pending list once the others are done.
          failed = true;
          throw err;
        }
      }
    };
    try {
      const workers = Math.min(this.settings.concurrency, entries.length);
      const results = await Promise.allSettled(Array.from({ length: workers }, work));
      const rejected = results.find((result) => result.status === 'rejected');
      if (rejected) throw rejected.reason;
    } finally {
      // Not clear(): a batch read ahead is held meanwhile.
      for (const [id] of entries) this.held.delete(id);
      // Stopped early: the entries never started come back through the pending list, where their
      // first real run must count as the first.
      if (failed) for (const [id] of entries.slice(next)) this.uncount(id);
    }
    await this.flushAcks();
  }

  /** Queues the ack of entry `id`: a run count kept for it goes too. */
  private queueAck(id: string) {
    this.ackQueue.push(id);
    if (this.countedInRedis.has(id)) this.forget.push(this.runsKey(id));
    this.ackSoon ??= setImmediate(() => this.sendAcks());
  }

  private sendAcks() {
    if (this.ackSoon) clearImmediate(this.ackSoon);
    this.ackSoon = undefined;
    if (this.ackQueue.length === 0) return;
    const ack = this.redis.xack(this.stream.name, this.group, ...this.ackQueue.splice(0));
    ack.catch(() => {}); // awaited in flushAcks or close()
    this.acks.push(ack);
    // Best effort: a count left behind expires (RUNS_TTL_MS).
    if (this.forget.length > 0) this.redis.del(...this.forget.splice(0)).catch(() => {});
  }

  /** Sends the acks queued and waits for all answers; throws if one failed (those entries stay pending, and come back). */
  private async flushAcks() {
    this.sendAcks();
    const sent = this.acks;
    this.acks = [];
    await Promise.all(sent);
  }

  /**
   * Renews the lease on the entries in `held`: XCLAIM JUSTID to ourselves resets their idle time
   * without counting a delivery, and its minimum idle time (the time since we last touched them)
   * makes it claim only entries nobody touched since: still ours, that is. Ones it does not
   * claim were taken over by another consumer, which now handles them.
   */
  private async renewLeases() {
    if (this.renewing || this.held.size === 0) return;
    // Once closing, only the entries whose handlers run: the others stay pending for other
    // consumers to take.
    const leased = this.stopping ? [...this.held].filter(([id]) => this.handling.has(id)) : [...this.held];
    if (leased.length === 0) return;
    this.renewing = true;
    try {
      for (const [touchedAt, ids] of groupByTouch(leased)) {
        // prettier-ignore
        const kept = new Set((await this.redis.xclaim(
          this.stream.name, this.group, this.consumer, stillOurs(Date.now() - touchedAt), ...ids, 'JUSTID',
        )) as string[]);
        // Redis reset their idle time somewhere between `now` and this moment: taking this
        // moment keeps the next minimum idle time at or under their real idle time.
        const renewedAt = Date.now();
        const lost = ids.filter((id) => this.held.has(id) && !kept.has(id));
        for (const id of ids) if (kept.has(id) && this.held.has(id)) this.held.set(id, renewedAt);
        if (lost.length > 0) await this.checkLost(lost);
      }
    } catch (err) {
      this.giveUpOnSocket(err);
      // The next renewal, a third of claimIdleMs later, tries again.
      this.log.debug({ ...this.where(), err: describe(err) }, 'cannot renew leases');
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
    // prettier-ignore
    const owners = await Promise.all(ids.map((id) =>
      this.redis.xpending(this.stream.name, this.group, id, id, 1) as Promise<PendingInfo[]>,
    ));
    ids.forEach((id, i) => {
      if (!this.held.has(id)) return; // handled meanwhile
      const [owner] = owners[i]!;
      if (owner && owner[1] === this.consumer) {
        this.held.set(id, Date.now() - owner[2]);
        return;
      }
      this.held.delete(id);
      if (!owner) return; // acked
      const running = this.handling.has(id);
      this.log[running ? 'warn' : 'info'](
        { ...this.where(), entryId: id, takenBy: owner[1] },
        running
          ? 'lost the lease on the entry being handled (the process stalled longer than claimIdleMs); another consumer may handle it too'
          : 'entry taken over by another consumer before its turn; skipping it',
      );
    });
  }

  private readNew(): Promise<Entry[]> {
    // Wake up in time for the next retry and the next reclaim pass.
    const wakeAt = Math.min(this.claimAt, this.retryAt || Infinity);
    return this.read(Math.max(1, Math.min(this.settings.blockMs, wakeAt - Date.now())));
  }

  /**
   * Reads up to `count` new entries, waiting up to `blockMs` for the first when given. They are
   * ours from then on: held (their leases renewed) until handled.
   */
  private async read(blockMs: number | undefined): Promise<Entry[]> {
    const block = blockMs === undefined ? [] : ['BLOCK', blockMs];
    // prettier-ignore
    const reply = await this.redis.callBuffer(
      'XREADGROUP', 'GROUP', this.group, this.consumer,
      'COUNT', this.settings.count,
      ...block,
      'STREAMS', this.stream.name, '>',
    );
    const streams = reply as [stream: Buffer, entries: [Buffer, Buffer[]][]][] | null;
    const entries: Entry[] = (streams?.[0]?.[1] ?? []).map(([id, fields]) => [id.toString(), fields]);
    const readAt = Date.now();
    for (const [id] of entries) this.held.set(id, readAt);
    return entries;
  }

  /**
   * Goes through this consumer's pending list (XPENDING, a page at a time) and hands each due
   * entry to the handler again. Each is taken with its own XCLAIM just before its handler runs,
   * so the delivery count grows only for entries really delivered.
   */
  private async handleOwnPending(mode: 'all' | 'due') {
    let start = '-';
    const listed = new Set<string>();
    for (;;) {
      // prettier-ignore
      const page = (await this.redis.xpending(
        this.stream.name, this.group, start, '+', this.settings.count, this.consumer,
      )) as PendingInfo[];
      const fetchedAt = Date.now();
      for (const [id, , idleMs, deliveries] of page) {
        listed.add(id);
        if (this.stopping) return;
        // Idle time goes on growing while earlier entries of the page are handled.
        const idleNow = idleMs + Date.now() - fetchedAt;
        let due = this.retryDue.get(id);
        if (due === undefined) {
          due = Date.now() + this.retryDelay(deliveries) - idleNow;
          this.retryDue.set(id, due);
        }
        if (mode === 'due' && due > Date.now()) {
          this.scheduleRetry(due - Date.now());
          continue;
        }
        await this.redeliver(id, idleNow);
      }
      await this.flushAcks();
      if (page.length < this.settings.count) break;
      start = `(${page.at(-1)![0]}`;
    }
    // Entries that failed here but are no longer ours (taken over and handled elsewhere, acked by
    // the handler's own script, trimmed): forget their retry times, or the map only grows, and a
    // lost group would be recreated before one of them.
    for (const id of this.retryDue.keys()) if (!listed.has(id)) this.retryDue.delete(id);
  }

  /**
   * Takes the entry with XCLAIM and counts the run it is taken for (CLAIM_RUN), then handles it.
   * The minimum idle time is the one it has if nobody touched it since XPENDING: if another
   * consumer has taken it since, it is not ours to handle.
   */
  private async redeliver(id: string, idleMs: number) {
    const redis = this.redis as unknown as { streamKitClaimRunBuffer(...args: unknown[]): Promise<unknown> };
    // prettier-ignore
    const claimed = (await redis.streamKitClaimRunBuffer(
      this.stream.name, this.runsKey(id), this.group, this.consumer, stillOurs(idleMs), id, RUNS_TTL_MS,
    )) as [id: Buffer, fields: Buffer[] | null, run: number] | null;
    if (!claimed) {
      this.retryDue.delete(id);
      // Taken by another consumer meanwhile, or trimmed from the stream (XCLAIM then drops it).
      this.log.debug({ ...this.where(), entryId: id }, 'pending entry no longer ours to handle');
      return;
    }
    this.held.set(id, Date.now());
    this.countedInRedis.add(id);
    try {
      await this.handleOne(id, claimed[1] ?? [], claimed[2]);
    } finally {
      this.held.delete(id);
      this.countedInRedis.delete(id);
    }
  }

  /** Where the number of handler runs of entry `id` is kept (see CLAIM_RUN). */
  private runsKey(id: string): string {
    return `${this.stream.name}:runs:${this.group}:${id}`;
  }

  /**
   * Takes over, with XAUTOCLAIM, the entries other consumers of the group have held longer than
   * `claimIdleMs` (a crashed process never acks them, and a restarted one has a new name),
   * following the cursor through the whole pending list. JUSTID moves them to this consumer
   * without counting a delivery; `handleOwnPending` then delivers them after the retry delay their
   * delivery count calls for. (It may take this consumer's own entries too, which only resets
   * their idle time: their retry times are kept in `retryDue`.)
   */
  private async reclaim() {
    let cursor = '0-0';
    do {
      // prettier-ignore
      const [next, ids, deleted] = (await this.redis.xautoclaim(
        this.stream.name, this.group, this.consumer,
        this.settings.claimIdleMs, cursor, 'COUNT', this.settings.count, 'JUSTID',
      )) as [next: string, ids: string[], deleted?: string[]];
      cursor = next;
      if (deleted?.length) {
        // Trimmed while pending: nothing is left to handle. Redis 7 has already dropped them from
        // the pending list; the XACK makes sure of it.
        await this.redis.xack(this.stream.name, this.group, ...deleted);
        await this.redis.del(...deleted.map((id) => this.runsKey(id)));
        this.log.warn(
          { ...this.where(), entryIds: deleted },
          'pending entries were trimmed from the stream before anyone handled them; acked',
        );
      }
      if (ids.length === 0) continue;
      this.log.info({ ...this.where(), count: ids.length }, 'took over entries left idle by other consumers');
      this.ownPending ??= 'due';
    } while (cursor !== '0-0' && !this.stopping);
    await this.deleteIdleConsumers();
    await this.markRecreatePoint();
  }

  /** Removes, in one atomic script, the group's consumers that are long idle and hold nothing. */
  private async deleteIdleConsumers() {
    // prettier-ignore
    const removed = (await this.redis.eval(
      DELETE_IDLE_CONSUMERS, 1, this.stream.name, this.group, this.settings.deleteIdleConsumersAfterMs, this.consumer,
    )) as string[];
    if (removed.length > 0)
      this.log.info({ ...this.where(), removed }, 'removed idle consumers that held no entries');
  }

  /**
   * Runs the handler for one entry, run number `run`, and schedules what comes next for it. A
   * Redis fault (from the handler or from dead-lettering) is thrown on: the loop pauses and goes
   * through its pending list once Redis works again; the run does not count.
   */
  private async handleOne(id: string, flat: Buffer[], run: number, mayBeAhead = true) {
    // close() may have come while we were reading or claiming: its connection is gone, so a
    // handler started now could not be acked and its entry would be handled again elsewhere.
    if (this.stopping) return;
    const handling = this.handle(id, flat, run, mayBeAhead);
    this.handling.set(id, handling);
    let outcome: Outcome;
    try {
      outcome = await handling;
    } catch (err) {
      if (isRedisFault(err)) this.uncount(id);
      throw err;
    } finally {
      this.handling.delete(id);
    }
    if (outcome === 'done') {
      this.retryDue.delete(id);
      return;
    }
    if (outcome === 'later') this.uncount(id);
    const wait = this.retryDelay(run);
    this.retryDue.set(id, Date.now() + wait);
    this.scheduleRetry(wait);
  }

  private uncount(id: string) {
    this.uncounted.set(id, (this.uncounted.get(id) ?? 0) + 1);
  }

  /**
   * Takes the runs that must not count off their entries' counts in Redis. Those Redis refuses
   * (it is still in trouble) stay queued, and are tried again a second later at the earliest.
   */
  private async writeBackUncounted(force = false) {
    if (this.uncounted.size === 0 || (!force && Date.now() < this.uncountAt)) return;
    const redis = this.redis as unknown as { streamKitUncountRuns(...args: unknown[]): Promise<unknown> };
    await Promise.all(
      [...this.uncounted].map(async ([id, runs]) => {
        try {
          await redis.streamKitUncountRuns(this.runsKey(id), runs, RUNS_TTL_MS);
          const left = this.uncounted.get(id)! - runs;
          if (left > 0) this.uncounted.set(id, left);
          else this.uncounted.delete(id);
        } catch {
          this.uncountAt = Date.now() + 1_000;
        }
      }),
    );
  }

  /** `retryDelayMs` after the first delivery, doubling with each one after. */
  private retryDelay(deliveries: number): number {
    return Math.min(this.settings.retryDelayMs * 2 ** Math.max(deliveries - 1, 0), MAX_RETRY_DELAY_MS);
  }

  private scheduleRetry(inMs: number) {
    const at = Date.now() + inMs;
    if (this.retryAt === 0 || at < this.retryAt) this.retryAt = at;
  }

  private async handle(id: string, flat: Buffer[], run: number, mayBeAhead: boolean): Promise<Outcome> {
    try {
      return await this.process(id, flat, run, mayBeAhead);
    } catch (err) {
      if (!(err instanceof DeadLetterError)) throw err;
      // Redis is in trouble: the loop pauses (see run()).
      if (isRedisFault(err.cause)) throw err.cause;
      // The entry stays pending and comes back; the entries behind it go on meanwhile.
      this.log.warn(
        { ...this.where(), entryId: id, err: describe(err.cause) },
        'cannot write to the dead-letter stream; entry stays pending',
      );
      return 'later';
    }
  }

  /** `mayBeAhead` false: the entry's ID is known not to be ahead of the clock. */
  private async process(id: string, flat: Buffer[], run: number, mayBeAhead: boolean): Promise<Outcome> {
    if (run > this.settings.maxDeliveries) {
      // Taken that often yet never finished: it likely kills or stalls whichever process runs it.
      await this.deadLetter(
        id,
        flat,
        `not acked after ${run - 1} runs of its handler (its consumers died or stalled before finishing)`,
        run,
      );
      return 'done';
    }
    const bound = maxIdAheadMs(this.stream);
    if (mayBeAhead && this.clock.looksAhead(id, bound)) {
      const ahead = await this.clock.aheadBy(id, bound);
      if (ahead !== undefined) {
        const reason = `entry ID ahead of the clock: ${id} is ${Math.round(ahead)} ms ahead of the server clock (more than ${bound} ms)`;
        await this.deadLetter(id, flat, reason, run);
        return 'done';
      }
    }
    const fields = textFields(flat);
    if (typeof fields === 'number') {
      const what = fields % 2 === 0 ? 'a field name' : `field ${JSON.stringify(String(flat[fields - 1]))}`;
      await this.deadLetter(id, flat, `invalid entry: ${what} is not valid UTF-8`, run);
      return 'done';
    }
    const decoded = decode(this.stream, id, fields);
    if (!decoded.ok) {
      await this.deadLetter(id, flat, `invalid entry: ${decoded.reason}`, run);
      return 'done';
    }
    try {
      await this.handler(decoded.event, {
        id,
        stream: this.stream.name,
        group: this.group,
        consumer: this.consumer,
        deliveryCount: run,
      });
    } catch (err) {
      if (err instanceof NonRetryableError) {
        await this.deadLetter(id, flat, `non-retryable: ${err.message}`, run);
        return 'done';
      }
      if (err instanceof RetryLaterError) {
        this.log.debug({ ...this.where(), entryId: id, err: describe(err) }, 'handler asked to retry later');
        return 'later';
      }
      // Not the entry's fault: thrown on, so the loop pauses until Redis works again.
      if (isRedisFault(err)) throw err;
      if (run >= this.settings.maxDeliveries) {
        await this.deadLetter(id, flat, `failed ${run} runs of its handler: ${describe(err)}`, run);
        return 'done';
      }
      this.log.warn(
        { ...this.where(), entryId: id, deliveryCount: run, err: describe(err) },
        'handler failed; entry stays pending for another delivery',
      );
      return 'retry';
    }
    // Done with it: a lease renewal sent after the ack would find it gone and call it lost.
    this.held.delete(id);
    this.queueAck(id);
    return 'done';
  }

  /**
   * Copies the entry (its bytes as they are), with why it failed, to the dead-letter stream, then
   * acks it. Not one MULTI:
   * a transaction would still run the XACK after a failed XADD and lose the entry. A crash
   * between the two leaves the entry pending, to be dead-lettered again: a duplicate dead letter,
   * never a lost one.
   */
  private async deadLetter(id: string, flat: Buffer[], reason: string, run: number) {
    const meta: Fields = {
      'dlq:id': id,
      'dlq:stream': this.stream.name,
      'dlq:group': this.group,
      'dlq:consumer': this.consumer,
      'dlq:deliveries': String(run),
      'dlq:reason': reason,
    };
    await this.redis
      .xadd(this.settings.deadLetterStream, '*', ...flat, ...Object.entries(meta).flat())
      .catch((err: unknown) => Promise.reject(new DeadLetterError(err)));
    this.held.delete(id);
    await this.redis.xack(this.stream.name, this.group, id);
    if (this.countedInRedis.has(id)) this.redis.del(this.runsKey(id)).catch(() => {});
    this.log.warn(
      { ...this.where(), entryId: id, deadLetterStream: this.settings.deadLetterStream, reason },
      'entry moved to the dead-letter stream',
    );
  }

  /**
   * After the group vanished (FLUSHALL, a restart without persistence, XGROUP DESTROY): recreate
   * it early enough that no entry it had not acked is lost, those of crashed consumers included:
   * at the point `markRecreatePoint` last noted (at most a reclaim interval ago), not at the start
   * of the stream, which would hand out again every entry ever handled. Entries acked since that
   * look are handed out again; handlers must tolerate repeats anyway. After a flush the stream is
   * empty, and new entries have later IDs.
   */
  private async recreateGroup() {
    const from = this.recreateFrom ?? (this.settings.startId === '$' ? '$' : '0');
    this.log.warn(
      { ...this.where(), from },
      'consumer group is gone (Redis restarted or flushed, or the group destroyed); recreating it',
    );
    this.retryDue.clear();
    await this.ensureGroup(from);
  }

  private async ensureGroup(startId: string) {
    for (let attempt = 1; !this.stopping; attempt += 1) {
      try {
        await this.redis.xgroup('CREATE', this.stream.name, this.group, startId, 'MKSTREAM');
        this.log.info({ ...this.where(), startId }, 'consumer group created');
        return;
      } catch (err) {
        if (err instanceof Error && err.message.startsWith('BUSYGROUP')) return;
        if (this.stopping) return;
        // XGROUP CREATE is a write: out of memory Redis refuses it even for a group that exists,
        // which a read can tell, so a consumer restarted meanwhile need not wait for memory.
        if (isRedisFault(err) && (await this.groupExists())) return;
        if (attempt === 1)
          this.log.warn({ ...this.where(), err: describe(err) }, 'cannot create consumer group; retrying');
        await this.sleep(Math.min(100 * 2 ** attempt, 5_000));
      }
    }
  }

  private async groupExists(): Promise<boolean> {
    try {
      const groups = (await this.redis.xinfo('GROUPS', this.stream.name)) as unknown[][];
      return groups.some((flat) => fieldsFromReply(flat.map(String)).name === this.group);
    } catch {
      return false;
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wakeSleeper = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private where() {
    return { stream: this.stream.name, group: this.group, consumer: this.consumer };
  }
}

/**
 * XCLAIM's minimum idle time for entries that have been idle `idleMs` if nobody touched them
 * since: it claims them only if they are still ours. 2 ms under, as Redis and Date.now() round
 * apart.
 */
function stillOurs(idleMs: number): number {
  return Math.max(0, idleMs - 2);
}

/** Entry IDs by when we last touched them in Redis: one XCLAIM per group. */
function groupByTouch(entries: [id: string, touchedAt: number][]): Map<number, string[]> {
  const byTouch = new Map<number, string[]>();
  for (const [id, at] of entries) {
    const ids = byTouch.get(at);
    if (ids) ids.push(id);
    else byTouch.set(at, [id]);
  }
  return byTouch;
}

/** Orders stream entry IDs (`<ms>-<seq>`) as Redis does. */
function compareIds(a: string, b: string): number {
  const [aMs, aSeq] = a.split('-').map(BigInt) as [bigint, bigint];
  const [bMs, bSeq] = b.split('-').map(BigInt) as [bigint, bigint];
  return aMs !== bMs ? (aMs < bMs ? -1 : 1) : aSeq === bSeq ? 0 : aSeq < bSeq ? -1 : 1;
}

/** The greatest entry ID below `id`: a group created there reads `id` next. */
function idBefore(id: string): string {
  const [ms, seq] = id.split('-').map(BigInt) as [bigint, bigint];
  return seq > 0n ? `${ms}-${seq - 1n}` : `${ms - 1n}-18446744073709551615`;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
