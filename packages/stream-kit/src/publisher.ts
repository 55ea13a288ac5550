import type { Tracer } from '@opentelemetry/api';
import { PublisherClosedError } from './errors.ts';
import { openRequestConnection, type Connection } from './connection.ts';
import { waitForReplicas, type Durability } from './durability.ts';
import { silentLogger, type Logger } from './logger.ts';
import type { MessagingMetrics } from './metrics.ts';
import { defineScript, PUBLISH, PUBLISH_MANY } from './scripts.ts';
import { endSend, startSend } from './tracing.ts';
import {
  fieldArguments,
  maxIdAheadMs,
  streamKeyOf,
  trimArguments,
  xaddArguments,
  type EventOf,
  type StreamDefinition,
} from './stream.ts';

/** Options of `createPublisher()`. */
export interface PublisherOptions {
  /**
   * A Redis URL (the publisher opens and owns a connection) or a client to share (the caller
   * keeps ownership and closes it).
   */
  connection: Connection;
  /** @defaultValue silent */
  logger?: Logger;
  /** Counts the events appended, per stream (`messaging_client_sent_messages_total`). @defaultValue none */
  metrics?: Pick<MessagingMetrics, 'sent'>;
  /**
   * Each publish gets a `send <stream>` span under the active context, and its entries carry it
   * (`traceparent`, `tracestate` fields) for their consumers to continue.
   * @defaultValue none: no span, no trace fields
   */
  tracer?: Tracer;
  /**
   * Resolve only once `replicas` replicas hold the write (`WAIT`, one per tick for every write of
   * the tick), so that a resolved publish survives the loss of its master; reject with
   * `NotReplicatedError` (the entry is written) if they do not confirm it within `timeoutMs`.
   * Give such a publisher a connection of its own (a URL): a `WAIT` holds its connection until the
   * replicas answer. See README, Redis Cluster. @defaultValue none: resolve once the master has it
   */
  durability?: Durability;
}

