import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import { isNoGroupError, openReaderConnection, type Connection } from './connection.ts';
import { NonRetryableError } from './errors.ts';
import { silentLogger, type Logger } from './logger.ts';
import {
  decode,
  fieldsFromReply,
  type EventOf,
  type Fields,
  type StreamDefinition,
} from './stream.ts';

export interface DeliveryContext {
  /** The entry ID, e.g. `1700000000000-0`; unique within the stream. */
  readonly id: string;
  readonly stream: string;
  readonly group: string;
  /** 1 on the first delivery; grows each time the entry is delivered again. */
  readonly deliveryCount: number;
}

/**
 * Handles one event. The outcome is the acknowledgement:
 * - resolves: the entry is acked (XACK) and never delivered to this group again;
 * - throws: the entry stays pending and is delivered again after `retryDelayMs`; once it has been
 *   delivered `maxDeliveries` times it goes to the dead-letter stream instead;
 * - throws `NonRetryableError`: the entry goes to the dead-letter stream at once.
 * Delivery is at least once: a crash between the handler's effect and the ack delivers the entry
 * again, so effects must tolerate repeats.
 */
export type Handler<T> = (event: T, context: DeliveryContext) => Promise<void> | void;

export interface SubscribeOptions {
  /** A Redis URL, or a client whose settings to copy. The subscription always opens its own connection. */
  connection: Connection;
  /** @defaultValue silent */
  logger?: Logger;
  /** Entries read per XREADGROUP. @defaultValue 10 */
  count?: number;
  /** How long one XREADGROUP waits for new entries, in ms. @defaultValue 2000 */
  blockMs?: number;
  /** Deliveries after which a failing entry goes to the dead-letter stream. @defaultValue 5 */
  maxDeliveries?: number;
  /** Wait before a failed entry is delivered again, in ms. @defaultValue 1000 */
  retryDelayMs?: number;
  /**
   * Where a group created by this subscription starts: `'0'` reads the stream from its first
   * entry (events published before the service first ran are not skipped), `'$'` only new ones.
   * @defaultValue '0'
   */
  startId?: '0' | '$';
  /** How long `close()` waits for a running handler before it gives up on it, in ms. @defaultValue 10000 */
  closeTimeoutMs?: number;
  /** @defaultValue `${stream}:dlq` */
  deadLetterStream?: string;
}

export interface Subscription {
  /**
   * Stops reading, waits for the running handler (up to `closeTimeoutMs`) and its ack, then
   * closes the connection. Entries read but not yet handled stay pending and are delivered again
   * on restart. Safe to call twice.
   */
  close(): Promise<void>;
}

/** `hostname-pid`: unique per process, and recognisable in XINFO CONSUMERS. */
export function defaultConsumerName(): string {
  return `${hostname()}-${process.pid}`;
}

type Entry = [id: string, fields: string[] | null];
type Outcome = 'done' | 'retry';

