import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from './logger.ts';

/** A client of one Redis, or of a Redis Cluster (ioredis routes each command to its slot's master). */
export type RedisClient = Redis | Cluster;

/** A Redis URL (of one Redis), or a client whose settings a new connection should copy. */
export type Connection = string | RedisClient;

/** Reconnect after 50 ms, doubling up to 2 s: quick after a blip, calm during an outage. */
export function reconnectDelay(attempt: number): number {
  return Math.min(50 * 2 ** Math.min(attempt - 1, 6), 2_000);
}

/**
 * A dedicated connection for a blocking reader. Commands wait through reconnects instead of
 * failing (`maxRetriesPerRequest: null`): a reader has nothing better to do than wait.
 */
export function openReaderConnection(
  connection: Connection,
  logger: Logger,
  name: string,
  commandTimeoutMs: number,
): RedisClient {
  const options: RedisOptions = {
    maxRetriesPerRequest: null,
    retryStrategy: reconnectDelay,
    // CLIENT SETNAME takes no spaces.
    connectionName: name.replace(/\s/g, '_'),
    // CLIENT SETINFO is not in the services' ACL (Redis 7.0 does not know it): do not send it.
    disableClientInfo: true,
    // Longer than the longest command the reader sends, its blocked read.
    commandTimeout: commandTimeoutMs,
    // TCP keepalive probes after 10 s of silence: the OS notices a dead peer on an idle connection.
    keepAlive: 10_000,
  };
  const redis =
    typeof connection === 'string'
      ? new Redis(connection, options)
      : connection instanceof Cluster
        ? connection.duplicate(undefined, {
            redisOptions: { ...connection.options.redisOptions, ...withoutRetryStrategy(options) },
            clusterRetryStrategy: options.retryStrategy,
            // A reader waits for the cluster, however long (see openRequestConnection).
            enableOfflineQueue: true,
          })
        : connection.duplicate(options);
  logConnectionState(redis, logger);
  return redis;
}

/** Cluster clients take the retry strategy for the whole cluster, apart from the nodes' options. */
function withoutRetryStrategy({ retryStrategy: _, ...options }: RedisOptions): RedisOptions {
  return options;
}

/**
 * Calls `listener` whenever a socket of `redis` closes: its one socket, or on a cluster the socket
 * to any node (a node restarted, a failover, a slot moved), where a blocked read may have been
 * served just as the socket died.
 */
export function onSocketClose(redis: RedisClient, listener: () => void): void {
  redis.on('close', listener);
  if (!(redis instanceof Cluster)) return;
  redis.on('+node', (node: Redis) => node.on('close', listener));
  redis.on('-node', listener);
}

/**
 * The watchdog of a reader connection (opened with `commandTimeout`, see `openReaderConnection`):
 * a command that got no answer in that time means a socket dead without TCP knowing it (a peer
 * gone in a failover, a NAT timeout), where every later command would hang too. Destroying the
 * socket makes ioredis reconnect and resend what is queued; the reader's 'close' listener sends it
 * through its pending list, where a read whose answer was lost left its entries. Call it with
 * every error of a command on that connection; it acts on timeouts alone.
 */
export function reconnectIfStalled(redis: RedisClient, err: unknown, logger: Logger, where: object): void {
  if (!(err instanceof Error) || err.message !== 'Command timed out') return;
  // Between reconnect attempts commands wait in the offline queue and time out there: nothing
  // to give up on, and the outage is logged already.
  if (redis.status !== 'ready') return;
  logger.warn(where, 'redis did not answer; reconnecting');
  // A cluster client holds a connection per node: reconnecting all of them (the client is the
  // reader's own) is the one way in, and it reloads the slots too.
  if (redis instanceof Cluster) redis.disconnect(true);
  else redis.stream?.destroy();
}

/** The longest a command on a request connection may take before it fails. */
export const REQUEST_TIMEOUT_MS = 2_000;

/**
 * A connection for request paths (publishing, queries behind HTTP routes): a command fails after
 * one retry instead of hanging while Redis is away, and after `REQUEST_TIMEOUT_MS` at most, so
 * the caller can answer 503 quickly.
 * Outages are logged once, not at every reconnect attempt.
 */
