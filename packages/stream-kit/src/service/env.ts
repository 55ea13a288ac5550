import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Writable } from 'node:stream';
import { z } from 'zod';
import { traceIdMixin } from './tracing.ts';
import { defaultConsumerName } from '../subscriber.ts';
import type { Drainable } from './shutdown.ts';

/** The most HTTP connections a service keeps open at once, unless `MAX_CONNECTIONS` says otherwise. */
export const DEFAULT_MAX_CONNECTIONS = 1_000;

/** Where Redis is: what every process that connects to it reads (the services, the board, the CLIs). */
export const redisEnv = {
  REDIS_URL: z
    .url({ protocol: /^rediss?$/, error: 'must be a redis:// or rediss:// URL' })
    .default('redis://127.0.0.1:6379'),
  /**
   * `true`: `REDIS_URL` names a node of a Redis Cluster (any node; the client learns the rest),
   * and every connection is a cluster client (see README, Redis Cluster).
   */
  REDIS_CLUSTER: z.stringbool({ error: 'must be true or false' }).default(false),
};

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
    ...redisEnv,
    LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
    /**
     * This process's name, on `/healthz` and on every log line, so that a supervisor can tell its
     * own child from another process on the port; unset, a random UUID made at start.
     */
    INSTANCE_ID: z
      .string()
      .regex(/^[\x21-\x7e]{1,64}$/, 'must be 1 to 64 printable ASCII characters, without spaces')
      .default(() => randomUUID()),
    /**
     * Where spans go over OTLP/HTTP (`startTracing` reads it, as the OpenTelemetry SDK does);
     * unset, tracing is off. Checked here so that a typo fails at start, not at the first export.
     */
    OTEL_EXPORTER_OTLP_ENDPOINT: z
      .url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' })
      .optional(),
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

/**
 * pino's options for a service's root logger: its name, `LOG_LEVEL`, `LOG_REDACT`, and as base
 * fields pino's own (`pid`, `hostname`) and the instance's `INSTANCE_ID`, written into the logger
 * once, not per line; `traced`: a line written while a request or an entry is handled carries its
 * `traceId`. Give it `logDestination(process.stdout)` as destination (see README, Logs).
 */
export function logOptions(
  name: string,
  config: { LOG_LEVEL: string; INSTANCE_ID: string },
  { traced = false }: { traced?: boolean } = {},
) {
  return {
    name,
    level: config.LOG_LEVEL,
    redact: LOG_REDACT,
    base: { pid: process.pid, hostname: hostname(), instance: config.INSTANCE_ID },
    // Traced (`startTracing`): each line written while a request or an entry is handled names its trace.
    ...(traced ? { mixin: traceIdMixin } : {}),
  };
}

/** What `logDestination` returns: pino writes lines to it, `drained` waits on it. */
export interface LogDestination extends Drainable {
  write(line: string, done?: (err?: Error | null) => void): void;
  /** Writes the tick's lines now. */
  flush(): void;
}

/**
 * pino's destination for a service: `out` (standard output), with the lines of one tick of the
 * event loop written together: gathered into one string and written once the tick is over
 * (`setImmediate`), one system call, not one a line. Draining a backlog, payment-service spent a
 * sixth of its CPU time in those calls (a line per payment), and it drains about a fifth faster
 * this way (see README, Logs). One string rather than a corked `out`: its `writev` handles each
 * line on its own and cost twice as much. Nothing waits longer than the tick that wrote it, and no
 * thread pool is involved (pino's own destination hands each write to one). `flush()` writes the
 * tick's lines now: a service calls it on the process's `exit` (an uncaught exception), where
 * stdout is synchronous, for files and, on Linux, pipes. Give the destination, not `out`, to
 * `drained` and `gracefulShutdown`: it writes the tick's lines before it waits.
 */
export function logDestination(out: Writable): LogDestination {
  let lines = '';
  const flush = () => {
    if (lines === '') return;
    const text = lines;
    lines = '';
    out.write(text);
  };
  return {
    write(line: string, done?: (err?: Error | null) => void) {
      // With `done` (from `drained`): everything before it goes out now, and `done` follows it.
      if (done) {
        flush();
        out.write(line, done);
        return;
      }
      if (lines === '') setImmediate(flush);
      lines += line;
    },
    flush,
  };
}

/** This instance's name in its consumer groups: unique per running instance. */
export const ConsumerName = z.string().trim().min(1).default(defaultConsumerName);

/**
 * The variables of a service that consumes streams; `extend()` it with its own. `concurrency`:
 * the default of `CONCURRENCY`, for a service whose handlers call something that takes fewer at
 * once (a provider's API).
 */
export function consumerEnv(defaultPort: number, { concurrency = 400 }: { concurrency?: number } = {}) {
  return serviceEnv(defaultPort).extend({
    CONSUMER_NAME: ConsumerName,
    /** `subscribe()`'s `claimIdleMs`: how long a crashed instance's entries wait for another to take them. */
    CLAIM_IDLE_MS: z.coerce.number().int().min(100).default(60_000),
    /**
     * `subscribe()`'s `count`: entries read per XREADGROUP; at most twice that are held. Above
     * `CONCURRENCY`, so that the handlers of a read do not run dry before the next one is in.
     */
    READ_COUNT: z.coerce.number().int().min(1).max(10_000).default(1_000),
    /**
     * `subscribe()`'s `concurrency`. The services' events are independent (one order each, and
     * their effects are idempotent per order), so they need no order between them. Many at once:
     * the services send the effects of the handlers of one tick in one script call (`batchCalls`),
     * up to 100 a call, so a few calls are in flight and Redis runs one while the process builds
     * the next (on a busy 2-core machine, about 1.5x the rate of 16 at READ_COUNT 100).
     */
    CONCURRENCY: z.coerce.number().int().min(1).max(1_000).default(concurrency),
  });
}

/** An unset variable, or one set to the empty string (as compose files often leave them). */
export const unsetIfEmpty = <S extends z.ZodType>(schema: S) =>
  z.preprocess((value) => (value === '' ? undefined : value), schema.optional());

/** Parses `env` with `schema`; the error names every bad variable. */
export function parseEnv<S extends z.ZodType>(schema: S, env: NodeJS.ProcessEnv): z.output<S> {
  const result = schema.safeParse(env);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
  throw new Error(`invalid environment: ${problems.join('; ')}`);
}
