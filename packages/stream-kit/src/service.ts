import { createServer, type RequestListener, type Server } from 'node:http';
import { unescape } from 'node:querystring';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { silentLogger, type Logger } from './logger.ts';
import { defaultConsumerName } from './subscriber.ts';

export { isStreamIdError, openRequestConnection } from './connection.ts';

/*
 * What the three services share besides streams: environment parsing, listening and graceful
 * shutdown. A separate entry point (`@msa/stream-kit/service`): the stream API does not depend on
 * it. Nothing here touches `process`; signals and exit codes stay in each service's main.ts.
 */

/** The most HTTP connections a service keeps open at once, unless `MAX_CONNECTIONS` says otherwise. */
export const DEFAULT_MAX_CONNECTIONS = 1_000;

/** The variables every service reads; `extend()` it with a service's own. */
export function serviceEnv(defaultPort: number) {
  return z.object({
    PORT: z.coerce.number().int().min(0).max(65_535).default(defaultPort),
    /** The address to listen on; unset, every address of the host (Node's default). */
    HOST: z
      .union([z.ipv4(), z.ipv6(), z.hostname()], { error: 'must be an IP address or a host name' })
      .optional(),
    /** `listen()`'s `maxConnections`. */
    MAX_CONNECTIONS: z.coerce.number().int().min(1).max(1_000_000).default(DEFAULT_MAX_CONNECTIONS),
    REDIS_URL: z
      .url({ protocol: /^rediss?$/, error: 'must be a redis:// or rediss:// URL' })
      .default('redis://127.0.0.1:6379'),
    LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  });
}

/**
 * pino's `redact` paths for every service: secrets that could reach a log line through an error
 * or a request are replaced by `[Redacted]`. No code logs them on purpose (the Redis URL is never
 * logged, request bodies neither); this is the net under that.
 */
export const LOG_REDACT = [
  'password',
  '*.password',
  'redisUrl',
  '*.redisUrl',
  'REDIS_URL',
  '*.REDIS_URL',
  'req.headers.authorization',
  'req.headers.cookie',
  '*.headers.authorization',
  '*.headers.cookie',
  '*.options.password',
  // ioredis attaches the failed command to its error: for AUTH, its arguments are the password.
  '*.command.args',
];

/** This instance's name in its consumer groups: unique per running instance. */
export const ConsumerName = z.string().trim().min(1).default(defaultConsumerName);

/** The variables of a service that consumes streams; `extend()` it with its own. */
export function consumerEnv(defaultPort: number) {
  return serviceEnv(defaultPort).extend({
    CONSUMER_NAME: ConsumerName,
    /** `subscribe()`'s `claimIdleMs`: how long a crashed instance's entries wait for another to take them. */
    CLAIM_IDLE_MS: z.coerce.number().int().min(100).default(60_000),
    /** `subscribe()`'s `count`: entries read per XREADGROUP; at most twice that are held. */
    READ_COUNT: z.coerce.number().int().min(1).max(10_000).default(100),
    /**
     * `subscribe()`'s `concurrency`. The services' events are independent (one order each, and
     * their effects are idempotent per order), so they need no order between them.
     */
    CONCURRENCY: z.coerce.number().int().min(1).max(1_000).default(16),
  });
}

/** Parses `env` with `schema`; the error names every bad variable. */
export function parseEnv<S extends z.ZodType>(schema: S, env: NodeJS.ProcessEnv): z.output<S> {
  const result = schema.safeParse(env);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
  throw new Error(`invalid environment: ${problems.join('; ')}`);
}

export type Readiness = { status: 'ready' } | { status: 'not ready'; reason: string };

/** Runs of percent-escapes: the bytes of one or more characters, if they are UTF-8. */
const PERCENT_ESCAPES = /(?:%[0-9a-f]{2})+/gi;

const escapesAreUtf8 = (text: string) => {
  try {
    text.replace(PERCENT_ESCAPES, (run) => decodeURIComponent(run));
    return true;
  } catch {
    return false;
  }
};

/**
 * The name of the first parameter of `url`'s query whose percent-escapes are not UTF-8
 * (`%ED%A0%80`, an encoded lone surrogate, or `%FF`): `'query'` if its name is the bad part;
 * `undefined` if every parameter is fine. Node's query parser, which Express uses, reads such bytes
 * as U+FFFD, so that two different IDs would read as one: a route answers 400 instead. A `%` that
 * starts no escape (`100%`) is not checked: the parser keeps it as it is.
 */
export function malformedQueryParameter(url: string): string | undefined {
  const at = url.indexOf('?');
  if (at < 0 || !url.includes('%', at)) return undefined;
  for (const pair of url.slice(at + 1).split('&')) {
    const eq = pair.indexOf('=');
    const name = eq < 0 ? pair : pair.slice(0, eq);
    if (!escapesAreUtf8(name)) return 'query';
    if (eq >= 0 && !escapesAreUtf8(pair.slice(eq + 1))) return unescape(name.replaceAll('+', ' '));
  }
  return undefined;
}

/** The key a service's readiness probe writes: `<service>:readyz`, in the service's own prefix. */
export const readinessKey = (service: string) => `${service}:readyz`;

/** How long a readiness probe's key lives: it is only there to be written. */
const READINESS_KEY_TTL_MS = 10_000;

/**
 * Whether Redis takes a write from this service within `timeoutMs`: what `GET /readyz` reports.
 * The probe is `SET <service>:readyz <now> PX 10000`, a write the service's ACL user may make.
 * A PING would answer while Redis refuses every write the service needs (out of memory under
 * `maxmemory-policy noeviction`, a read-only replica); then the reason is Redis's own error, e.g.
 * `redis: OOM command not allowed ...` or `redis: READONLY ...`. Never throws, and never waits
 * longer, whatever state the connection is in.
 */
