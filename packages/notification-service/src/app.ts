import express, { type Request } from 'express';
import {
  accessLog,
  errorMiddleware,
  healthzHandler,
  malformedQueryParameter,
  readinessHandler,
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
}

/**
 * The notification-service HTTP API:
 *
 * - `GET /notifications?userId=&limit=&cursor=` → 200 `{notifications, nextCursor}`: what was
 *   sent to the user, oldest first, `limit` at a time (100 unless told, at most 1000). While
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
export function createApp({ sentLog, redis, logger, instance, metrics, tracer }: AppDeps) {
  const app = express();
  app.disable('x-powered-by');
  if (tracer) app.use(traceRequests(tracer));
  if (metrics) app.use(metrics.http);
  // The access lines carry no secret: no redaction, whose wildcard paths cost 7 µs a line.
  app.use(accessLog(logger.child({}, { redact: [] })));

  app.get('/healthz', healthzHandler(instance));
  if (metrics) app.get('/metrics', metrics.handler);

  app.get('/readyz', readinessHandler(redis, 'notification-service'));

  /** What was sent to a user, oldest first: for people and tests to see the flow's outcome. */
  app.get('/notifications', async (req, res) => {
    const { userId, limit = DEFAULT_PAGE_SIZE, cursor } = parseQuery(req);
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
