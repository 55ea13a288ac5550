import { hostname } from 'node:os';
import type { Tracer } from '@opentelemetry/api';
import type { Connection } from '../connection.ts';
import { silentLogger, type Logger } from '../logger.ts';
import type { MessagingMetrics } from '../metrics.ts';
import { defaultDeadLetterStream, type StreamDefinition } from '../stream.ts';
import { MAX_RETRY_DELAY_MS } from './retry-policy.ts';

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
   * acked leaves its entry pending: it is handled again (at the latest after `claimIdleMs`), and
   * dead-lettered after `maxDeliveries` runs. Dead letters, and entries trimmed while pending, are
   * acked by the subscription either way.
   * @defaultValue false
   */
  handlerAcks?: boolean;
  /**
   * Where to report each run of the handler: its outcome, its duration and the entry's latency
   * (`createMetrics` in `@msa/stream-kit/service` exports them to Prometheus).
   * @defaultValue none: nothing is counted or timed
   */
  metrics?: MessagingMetrics;
  /**
   * Continues each entry's trace (its `traceparent` field) in a `process <stream>` span around
   * the handler, with OpenTelemetry's messaging attributes; whatever the handler publishes inside
   * it carries the trace on (`startTracing` in `@msa/stream-kit/service` gives one).
   * @defaultValue none: no span
   */
  tracer?: Tracer;
}

/**
 * What happens to an entry whose handler fails, at `subscribe()`'s defaults: run again after
 * `retryDelayMs`, doubling up to `maxRetryDelayMs`, and dead-lettered after `maxDeliveries` runs;
 * held by a consumer that stops renewing its liveness mark, or idle `claimIdleMs`, it is taken
 * over. The event contracts state it (docs/contracts/asyncapi.json).
 */
export const DEFAULT_RETRY_POLICY = {
  maxDeliveries: 5,
  retryDelayMs: 1_000,
  maxRetryDelayMs: MAX_RETRY_DELAY_MS,
  claimIdleMs: 60_000,
} as const;

/** `hostname-pid`: unique per process, and recognisable in XINFO CONSUMERS. */
export function defaultConsumerName(): string {
  return `${hostname()}-${process.pid}`;
}

/** The options with every default filled in. */
export type Settings = Required<Omit<SubscribeOptions, 'connection' | 'metrics' | 'tracer'>> &
  Pick<SubscribeOptions, 'connection' | 'metrics' | 'tracer'>;

/** Fills in the defaults, then checks every option; throws `RangeError` naming the one at fault. */
export function withDefaults(stream: StreamDefinition, options: SubscribeOptions): Settings {
  const settings: Settings = {
    logger: silentLogger,
    count: 10,
    concurrency: 1,
    blockMs: 2_000,
    maxDeliveries: DEFAULT_RETRY_POLICY.maxDeliveries,
    retryDelayMs: DEFAULT_RETRY_POLICY.retryDelayMs,
    startId: '0',
    claimIdleMs: DEFAULT_RETRY_POLICY.claimIdleMs,
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
  // Handlers side by side would break the order a partition keeps.
  if ((stream.partitions ?? 1) > 1 && settings.concurrency !== 1)
    throw new RangeError(
      `concurrency must be 1 on a partitioned stream (its order is kept), got ${settings.concurrency}`,
    );
  if (settings.deadLetterStream === stream.name)
    throw new RangeError('deadLetterStream must differ from the stream itself');
  return settings;
}
