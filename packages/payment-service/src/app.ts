import express from 'express';
import {
  accessLog,
  errorMiddleware,
  healthzHandler,
  readinessHandler,
  traceRequests,
  type ServiceMetrics,
  type Tracing,
} from '@msa/stream-kit/service';
import type { RedisClient } from '@msa/stream-kit';
import type { Logger } from 'pino';

export interface AppDeps {
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
 * payment-service works off the stream; its HTTP surface is for health, readiness and metrics:
 * `GET /healthz` → 200 `{status: 'ok', instance}`, `GET /readyz` as `readinessHandler` says,
 * `GET /metrics` (when given `metrics`) in Prometheus's text format.
 * Every request gets one access line (`accessLog`).
 */
export function createApp({ redis, logger, instance, metrics, tracer }: AppDeps) {
  const app = express();
  app.disable('x-powered-by');
  if (tracer) app.use(traceRequests(tracer));
  if (metrics) app.use(metrics.http);
  // The access lines carry no secret: no redaction, whose wildcard paths cost 7 µs a line.
  app.use(accessLog(logger.child({}, { redact: [] })));
  app.get('/healthz', healthzHandler(instance));
  if (metrics) app.get('/metrics', metrics.handler);
  app.get('/readyz', readinessHandler(redis, 'payment-service'));
  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use(errorMiddleware(logger));
  return app;
}
