import express from 'express';
import { readinessHandler } from '@msa/stream-kit/service';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { SentLog } from './sent-log.ts';

const Query = z.object({ userId: z.string('userId: required').trim().min(1, 'userId: must not be blank') });

export interface AppDeps {
  sentLog: SentLog;
  /** For the readiness probe. */
  redis: Redis;
  logger: Logger;
}

export function createApp({ sentLog, redis, logger }: AppDeps) {
  const app = express();
  app.disable('x-powered-by');

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  app.get('/readyz', readinessHandler(redis, 'notification-service'));

  /** What was sent to a user, oldest first: for people and tests to see the flow's outcome. */
  app.get('/notifications', async (req, res) => {
    const query = Query.safeParse(req.query);
    if (!query.success) {
      res.status(400).json({ error: query.error.issues[0]?.message, field: 'userId' });
      return;
    }
    try {
      res.json(await sentLog.list(query.data.userId));
    } catch (err) {
      logger.warn({ err }, 'cannot read notifications');
      res.status(503).json({ error: 'notifications cannot be read right now, try again later' });
    }
  });

  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  return app;
}