/**
 * Consumes `stream` as `consumer` of `group`: creates the group if missing, first handles the
 * entries this consumer left pending, then new ones, calling `handler` for one entry at a time
 * (entries keep their order within a consumer). Entries that fail the stream's schema go to the
 * dead-letter stream at once. The loop rides out Redis restarts and recreates a lost group.
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
    blockMs: 2_000,
    maxDeliveries: 5,
    retryDelayMs: 1_000,
    startId: '0',
    closeTimeoutMs: 10_000,
    deadLetterStream: `${stream.name}:dlq`,
    ...options,
  };
  for (const key of ['count', 'blockMs', 'maxDeliveries'] as const) {
    if (!Number.isInteger(settings[key]) || settings[key] < 1)
      throw new RangeError(`${key} must be a positive integer, got ${settings[key]}`);
  }
  for (const key of ['retryDelayMs', 'closeTimeoutMs'] as const) {
    if (!Number.isFinite(settings[key]) || settings[key] < 0)
      throw new RangeError(`${key} must be a non-negative number, got ${settings[key]}`);
  }
  if (settings.deadLetterStream === stream.name)
    throw new RangeError('deadLetterStream must differ from the stream itself');
  return settings;
}

class ConsumerLoop {
  private readonly redis: Redis;
  private readonly log: Logger;
  private stopping = false;
  private closing: Promise<void> | undefined;
  /** The handler and ack under way, if any: what `close()` waits for. */
  private handling: Promise<unknown> | undefined;
  private wakeSleeper: (() => void) | undefined;
  private readonly running: Promise<void>;

  constructor(
    private readonly group: string,
    private readonly consumer: string,
    private readonly stream: StreamDefinition,
    private readonly handler: Handler<unknown>,
    private readonly settings: Settings,
  ) {
    this.log = settings.logger;
    this.redis = openReaderConnection(settings.connection, this.log);
    this.running = this.run();
  }

  close(): Promise<void> {
    return (this.closing ??= this.shutdown());
  }

  private async shutdown() {
    this.stopping = true;
    this.wakeSleeper?.();
    const timedOut = this.handling
      ? await Promise.race([
          this.handling.then(() => false, () => false),
          sleep(this.settings.closeTimeoutMs).then(() => true),
        ])
      : false;
    // A blocked XREADGROUP only returns when its BLOCK expires; dropping the connection ends it
    // now. Whatever it would have returned stays in this consumer's pending list.
    this.redis.disconnect();
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

  private async run() {
    let cursor: string | undefined = '0';
    let retryAt = 0;
    let failures = 0;
    await this.ensureGroup();
    while (!this.stopping) {
      try {
        if (cursor === undefined && retryAt !== 0 && Date.now() >= retryAt) {
          cursor = '0';
          retryAt = 0;
        }
        const entries: Entry[] =
          cursor === undefined ? await this.readNew(retryAt) : await this.readPending(cursor);
        if (failures > 0) {
          this.log.info({ ...this.where(), failures }, 'consumer loop recovered');
          failures = 0;
        }
        if (cursor !== undefined) {
          // Own pending entries, re-read from `cursor` on; an empty page means we are through.
          const last = entries.at(-1);
          cursor = last ? last[0] : undefined;
        }
        const counts = cursor !== undefined ? await this.deliveryCounts(entries) : undefined;
        for (const [id, fields] of entries) {
          if (this.stopping) break;
          const outcome = await this.track(this.handle(id, fields, counts?.get(id) ?? 1));
          if (outcome === 'retry' && retryAt === 0) retryAt = Date.now() + this.settings.retryDelayMs;
        }
      } catch (err) {
        if (this.stopping) break;
        if (isNoGroupError(err)) {
          this.log.warn(this.where(), 'consumer group is gone (Redis restarted or flushed); recreating it');
          await this.ensureGroup();
          cursor = '0';
          continue;
        }
        failures += 1;
        // The first failure of a run is a warning; repeats of it would only flood the log.
        const level = failures === 1 ? 'warn' : 'debug';
        this.log[level]({ ...this.where(), err: describe(err), failures }, 'consumer loop failed; retrying');
        await this.sleep(Math.min(100 * 2 ** failures, 5_000));
      }
    }
  }

  private async readPending(cursor: string): Promise<Entry[]> {
    const reply = await this.redis.xreadgroup(
      'GROUP', this.group, this.consumer,
      'COUNT', this.settings.count,
      'STREAMS', this.stream.name, cursor,
    );
    return entriesOf(reply);
  }

  private async readNew(retryAt: number): Promise<Entry[]> {
    // Wake up in time for the next retry of a failed entry.
    const block =
      retryAt === 0
        ? this.settings.blockMs
        : Math.max(1, Math.min(this.settings.blockMs, retryAt - Date.now()));
    const reply = await this.redis.xreadgroup(
      'GROUP', this.group, this.consumer,
      'COUNT', this.settings.count,
      'BLOCK', block,
      'STREAMS', this.stream.name, '>',
    );
    return entriesOf(reply);
  }

  /** How often each re-read entry has now been delivered (XREADGROUP with an ID counts as a delivery). */
  private async deliveryCounts(entries: Entry[]): Promise<Map<string, number>> {
    const counts = new Map<string, number>();
    if (entries.length === 0) return counts;
    const pending = (await this.redis.xpending(
      this.stream.name, this.group,
      entries[0]![0], entries.at(-1)![0], entries.length, this.consumer,
    )) as [id: string, consumer: string, idleMs: number, deliveries: number][];
    for (const [id, , , deliveries] of pending) counts.set(id, deliveries);
    return counts;
  }

  private async handle(id: string, flat: string[] | null, deliveryCount: number): Promise<Outcome> {
    if (flat === null) {
      // Trimmed or deleted while pending: there is nothing left to handle.
      this.log.warn({ ...this.where(), entryId: id }, 'pending entry no longer exists; acking it');
      await this.redis.xack(this.stream.name, this.group, id);
      return 'done';
    }
    const fields = fieldsFromReply(flat);
    const decoded = decode(this.stream, id, fields);
    if (!decoded.ok) {
      await this.deadLetter(id, fields, `invalid entry: ${decoded.reason}`, deliveryCount);
      return 'done';
    }
    try {
      await this.handler(decoded.event, {
        id,
        stream: this.stream.name,
        group: this.group,
        deliveryCount,
      });
    } catch (err) {
      if (err instanceof NonRetryableError) {
        await this.deadLetter(id, fields, `non-retryable: ${err.message}`, deliveryCount);
        return 'done';
      }
      if (deliveryCount >= this.settings.maxDeliveries) {
        await this.deadLetter(id, fields, `failed ${deliveryCount} deliveries: ${describe(err)}`, deliveryCount);
        return 'done';
      }
      this.log.warn(
        { ...this.where(), entryId: id, deliveryCount, err: describe(err) },
        'handler failed; entry stays pending for another delivery',
      );
      return 'retry';
    }
    await this.redis.xack(this.stream.name, this.group, id);
    return 'done';
  }

  /** Copies the entry, with why it failed, to the dead-letter stream and acks it, in one MULTI. */
  private async deadLetter(id: string, fields: Fields, reason: string, deliveryCount: number) {
    const meta: Fields = {
      'dlq:id': id,
      'dlq:stream': this.stream.name,
      'dlq:group': this.group,
      'dlq:consumer': this.consumer,
      'dlq:deliveries': String(deliveryCount),
      'dlq:reason': reason,
    };
    const results = await this.redis
      .multi()
      .xadd(this.settings.deadLetterStream, '*', ...Object.entries({ ...fields, ...meta }).flat())
      .xack(this.stream.name, this.group, id)
      .exec();
    const failed = results?.find(([err]) => err);
    if (!results || failed) throw failed?.[0] ?? new Error('dead-letter transaction aborted');
    this.log.warn(
      { ...this.where(), entryId: id, deadLetterStream: this.settings.deadLetterStream, reason },
      'entry moved to the dead-letter stream',
    );
  }

  private async ensureGroup() {
    for (let attempt = 1; !this.stopping; attempt += 1) {
      try {
        await this.redis.xgroup('CREATE', this.stream.name, this.group, this.settings.startId, 'MKSTREAM');
        this.log.info(this.where(), 'consumer group created');
        return;
      } catch (err) {
        if (err instanceof Error && err.message.startsWith('BUSYGROUP')) return;
        if (this.stopping) return;
        if (attempt === 1) this.log.warn({ ...this.where(), err: describe(err) }, 'cannot create consumer group; retrying');
        await this.sleep(Math.min(100 * 2 ** attempt, 5_000));
      }
    }
  }

  private async track<T>(work: Promise<T>): Promise<T> {
    this.handling = work;
    try {
      return await work;
    } finally {
      this.handling = undefined;
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

function entriesOf(reply: unknown): Entry[] {
  const streams = reply as [stream: string, entries: Entry[]][] | null;
  return streams?.[0]?.[1] ?? [];
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}
