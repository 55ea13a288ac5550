import type { RedisClient } from '../connection.ts';

export type Readiness = { status: 'ready' } | { status: 'not ready'; reason: string };

/** The key a service's readiness probe writes: `<service>:readyz`, in the service's own prefix. */
export const readinessKey = (service: string) => `${service}:readyz`;

/** How long a readiness probe's key lives: it is only there to be written. */
const READINESS_KEY_TTL_MS = 10_000;

/**
 * Whether Redis takes a write from this service within `timeoutMs`: what `GET /readyz` reports.
 * The probe is `SET <service>:readyz <now> PX 10000`, a write the service's ACL user may make.
 * A PING would answer while Redis refuses every write the service needs (out of memory under
 * `maxmemory-policy noeviction`, a read-only replica); then the reason is Redis's own error, e.g.
 * `redis: OOM command not allowed ...` or `redis: READONLY ...`. Never throws, and never waits
 * longer, whatever state the connection is in.
 */
export async function probeRedis(redis: RedisClient, service: string, timeoutMs = 1_000): Promise<Readiness> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<Readiness>((resolve) => {
    const reason = `redis: no answer within ${timeoutMs} ms`;
    timer = setTimeout(() => resolve({ status: 'not ready', reason }), timeoutMs);
  });
  const write = redis.set(readinessKey(service), Date.now(), 'PX', READINESS_KEY_TTL_MS).then(
    (): Readiness => ({ status: 'ready' }),
    (err: unknown): Readiness => ({ status: 'not ready', reason: `redis: ${(err as Error).message}` }),
  );
  try {
    return await Promise.race([write, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * `GET /readyz` for Express: 200 `{status: 'ready'}` while Redis takes `service`'s probe write
 * (`probeRedis`) within a second, else 503 `{status: 'not ready', reason}`. Liveness
 * (`/healthz`) stays apart: a service without Redis is alive, and recovers by itself, but should
 * get no traffic.
 */
export function readinessHandler(redis: RedisClient, service: string) {
  return async (_req: unknown, res: { status(code: number): { json(body: unknown): unknown } }) => {
    const readiness = await probeRedis(redis, service);
    res.status(readiness.status === 'ready' ? 200 : 503).json(readiness);
  };
}

/**
 * `GET /healthz` for Express: 200 `{status: 'ok', instance}` while the process runs, with or
 * without Redis. `instance` (the service's `INSTANCE_ID`) tells which process answered.
 */
export function healthzHandler(instance: string) {
  const body = { status: 'ok', instance } as const;
  return (_req: unknown, res: { json(body: unknown): unknown }): void => {
    res.json(body);
  };
}
