import express, { type Request, type Response } from 'express';
import {
  accessLog,
  callerOf,
  mayRead,
  errorMiddleware,
  internalRoutes,
  malformedQueryParameter,
  UnavailableError,
  ValidationError,
  traceRequests,
  type ServiceMetrics,
  type Tracing,
} from '@msa/stream-kit/service';
import type { RedisClient } from '@msa/stream-kit';
import type { Logger } from 'pino';
import { z } from 'zod';
import { encodeCursor, Query } from './contract.ts';
import { DEFAULT_PAGE_SIZE, type SentLog } from './sent-log.ts';

export interface AppDeps {
  sentLog: SentLog;
  /** For the readiness probe. */
  redis: RedisClient;
  logger: Logger;
  /** This process's `INSTANCE_ID`, which `/healthz` answers with. */
  instance: string;
  /** Its metrics (`createMetrics`): every request is timed, and `GET /metrics` serves them. */
  metrics?: Pick<ServiceMetrics, 'http' | 'handler'>;
  /** Its tracer (`startTracing`): a span per request, continuing the client's `traceparent`. */
  tracer?: Tracing['tracer'];
  /**
   * Verifies the caller of `GET /notifications` (`authenticate` of stream-kit's service API).
   * @defaultValue none: auth off, anyone reads any user's (development only)
   */
  authenticate?: ((req: Request, res: Response, next: (err?: unknown) => void) => void) | undefined;
  /**
   * Serve `/healthz`, `/readyz` and `/metrics` here; false when INTERNAL_PORT serves them
   * (`internalApp`). @defaultValue true
   */
  serveInternal?: boolean | undefined;
}

/**
 * The notification-service HTTP API:
 *
 * - `GET /notifications?userId=&limit=&cursor=` → 200 `{notifications, nextCursor}`: what was
 *   sent to the user (with `authenticate`: the token's user if left out; another user's answer
 *   404 unless the token has the `orders:read-all` scope; 401 without a valid token), oldest first, `limit` at a time (100 unless told, at most 1000). While
 *   `nextCursor` is not null, pass it as `cursor` for the next page. Bad input gets 400
 *   `{error, field}`; Redis unreachable or too slow gets 503 `{error}` (`errorMiddleware`, the
 *   one place that turns errors into answers).
 * - `GET /healthz` → 200 `{status: 'ok', instance}` while the process runs; `GET /readyz` → 200
 *   `{status: 'ready'}` when Redis takes a write (`notification-service:readyz`) within a second,
 *   else 503.
 * - `GET /metrics` (when given `metrics`): the service's metrics in Prometheus's text format.
 *
 * Every request gets one access line (`accessLog`).
 */
export function createApp({
  sentLog,
  redis,
  logger,
  instance,
  metrics,
  tracer,
  authenticate,
  serveInternal = true,
}: AppDeps) {
  const app = express();
  app.disable('x-powered-by');
  if (tracer) app.use(traceRequests(tracer));
  if (metrics) app.use(metrics.http);
  // The access lines carry no secret: no redaction, whose wildcard paths cost 7 µs a line.
  app.use(accessLog(logger.child({}, { redact: [] })));

  if (serveInternal) app.use(internalRoutes({ service: 'notification-service', instance, redis, metrics }));

  /** What was sent to a user, oldest first: for people and tests to see the flow's outcome. */
  app.get('/notifications', ...(authenticate ? [authenticate] : []), async (req, res) => {
    const query = parseQuery(req);
    const { limit = DEFAULT_PAGE_SIZE, cursor } = query;
    const caller = callerOf(res);
    const userId = query.userId ?? caller?.userId;
    if (userId === undefined) throw new ValidationError('userId is required', { field: 'userId' });
    // Not found, rather than forbidden: what another user was sent stays theirs, even whether anything was.
    if (!mayRead(caller, userId)) {
      res.status(404).json({ error: `no notifications of user ${userId} to show`, field: 'userId' });
      return;
    }
    const page = await sentLog.list(userId, { start: cursor, limit }).catch((err: unknown) => {
      throw new UnavailableError('notifications cannot be read right now, try again later', { cause: err });
    });
    res.json({
      notifications: page.notifications,
      nextCursor: page.next === null ? null : encodeCursor(page.next),
    });
  });

  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use(errorMiddleware(logger));
  return app;
}

/** The query of `GET /notifications`; throws `ValidationError` naming the parameter at fault. */
function parseQuery(req: Request): z.output<typeof Query> {
  const malformed = malformedQueryParameter(req.url);
  if (malformed !== undefined)
    throw new ValidationError(`${malformed} must be valid Unicode text (percent-encoded UTF-8)`, {
      field: malformed,
    });
  const result = Query.safeParse(req.query, { reportInput: true });
  if (result.success) return result.data;
  const [issue] = result.error.issues;
  const field = issue?.path.join('.') || 'query';
  const what = issue?.code === 'invalid_type' && issue.input === undefined ? 'is required' : issue?.message;
  throw new ValidationError(`${field} ${what ?? 'is invalid'}`, { field });
}
