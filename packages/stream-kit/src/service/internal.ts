import type { Server } from 'node:http';
import express, { Router } from 'express';
import { z } from 'zod';
import type { RedisClient } from '../connection.ts';
import type { Logger } from '../logger.ts';
import { errorMiddleware, methodNotAllowed } from './http-errors.ts';
import type { ServiceMetrics } from './metrics.ts';
import { unsetIfEmpty } from './env.ts';
import { listen } from './http.ts';
import { healthzHandler, readinessHandler } from './readiness.ts';

/*
 * The internal endpoints, for the platform rather than customers: liveness, readiness, metrics.
 * They need no token. By default they are served with the service's routes; with INTERNAL_PORT,
 * on a listener of their own (INTERNAL_HOST: say, an address only the cluster network reaches),
 * and the customer-facing port no longer answers them.
 */

/** The variables that move the internal endpoints to a listener of their own. */
export const internalEnv = {
  /** A port for `/healthz`, `/readyz` and `/metrics` alone; unset, they are served on PORT. */
  INTERNAL_PORT: unsetIfEmpty(z.coerce.number().int().min(1).max(65_535)),
  /** The address INTERNAL_PORT listens on; unset, every address of the host. */
  INTERNAL_HOST: unsetIfEmpty(
    z.union([z.ipv4(), z.ipv6(), z.hostname()], { error: 'must be an IP address or a host name' }),
  ),
};

export interface InternalDeps {
  /** The service's name: its readiness probe writes `<service>:readyz`. */
  service: string;
  /** Its `INSTANCE_ID`, which `/healthz` answers with. */
  instance: string;
  redis: RedisClient;
  /** `GET /metrics` serves them when given. */
  metrics?: Pick<ServiceMetrics, 'handler'> | undefined;
}

/**
 * `GET /healthz` → 200 `{status: 'ok', instance}`; `GET /readyz` as `readinessHandler` says;
 * `GET /metrics` (with `metrics`); 405 to other methods of the first two.
 */
export function internalRoutes({ service, instance, redis, metrics }: InternalDeps): Router {
  const router = Router();
  router.get('/healthz', healthzHandler(instance));
  if (metrics) router.get('/metrics', metrics.handler);
  router.get('/readyz', readinessHandler(redis, service));
  for (const path of ['/healthz', '/readyz']) router.all(path, methodNotAllowed('GET, HEAD'));
  return router;
}

/** An app of the internal endpoints alone, for INTERNAL_PORT: 404 to anything else. */
export function internalApp(deps: InternalDeps & { logger: Logger }) {
  const app = express();
  app.disable('x-powered-by');
  app.use(internalRoutes(deps));
  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use(errorMiddleware(deps.logger));
  return app;
}

/**
 * With INTERNAL_PORT set, serves `internalApp` there (on INTERNAL_HOST) and resolves to its server;
 * resolves to undefined without. Rejects as `listen` does (EADDRINUSE, ...).
 */
export async function listenInternal(
  config: { INTERNAL_PORT?: number | undefined; INTERNAL_HOST?: string | undefined },
  deps: InternalDeps & { logger: Logger },
): Promise<Server | undefined> {
  if (config.INTERNAL_PORT === undefined) return undefined;
  const server = await listen(internalApp(deps), {
    port: config.INTERNAL_PORT,
    host: config.INTERNAL_HOST,
    logger: deps.logger,
  });
  deps.logger.info(
    { host: config.INTERNAL_HOST, port: config.INTERNAL_PORT },
    'internal endpoints (/healthz, /readyz, /metrics) listening apart',
  );
  return server;
}
