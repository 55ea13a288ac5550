import { createServer, type RequestListener, type Server } from 'node:http';
import { unescape } from 'node:querystring';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { isStreamIdError } from './connection.ts';
import { silentLogger, type Logger } from './logger.ts';
import { defaultConsumerName } from './subscriber.ts';

export { isStreamIdError, openRequestConnection } from './connection.ts';

/*
 * What the three services share besides streams: environment parsing, the HTTP errors and their
 * one middleware, listening and graceful shutdown. A separate entry point
 * (`@msa/stream-kit/service`): the stream API does not depend on it. Nothing here touches
 * `process`; signals and exit codes stay in each service's main.ts.
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

/** Options of the named HTTP errors: the error they wrap, and the input at fault. */
export interface HttpErrorOptions extends ErrorOptions {
  /** The input at fault (`price`, `Idempotency-Key`, `body`), sent to the client as `field`. */
  field?: string | undefined;
}

/**
 * Bad input, the client's to fix: `errorMiddleware` answers 400 `{error: message, field}`
 * (`field` left out when no single input is at fault). Nothing is logged.
 */
export class ValidationError extends Error {
  readonly field: string | undefined;
  constructor(message: string, options?: HttpErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.field = options?.field;
  }
}

/**
 * The request contradicts an earlier one (an idempotency key used before for another body):
 * `errorMiddleware` answers 409 `{error: message, field}`. Nothing is logged.
 */
export class ConflictError extends Error {
  readonly field: string | undefined;
  constructor(message: string, options?: HttpErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.field = options?.field;
  }
}

/** Options of `UnavailableError`. */
export interface UnavailableErrorOptions extends ErrorOptions {
  /** The stream the request writes to, named in the log line. */
  stream?: string | undefined;
}

/**
 * The request cannot be served now, through no fault of its own: Redis cannot be reached, does
 * not answer in time or refuses the work (its error is the `cause`). `errorMiddleware` answers
 * 503 `{error: message}`, so `message` is for the client and must not carry the cause; the cause
 * goes to the log. The same request may succeed later.
 */
export class UnavailableError extends Error {
  readonly stream: string | undefined;
  constructor(message: string, options?: UnavailableErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.stream = options?.stream;
  }
}

/**
 * Express's body parser fails with the status to answer (4xx) and, mostly, a `type`. A body that
 * does not inflate as its Content-Encoding says has no `type`: zlib's error, with status 400.
 */
const BODY_PARSER_ERRORS: Record<string, string> = {
  'entity.parse.failed': 'body: malformed JSON',
  'entity.too.large': 'body: too large (16 kB at most)',
  'encoding.unsupported': 'body: unsupported content encoding',
  'charset.unsupported': 'body: unsupported charset',
  'request.aborted': 'body: request aborted',
  'request.size.invalid': 'body: size does not match Content-Length',
};

/** The client's fault, as the body parser saw it: its status and a message naming the body. */
function bodyParserError(err: unknown): { status: number; message: string } | undefined {
  const { status, type } = (err ?? {}) as { status?: unknown; type?: unknown };
  if (typeof status !== 'number' || status < 400 || status > 499) return undefined;
  const known = typeof type === 'string' && Object.hasOwn(BODY_PARSER_ERRORS, type);
  return { status, message: known ? BODY_PARSER_ERRORS[type]! : 'body: cannot be decoded' };
}

/** What `errorMiddleware` needs of Express's response. */
export interface ErrorResponse {
  readonly headersSent: boolean;
  status(code: number): { json(body: unknown): unknown };
}

/**
 * A service's one Express error middleware, to `app.use()` after every route: routes throw (or
 * pass to `next`) the named errors above, and this alone decides the answer.
 *
 * - `ValidationError` → 400 `{error, field}`; `ConflictError` → 409 `{error, field}`;
 * - a body that Express's body parser could not read (malformed JSON, too large, a bad
 *   encoding) → its 4xx status, `{error, field: 'body'}`;
 * - `UnavailableError` → 503 `{error}`, logged as a warning with its cause; as an error when the
 *   cause is a stream that takes no new IDs (`isStreamIdError`), which only an operator's repair
 *   heals (README, Entry IDs);
 * - anything else → logged as `err` (`unexpected error`) and answered 500
 *   `{error: 'internal error'}`: neither its message nor its stack reaches the client.
 *
 * An error raised after the answer has begun is left to Express, which closes the connection.
 */
export function errorMiddleware(logger: Logger) {
  // Four parameters: that is how Express tells an error middleware from a route.
  return (err: unknown, _req: unknown, res: ErrorResponse, next: (err: unknown) => void): void => {
    if (res.headersSent) return next(err);
    const bodyError = bodyParserError(err);
    if (err instanceof ValidationError) {
      res.status(400).json({ error: err.message, field: err.field });
    } else if (err instanceof ConflictError) {
      res.status(409).json({ error: err.message, field: err.field });
    } else if (err instanceof UnavailableError) {
      const { stream } = err;
      if (isStreamIdError(err.cause))
        logger.error(
          { err, stream },
          `${stream ?? 'a stream'} cannot take new entries (its IDs run ahead of the clock or are used up); requests that write to it are refused until an operator repairs it (README: Entry IDs)`,
        );
      else logger.warn({ err, stream }, err.message);
      res.status(503).json({ error: err.message });
    } else if (bodyError) {
      res.status(bodyError.status).json({ error: bodyError.message, field: 'body' });
    } else {
      logger.error({ err }, 'unexpected error');
      res.status(500).json({ error: 'internal error' });
    }
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
