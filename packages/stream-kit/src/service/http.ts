import { createServer, type RequestListener, type Server } from 'node:http';
import { unescape } from 'node:querystring';
import { silentLogger, type Logger } from '../logger.ts';
import { DEFAULT_MAX_CONNECTIONS } from './env.ts';

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
