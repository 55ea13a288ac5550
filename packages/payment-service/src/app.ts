import express from 'express';
import { readinessHandler } from '@msa/stream-kit/service';
import type { Redis } from 'ioredis';

/** payment-service works off the stream; its HTTP surface is for health and readiness checks. */
export function createApp({ redis }: { redis: Redis }) {
  const app = express();
  app.disable('x-powered-by');
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/readyz', readinessHandler(redis, 'payment-service'));
  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  return app;
}