export async function probeRedis(redis: Redis, service: string, timeoutMs = 1_000): Promise<Readiness> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Readiness>((resolve) => {
    const reason = `redis: no answer within ${timeoutMs} ms`;
    timer = setTimeout(() => resolve({ status: 'not ready', reason }), timeoutMs);
  });
  const write = redis.set(readinessKey(service), Date.now(), 'PX', READINESS_KEY_TTL_MS).then(
    (): Readiness => ({ status: 'ready' }),
    (err: unknown): Readiness => ({ status: 'not ready', reason: `redis: ${(err as Error).message}` }),
  );
  try {
    return await Promise.race([write, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `GET /readyz` for Express: 200 `{status: 'ready'}` while Redis takes `service`'s probe write
 * (`probeRedis`) within a second, else 503 `{status: 'not ready', reason}`. Liveness
 * (`/healthz`) stays apart: a service without Redis is alive, and recovers by itself, but should
 * get no traffic.
 */
export function readinessHandler(redis: Redis, service: string) {
  return async (_req: unknown, res: { status(code: number): { json(body: unknown): unknown } }) => {
    const readiness = await probeRedis(redis, service);
    res.status(readiness.status === 'ready' ? 200 : 503).json(readiness);
  };
}

/**
 * The HTTP server's time limits, the same for every service. Node's defaults would let a client
 * that sends a byte every few seconds hold a connection for 5 minutes.
 */
export const HTTP_TIMEOUTS = {
  /** A request's headers must arrive within 10 s of its first byte, else 408 and the connection closes. */
  headersTimeout: 10_000,
  /** The whole request, body included, within 15 s, else 408 and the connection closes. */
  requestTimeout: 15_000,
  /**
   * An idle keep-alive connection is closed 5 s after its last answer, as its `Keep-Alive` header
   * says (Node 20 waits 1 s more, so that a client trusting the header never sends on a closing
   * connection).
   */
  keepAliveTimeout: 5_000,
  /** How often the two limits above are checked: a 408 comes at most 1 s after its limit. */
  connectionsCheckingInterval: 1_000,
} as const;

export interface ListenOptions {
  /** The TCP port; 0 takes a free one. */
  port: number;
  /** The address to listen on. @defaultValue every address of the host (Node's default) */
  host?: string | undefined;
  /**
   * Connections open at once; one more is closed as soon as it is accepted, without an answer.
   * @defaultValue `DEFAULT_MAX_CONNECTIONS` (1000)
   */
  maxConnections?: number;
  /** Told when connections are turned away (at most one line per 10 s). @defaultValue silent */
  logger?: Logger;
}

/**
 * Starts an HTTP server for `app` with `HTTP_TIMEOUTS` and `maxConnections`, listening on
 * `host:port`. Rejects (EADDRINUSE, EACCES, an unknown host) instead of crashing the process.
 */
export function listen(app: RequestListener, options: ListenOptions): Promise<Server> {
  const { port, host, maxConnections = DEFAULT_MAX_CONNECTIONS, logger = silentLogger } = options;
  if (!Number.isInteger(maxConnections) || maxConnections < 1)
    return Promise.reject(
      new RangeError(`maxConnections must be a whole number of at least 1, got ${maxConnections}`),
    );
  const server = createServer({ ...HTTP_TIMEOUTS }, app);
  server.maxConnections = maxConnections;
  let dropped = 0;
  let loggedAt = 0;
  server.on('drop', () => {
    dropped += 1;
    if (Date.now() - loggedAt < 10_000) return;
    logger.warn({ maxConnections, dropped }, 'connections turned away: too many open');
    loggedAt = Date.now();
    dropped = 0;
  });
  return new Promise<Server>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port, host }, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

/**
 * Stops accepting requests and resolves once those under way are answered. Keep-alive clients
 * would otherwise go on sending on their open connections for ever: from now on every answer
 * closes its connection, idle connections are closed as they turn idle, and after `graceMs` the
 * rest are cut.
 */
export function closeServer(server: Server, graceMs = 5_000): Promise<void> {
  return new Promise((resolve) => {
    server.on('request', (_req, res) => {
      if (!res.headersSent) res.setHeader('connection', 'close');
    });
    const idle = setInterval(() => server.closeIdleConnections(), 50);
    const cut = setTimeout(() => server.closeAllConnections(), graceMs);
    server.close(() => {
      clearInterval(idle);
      clearTimeout(cut);
      resolve();
    });
    server.closeIdleConnections();
  });
}

/**
 * A shutdown to run on SIGTERM/SIGINT: runs `steps` in order (each even if one before failed),
 * and resolves to the exit code: 0 when all succeeded, 1 if one failed or they took longer than
 * `timeoutMs`. Later calls return the first call's promise.
 */
export function gracefulShutdown(
  logger: Logger,
  steps: readonly (() => Promise<unknown>)[],
  timeoutMs = 15_000,
): (signal: string) => Promise<number> {
  let done: Promise<number> | undefined;
  async function run(signal: string) {
    logger.info({ signal }, 'shutting down');
    let code = 0;
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        logger.error({ err }, 'shutdown step failed');
        code = 1;
      }
    }
    logger.info({ code }, 'stopped');
    return code;
  }
  return (signal) =>
    (done ??= Promise.race([
      run(signal),
      // If something hangs, exiting late with an error beats never exiting.
      new Promise<number>((resolve) =>
        setTimeout(() => {
          logger.error({ timeoutMs }, 'shutdown timed out');
          resolve(1);
        }, timeoutMs).unref(),
      ),
    ]));
}