export function openRequestConnection(url: string, logger: Logger, name?: string): Redis;
export function openRequestConnection(
  url: string,
  logger: Logger,
  name: string,
  options: { cluster: boolean },
): RedisClient;
export function openRequestConnection(
  url: string,
  logger: Logger,
  name = 'stream-kit:request',
  { cluster = false }: { cluster?: boolean } = {},
): RedisClient {
  const options: RedisOptions = {
    maxRetriesPerRequest: 1,
    retryStrategy: reconnectDelay,
    connectionName: name,
    disableClientInfo: true,
    // A Redis that accepts the connection but never answers (paused, overloaded, a half-open
    // socket) would otherwise hold the request forever. A command that timed out may still have
    // run: callers that retry need an idempotency key.
    commandTimeout: REQUEST_TIMEOUT_MS,
    connectTimeout: REQUEST_TIMEOUT_MS,
  };
  const redis = cluster ? openCluster(url, options) : new Redis(url, options);
  // A cluster client queues a command while it reconnects, with no timeout of its own. Queued until
  // it is first ready (a process starting), then failed at once while it reconnects, as a request
  // to one Redis fails after a retry.
  if (redis instanceof Cluster) redis.once('ready', () => (redis.options.enableOfflineQueue = false));
  logConnectionState(redis, logger);
  return redis;
}

/**
 * A Redis Cluster client that starts from the node `url` names (any node: it learns the others
 * from it) and gives every node's connection `options`, the URL's user and password and, for
 * `rediss://`, TLS.
 */
export function openCluster(url: string, options: RedisOptions = {}): Cluster {
  const { hostname, port, username, password, protocol } = new URL(url);
  return new Cluster([{ host: hostname, port: Number(port || 6379) }], {
    redisOptions: {
      ...withoutRetryStrategy(options),
      ...(username ? { username: decodeURIComponent(username) } : {}),
      ...(password ? { password: decodeURIComponent(password) } : {}),
      ...(protocol === 'rediss:' ? { tls: {} } : {}),
    },
    ...(options.retryStrategy ? { clusterRetryStrategy: options.retryStrategy } : {}),
  });
}

/**
 * Logs the first error of an outage and the recovery, not each failed reconnect attempt.
 * Without an `error` listener ioredis would print every attempt as an unhandled error.
 */
export function logConnectionState(redis: RedisClient, logger: Logger): void {
  let down = false;
  redis.on('error', (err: Error) => {
    if (down) return;
    down = true;
    logger.warn({ err }, 'redis connection lost, reconnecting');
  });
  redis.on('ready', () => {
    if (!down) return;
    down = false;
    logger.info({}, 'redis connection restored');
  });
}

/**
 * The group (or its stream) is gone: NOGROUP, or, for a read blocked at that moment, UNBLOCKED
 * (FLUSHALL or DEL of the stream key).
 */
export function isNoGroupError(err: unknown): boolean {
  return err instanceof Error && /^(NOGROUP|UNBLOCKED)/.test(err.message);
}

/**
 * Error codes with which Redis refuses a command for its own state, not for what the command
 * carries: out of memory, busy with a script, loading its data, a replica or a master without
 * its replicas, a cluster resharding or down, a failed save, a user not allowed, or a stream that
 * cannot take new entry IDs (`IDAHEAD`: stream-kit's checked XADD, see `XADD_CHECKED`).
 */
const FAULT_CODES =
  /^(OOM|BUSY|LOADING|READONLY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|MISCONF|NOREPLICAS|NOPERM|IDAHEAD)\b/;

/** What ioredis rejects a command with when the connection failed it, not Redis. */
const CONNECTION_FAILURES =
  /^(Command timed out|Connection is closed|Command aborted due to connection close|Stream isn't writeable|Reached the max retries per request limit|ERR max number of clients reached|ERR The stream has exhausted the last possible ID)/;

/**
 * Whether `err` (or an error it wraps as its `cause`) comes from Redis or the connection to it
 * rather than from the work itself: out of memory, a stall (a command timed out), a lost
 * connection, `BUSY`, `LOADING`, `READONLY`, `MASTERDOWN`, `TRYAGAIN`, `CLUSTERDOWN`, a stream
 * that cannot take new IDs. Such an error says nothing about the entry being handled: it is
 * worth trying again once Redis is well, however often it happened.
 */
export function isRedisFault(err: unknown): boolean {
  for (let cause = err, depth = 0; cause instanceof Error && depth < 5; depth += 1) {
    if (FAULT_CODES.test(cause.message) || CONNECTION_FAILURES.test(cause.message)) return true;
    const code = (cause as NodeJS.ErrnoException).code;
    if (
      typeof code === 'string' &&
      /^(ECONNREFUSED|ECONNRESET|EPIPE|ETIMEDOUT|EHOSTUNREACH|ENOTFOUND|EAI_AGAIN)$/.test(code)
    )
      return true;
    cause = cause.cause;
  }
  return false;
}

/**
 * Whether `err` says a stream cannot take new entries for its IDs: they run ahead of Redis's clock
 * (`IDAHEAD`, see `XADD_CHECKED`) or the last possible ID is used up. Nothing but an operator's
 * repair helps (README, Entry IDs).
 */
export function isStreamIdError(err: unknown): boolean {
  return (
    err instanceof Error && /^(IDAHEAD|ERR The stream has exhausted the last possible ID)/.test(err.message)
  );
}