/** Appends typed events to streams. */
export interface Publisher {
  /**
   * Validates `event` against the stream's schema and appends it with XADD, trimming the stream
   * as its `retention` says.
   * Resolves to the new entry ID. Throws `EventValidationError` (nothing written) if the event
   * does not match, or the Redis error if the write failed (after one retry: publishing sits on
   * request paths, where failing fast beats hanging). Throws an `IDAHEAD` error if the stream's
   * IDs run ahead of Redis's clock (see `StreamDefinition.maxIdAheadMs`): nothing is written, as
   * the XADD and its check are one script. Throws after `close()`.
   */
  publish<D extends StreamDefinition>(stream: D, event: EventOf<D>): Promise<string>;
  /**
   * Appends `events` in order, all or none, in one command (a Lua script that XADDs each, trimming
   * as `publish()` does): for batches, where one `publish()` each would cost a command and a
   * round trip per event. On a partitioned stream, one command per partition the events go to:
   * all or none within each partition, in order within each. Resolves to their entry
   * IDs, in order. Validates every event first: if one does not match, throws
   * `EventValidationError` and writes nothing. Throws the Redis error if the write failed.
   */
  publishMany<D extends StreamDefinition>(stream: D, events: readonly EventOf<D>[]): Promise<string[]>;
  /** Waits for publishes under way, then closes the connection if the publisher opened it. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * A publisher on `options.connection`: from a URL it opens a request connection of its own (a
 * command fails after one retry and 2 s at most, so a request can answer 503 instead of hanging);
 * a client passed in is shared, and stays the caller's to close.
 */
export function createPublisher(options: PublisherOptions): Publisher {
  const logger = options.logger ?? silentLogger;
  const { metrics, tracer } = options;
  const owned = typeof options.connection === 'string';
  const redis =
    typeof options.connection === 'string'
      ? openRequestConnection(options.connection, logger, 'stream-kit:publisher')
      : options.connection;

  const inFlight = new Set<Promise<unknown>>();
  let closing: Promise<void> | undefined;

  const publishOne = defineScript<string>(redis, 'streamKitPublish', 1, PUBLISH);
  const replicated = options.durability ? waitForReplicas(redis, options.durability) : undefined;
  const durably = <T>(key: string, write: () => Promise<T>) =>
    replicated ? replicated(key, write) : write();

  async function publish<D extends StreamDefinition>(stream: D, event: EventOf<D>) {
    if (closing) throw new PublisherClosedError();
    // Checked first: an event refused never opens a span.
    const args = xaddArguments(stream, event, []);
    const key = streamKeyOf(stream, event);
    const send = tracer ? startSend(tracer, stream.name) : undefined;
    if (send) args.push(...send.fields);
    const write = durably(key, () =>
      publishOne(key, maxIdAheadMs(stream), args).then((id) => {
        metrics?.sent(stream.name, 1);
        return id;
      }),
    );
    inFlight.add(write);
    try {
      const id = await write;
      if (send) endSend(send.span, { ids: [id] });
      return id;
    } catch (err) {
      if (send) endSend(send.span, { error: err });
      throw err;
    } finally {
      inFlight.delete(write);
    }
  }

  const publishBatch = defineScript<string[]>(redis, 'streamKitPublishMany', 1, PUBLISH_MANY);

  async function publishMany<D extends StreamDefinition>(stream: D, events: readonly EventOf<D>[]) {
    if (closing) throw new PublisherClosedError();
    if (events.length === 0) return [];
    const trim = trimArguments(stream);
    // Every event is checked before anything is sent: one invalid event writes none.
    const checked = events.map((event) => fieldArguments(stream, event));
    // One span for the call; each of its entries carries it.
    const send = tracer ? startSend(tracer, stream.name) : undefined;
    const head = [String(maxIdAheadMs(stream)), String(trim.length), ...trim];
    for (const fields of checked) if (send) fields.push(...send.fields);
    const write =
      (stream.partitions ?? 1) === 1
        ? writeBatch(stream, stream.name, batchArguments(head, checked))
        : publishPartitioned(stream, events, head, checked);
    inFlight.add(write);
    try {
      const ids = await write;
      if (send) endSend(send.span, { ids });
      return ids;
    } catch (err) {
      if (send) endSend(send.span, { error: err });
      throw err;
    } finally {
      inFlight.delete(write);
    }
  }

  /** One PUBLISH_MANY to `key`, counted as written to `stream` once Redis has it. */
  function writeBatch(stream: StreamDefinition, key: string, args: string[]): Promise<string[]> {
    return durably(key, () =>
      publishBatch(key, args).then((ids) => {
        metrics?.sent(stream.name, ids.length);
        return ids;
      }),
    );
  }

  /**
   * One script per partition the events go to (its own slot), each all or none, events in order
   * within each; the IDs come back in the order of `events`.
   */
  async function publishPartitioned<D extends StreamDefinition>(
    stream: D,
    events: readonly EventOf<D>[],
    head: readonly string[],
    checked: readonly string[][],
  ): Promise<string[]> {
    const byKey = new Map<string, { fields: string[][]; at: number[] }>();
    events.forEach((event, i) => {
      const key = streamKeyOf(stream, event);
      const batch = byKey.get(key) ?? byKey.set(key, { fields: [], at: [] }).get(key)!;
      batch.fields.push(checked[i]!);
      batch.at.push(i);
    });
    const ids = new Array<string>(events.length);
    await Promise.all(
      [...byKey].map(async ([key, { fields, at }]) => {
        const written = await writeBatch(stream, key, batchArguments(head, fields));
        written.forEach((id, j) => (ids[at[j]!] = id));
      }),
    );
    return ids;
  }

  async function shutdown() {
    await Promise.allSettled(inFlight);
    if (owned) await redis.quit().catch(() => redis.disconnect());
  }

  return {
    publish,
    publishMany,
    close: () => (closing ??= shutdown()),
  };
}

/** PUBLISH_MANY's arguments: `head` (the ID check and the trim), then each event's fields, counted. */
function batchArguments(head: readonly string[], events: readonly string[][]): string[] {
  const args = [...head];
  for (const fields of events) args.push(String(fields.length), ...fields);
  return args;
}
