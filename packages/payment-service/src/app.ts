import express from 'express';
import { errorMiddleware, readinessHandler } from '@msa/stream-kit/service';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

export interface AppDeps {
  /** For the readiness probe. */
  redis: Redis;
  logger: Logger;
}

/** payment-service works off the stream; its HTTP surface is for health and readiness checks. */
export function createApp({ redis, logger }: AppDeps) {
  const app = express();
  app.disable('x-powered-by');
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', readinessHandler(redis, 'payment-service'));
  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use(errorMiddleware(logger));
  return app;
}
