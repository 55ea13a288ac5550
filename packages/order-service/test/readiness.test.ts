import { createServer, type Server, type Socket } from 'node:net';
import { createPublisher } from '@msa/stream-kit';
import { openRequestConnection } from '@msa/stream-kit/service';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort } from '../../../harness/net.ts';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { startService, type RunningService } from '../../../harness/services.ts';
import { waitFor } from '../../../harness/wait.ts';
import { createApp } from '../src/app.ts';
import { ordersOn } from './read-model.ts';

const logger = pino({ level: 'silent' });
const valid = { userId: 'user-1', productId: 'product-9', price: 1000 };

const opened: Redis[] = [];
afterAll(() => {
  for (const redis of opened) redis.disconnect();
});

/** The app as main.ts wires it: one request connection to `url` for the publisher, the script and /readyz. */
function appOn(url: string) {
  const redis = openRequestConnection(url, logger);
  opened.push(redis);
  return createApp({
    publisher: createPublisher({ connection: redis }),
    redis,
    logger,
    instance: 'test',
    orders: ordersOn(redis),
  });
}

/** Milliseconds `promise` took to settle, and its value. */
async function timed<T>(promise: PromiseLike<T>): Promise<[T, number]> {
  const start = Date.now();
  const value = await promise;
  return [value, Date.now() - start];
}

describe('GET /readyz', () => {
  it('answers 200 ready when Redis takes its probe write', async () => {
    await request(appOn(inject('redisUrl')))
      .get('/readyz')
      .expect(200, { status: 'ready' });
  });

  describe('when Redis answers but refuses writes', () => {
    // Their own servers: these tests change how Redis itself behaves.
    const servers: RedisServer[] = [];
    let admin: Redis;
    let app: ReturnType<typeof appOn>;
    beforeAll(async () => {
      servers.push(await startRedisServer());
      admin = new Redis(servers[0]!.url);
      app = appOn(servers[0]!.url);
    });
    afterAll(async () => {
      admin?.disconnect();
      await Promise.all(servers.map((server) => server.stop()));
    });

    it('writes a key of its own that expires', async () => {
      await request(app).get('/readyz').expect(200);

      const ttl = await admin.pttl('order-service:readyz');

      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(10_000);
    });

    it('answers 503 with OOM while Redis is out of memory (noeviction), and 200 once it is not', async () => {
      await admin.config('SET', 'maxmemory-policy', 'noeviction');
      await admin.config('SET', 'maxmemory', '1');
      try {
        expect(await admin.ping()).toBe('PONG'); // what the old probe asked

        const full = await request(app).get('/readyz');

        expect([full.status, full.body]).toEqual([
          503,
          { status: 'not ready', reason: expect.stringMatching(/^redis: OOM command not allowed/) },
        ]);
      } finally {
        await admin.config('SET', 'maxmemory', '0');
      }
      await request(app).get('/readyz').expect(200, { status: 'ready' });
    });

    it('answers 503 with READONLY while Redis is a read-only replica, and 200 once it is a primary again', async () => {
      // No delay before it serves the replica its data (5 s by default).
      const primary = await startRedisServer({ args: ['--repl-diskless-sync-delay', '0'] });
      servers.push(primary);
      await admin.call('REPLICAOF', '127.0.0.1', String(primary.port));
      try {
        await waitFor(async () => /master_link_status:up/.test(await admin.info('replication')), {
          what: 'the replica to sync',
        });
        expect(await admin.ping()).toBe('PONG');

        const replica = await request(app).get('/readyz');

        expect([replica.status, replica.body]).toEqual([
          503,
          { status: 'not ready', reason: expect.stringMatching(/^redis: READONLY /) },
        ]);
      } finally {
        await admin.call('REPLICAOF', 'NO', 'ONE');
      }
      await request(app).get('/readyz').expect(200, { status: 'ready' });
    });
  });

  it('answers 503 not ready, with the reason, when nothing listens at the Redis address', async () => {
    const app = appOn(`redis://127.0.0.1:${await freePort()}`);

    const [response, ms] = await timed(request(app).get('/readyz'));

    expect(response.status).toBe(503);
    expect(response.body).toEqual({ status: 'not ready', reason: expect.stringMatching(/^redis: /) });
    expect(ms).toBeLessThan(2_000);
  });

  describe('when Redis accepts connections but never answers', () => {
    let silent: Server;
    const sockets: Socket[] = [];
    afterEach(async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent?.close(resolve));
    });

    it('answers 503 within a bounded time instead of waiting for the probe', async () => {
      silent = createServer((socket) => sockets.push(socket));
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      const { port } = silent.address() as { port: number };
      const app = appOn(`redis://127.0.0.1:${port}`);

      const [response, ms] = await timed(request(app).get('/readyz'));

      expect(response.status).toBe(503);
      expect(response.body).toEqual({ status: 'not ready', reason: expect.stringMatching(/^redis: /) });
      expect(ms).toBeLessThan(2_000);
    });

    it('answers POST /orders with an Idempotency-Key with 503 once the command times out', async () => {
      silent = createServer((socket) => sockets.push(socket));
      await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
      const { port } = silent.address() as { port: number };
      const app = appOn(`redis://127.0.0.1:${port}`);

      const [response, ms] = await timed(
        request(app).post('/orders').set('Idempotency-Key', 'key-silent').send(valid),
      );

      expect(response.status).toBe(503);
      expect(ms).toBeLessThan(4_000);
    });
  });
});

describe('when Redis is unreachable', () => {
  it('still answers /healthz', async () => {
    const app = appOn(`redis://127.0.0.1:${await freePort()}`);

    await request(app).get('/healthz').expect(200, { status: 'ok', instance: 'test' });
  });

  it.each([
    ['without an Idempotency-Key', {}],
    ['with an Idempotency-Key', { 'Idempotency-Key': 'key-unreachable' }],
  ])('answers POST /orders %s with 503 within a few seconds', async (_name, headers) => {
    const app = appOn(`redis://127.0.0.1:${await freePort()}`);

    const [response, ms] = await timed(request(app).post('/orders').set(headers).send(valid));

    expect(response.status).toBe(503);
    expect(response.body).toEqual({ error: expect.stringMatching(/try again later/) });
    expect(ms).toBeLessThan(3_000);
  });

  describe('the order-service process', () => {
    let service: RunningService | undefined;

    let redisServer: RedisServer | undefined;
    afterEach(async () => {
      await service?.stop();
      await redisServer?.stop();
    });

    it('starts, answers /healthz, says not ready on /readyz, and stops cleanly', async () => {
      service = await startService('order-service', { REDIS_URL: `redis://127.0.0.1:${await freePort()}` });

      const health = await fetch(`${service.url}/healthz`);
      const ready = await fetch(`${service.url}/readyz`);

      expect(health.status).toBe(200);
      expect(ready.status).toBe(503);
      expect(await ready.json()).toMatchObject({ status: 'not ready' });
      expect(await service.stop()).toBe(0);
    });

    it('becomes ready and takes orders once Redis comes up', async () => {
      const port = await freePort();
      service = await startService('order-service', { REDIS_URL: `redis://127.0.0.1:${port}` });
      expect((await fetch(`${service.url}/readyz`)).status).toBe(503);

      redisServer = await startRedisServer({ port });

      await waitFor(async () => (await fetch(`${service!.url}/readyz`)).status === 200, {
        timeoutMs: 10_000,
        what: '/readyz to answer 200',
      });
      const order = await fetch(`${service.url}/orders`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': 'key-after-outage' },
        body: JSON.stringify(valid),
      });
      expect(order.status).toBe(202);
    });
  });
});
