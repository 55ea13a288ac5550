import { randomBytes } from 'node:crypto';
import type { Logger } from '../logger.ts';

/** A client's `X-Request-Id` is kept if it is this: printable ASCII, 1 to 128 characters. */
const SANE_REQUEST_ID = /^[\x20-\x7e]{1,128}$/;

/** The most characters of an unmatched path that reach the line (it is the client's to choose). */
const MAX_PATH = 100;

/**
 * Request ids made here: a random prefix per process, then a counter (`3f9a0c12d4-1`, `-2`, ...):
 * unique across processes and restarts, and several times cheaper than `randomUUID()` (35 ns
 * against 170-300 ns).
 */
const ID_PREFIX = `${randomBytes(5).toString('hex')}-`;
let lastId = 0;
const nextRequestId = () => ID_PREFIX + (lastId += 1).toString(36);

/** What `accessLog` reads of Express's request. */
interface AccessRequest {
  readonly method: string;
  readonly headers: { readonly [name: string]: string | string[] | undefined };
  /** The request's path, without its query. */
  readonly path: unknown;
  /** The route that matched, set by Express's router. */
  readonly route?: { readonly path?: unknown } | undefined;
}

/** What a route may leave in `res.locals` for the access line. */
export interface AccessLogLocals {
  /** The line's message instead of `request` (order-service: `order accepted`). */
  logMessage?: string | undefined;
  /** Fields merged into the line (order-service: `orderId`, `entryId`). No secrets: it is not redacted. */
  logFields?: object | undefined;
}

/** What `accessLog` needs of Express's response. */
interface AccessResponse {
  readonly statusCode: number;
  readonly headersSent: boolean;
  readonly writableFinished: boolean;
  readonly locals: AccessLogLocals;
  setHeader(name: string, value: string): unknown;
  on(event: 'close', listener: () => void): unknown;
}

/**
 * A service's access log, to `app.use()` before every route: one line per request, the rejected
 * ones (400, 404, 405, 413, 415, errors thrown by routes) included, at info:
 * `{method, route, status, durationMs, requestId, msg: 'request'}`.
 *
 * - `requestId`: the client's `X-Request-Id` if it is 1 to 128 printable ASCII characters, else
 *   one made here (unique per process and across processes); sent back as `X-Request-Id` on every
 *   answer. `errorMiddleware` puts it on the lines it writes too.
 * - `route`: the route pattern that matched (`/orders`), else the path, cut to 100 characters.
 * - `status`, `durationMs`: when the answer is written out. A client that leaves before the answer
 *   is complete gets its line at that moment, `request aborted`, with the status sent so far, or
 *   499 (nginx's "client closed request") if none was.
 * - A route may set `res.locals.logFields` (fields merged into the line) and `res.locals.logMessage`
 *   (its message) before it answers, so that what it did and how it was answered are one line.
 *   What it sets after its client left (`res.closed`) comes too late: it must log that itself.
 *
 * The line holds no secret, so `logger` need not redact: with pino, pass a child without
 * redaction paths (`logger.child({}, { redact: [] })`): `LOG_REDACT`'s wildcard paths cost about
 * 7 µs a line, several percent of a request.
 */
export function accessLog(logger: Logger) {
  return (req: AccessRequest, res: AccessResponse, next: () => void): void => {
    const start = performance.now();
    const given = req.headers['x-request-id'];
    const requestId = typeof given === 'string' && SANE_REQUEST_ID.test(given) ? given : nextRequestId();
    res.setHeader('X-Request-Id', requestId);
    // 'close' comes once, after the answer is written out or when the connection goes first.
    res.on('close', () => {
      const durationMs = Math.round((performance.now() - start) * 100) / 100;
      const route = typeof req.route?.path === 'string' ? req.route.path : cut(req.path);
      const aborted = !res.writableFinished;
      const status = aborted && !res.headersSent ? 499 : res.statusCode;
      const line = { method: req.method, route, status, durationMs, requestId };
      const { logFields, logMessage } = res.locals;
      if (logFields !== undefined) Object.assign(line, logFields);
      logger.info(line, aborted ? 'request aborted' : (logMessage ?? 'request'));
    });
    next();
  };
}

/** The path as the line shows it: at most `MAX_PATH` characters (`…` says it was cut). */
function cut(path: unknown): string {
  const text = String(path);
  return text.length > MAX_PATH ? `${text.slice(0, MAX_PATH)}…` : text;
}
