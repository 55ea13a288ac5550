import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { createPublisher, type Publisher } from '@msa/stream-kit';
import { authenticate, openRequestConnection, READ_ALL_SCOPE, signToken } from '@msa/stream-kit/service';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { entryFields } from '../../../harness/streams.ts';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { orderRateLimits } from '../src/rate-limit.ts';
import { ordersOn } from './read-model.ts';

/*
 * order-service with auth on (AUTH_SECRET), against a redis-server of its own: who may place and
 * read which orders, what a refusal answers, and the rate limits counted in Redis.
 */

const SECRET = 'order-service-auth-test-secret-0123456789';
let server: RedisServer;
let redis: Redis;
let appRedis: Redis;
let publisher: Publisher;
let app: ReturnType<typeof createApp>;
/** Every line the app logged, as written. */
let logged = '';
const logger = pino(
  { level: 'debug' },
  new Writable({
    write(chunk, _encoding, done) {
      logged += String(chunk);
      done();
    },
  }),
);

const tokenOf = (userId: string, scopes: string[] = []) => signToken(SECRET, { userId, scopes });
const bearer = async (userId: string, scopes: string[] = []) => `Bearer ${await tokenOf(userId, scopes)}`;

/** An app on the shared Redis, with auth on unless told. */
function appWith(options: Partial<Parameters<typeof createApp>[0]> = {}) {
  return createApp({
    publisher,
    redis: appRedis,
    logger,
    instance: 'test',
    orders: ordersOn(appRedis),
    authenticate: authenticate({ AUTH_SECRET: SECRET }, 'order-service'),
    ...options,
  });
}

beforeAll(async () => {
  server = await startRedisServer();
  redis = new Redis(server.url);
  appRedis = openRequestConnection(server.url, pino({ level: 'silent' }));
  publisher = createPublisher({ connection: appRedis });
  app = appWith();
});
beforeEach(async () => {
  await redis.flushall();
});
afterAll(async () => {
  await publisher?.close();
  await appRedis?.quit();
  await redis?.quit();
  await server?.stop();
});

const order = { productId: 'book-1', price: 1000 };

/** Places `userId`'s order with their token, and projects it into the read model. */
async function placed(userId: string): Promise<string> {
  const response = await request(app)
    .post('/orders')
    .set('authorization', await bearer(userId))
    .send(order)
    .expect(202);
  const { orderId } = response.body as { orderId: string };
  const [entry] = (await redis.xrange('order-events', '-', '+')).filter(([, fields]) =>
    fields.includes(orderId),
  );
  const id = entry![0];
  await ordersOn(appRedis).orderEventsHandler(
    { type: 'order-created', orderId, userId, ...order },
    { id, stream: 'order-events', group: 'g', consumer: 'c', deliveryCount: 1, stillHeld: () => true },
  );
  return orderId;
}

describe('POST /orders with auth on', () => {
  it("places the order for the token's user when the body names none", async () => {
    await request(app)
      .post('/orders')
      .set('authorization', await bearer('alice'))
      .send(order)
      .expect(202);

    expect((await entryFields(redis, 'order-events')).map((entry) => entry.userId)).toEqual(['alice']);
  });

  it("takes a body whose userId is the token's own", async () => {
    await request(app)
      .post('/orders')
      .set('authorization', await bearer('alice'))
      .send({ ...order, userId: 'alice' })
      .expect(202);
  });

  it('answers 403 naming userId to a body that names another user, and publishes nothing: even a support token places only its own', async () => {
    for (const scopes of [[], [READ_ALL_SCOPE]]) {
      const response = await request(app)
        .post('/orders')
        .set('authorization', await bearer('alice', scopes))
        .send({ ...order, userId: 'bob' });

      expect(response.status).toBe(403);
      expect(response.body).toEqual({ error: expect.stringContaining("token's own user"), field: 'userId' });
    }
    expect(await entryFields(redis, 'order-events')).toEqual([]);
  });

  it('answers 401 with WWW-Authenticate without a token, and publishes nothing', async () => {
    const response = await request(app)
      .post('/orders')
      .send({ ...order, userId: 'alice' });

    expect(response.status).toBe(401);
    expect(response.headers['www-authenticate']).toBe('Bearer realm="order-service"');
    expect(await entryFields(redis, 'order-events')).toEqual([]);
  });

  it('answers 401 before it reads the body: an invalid body with no token is not told what is wrong with it', async () => {
    const response = await request(app).post('/orders').send({ price: 'nope' });

    expect(response.status).toBe(401);
  });

  it('writes no token into any log line, the rejected ones included', async () => {
    logged = '';
    const good = await tokenOf('alice');
    const bad = `${good.slice(0, -4)}AAAA`;
    await request(app).post('/orders').set('authorization', `Bearer ${good}`).send(order).expect(202);
    await request(app).post('/orders').set('authorization', `Bearer ${bad}`).send(order).expect(401);
    await request(app).get('/orders/x').set('authorization', `Bearer ${bad}`).expect(401);

    expect(logged).toContain('order accepted');
    for (const part of [...good.split('.'), ...bad.split('.')]) expect(logged).not.toContain(part);
  });
});

describe('GET /orders/<orderId> with auth on', () => {
  it("answers the caller's own order", async () => {
    const orderId = await placed('alice');

    const response = await request(app)
      .get(`/orders/${orderId}`)
      .set('authorization', await bearer('alice'));

    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ orderId, userId: 'alice' });
  });

  it("answers another user's order exactly as an order that does not exist: 404, so ids cannot be probed", async () => {
    const orderId = await placed('alice');

    const theirs = await request(app)
      .get(`/orders/${orderId}`)
      .set('authorization', await bearer('bob'));
    const missing = await request(app)
      .get('/orders/no-such-order')
      .set('authorization', await bearer('bob'));

    expect(theirs.status).toBe(404);
    expect(theirs.body).toEqual({ error: `no order ${orderId}`, field: 'orderId' });
    expect(missing.body).toEqual({ error: 'no order no-such-order', field: 'orderId' });
  });

  it('answers any order to a support token (scope orders:read-all)', async () => {
    const orderId = await placed('alice');

    const response = await request(app)
      .get(`/orders/${orderId}`)
      .set('authorization', await bearer('support-7', [READ_ALL_SCOPE]));

    expect(response.status).toBe(200);
    expect(response.body).toMatchObject({ orderId, userId: 'alice' });
  });
});

describe('GET /orders with auth on', () => {
  it("lists the token's user's orders when no userId is given, and theirs when it is their own", async () => {
    const orderId = await placed('alice');
    await placed('bob');

    for (const path of ['/orders', '/orders?userId=alice']) {
      const response = await request(app)
        .get(path)
        .set('authorization', await bearer('alice'));
      expect(response.status, path).toBe(200);
      expect((response.body as { orders: { orderId: string }[] }).orders.map((o) => o.orderId)).toEqual([
        orderId,
      ]);
    }
  });

  it("answers 404 for another user's orders, whether they have any or not", async () => {
    await placed('bob');

    for (const userId of ['bob', 'nobody']) {
      const response = await request(app)
        .get(`/orders?userId=${userId}`)
        .set('authorization', await bearer('alice'));
      expect(response.status).toBe(404);
      expect(response.body).toEqual({ error: `no orders of user ${userId} to show`, field: 'userId' });
    }
  });

  it("lists another user's orders to a support token", async () => {
    const orderId = await placed('bob');

    const response = await request(app)
      .get('/orders?userId=bob')
      .set('authorization', await bearer('support-7', [READ_ALL_SCOPE]));

    expect(response.status).toBe(200);
    expect((response.body as { orders: { orderId: string }[] }).orders.map((o) => o.orderId)).toEqual([
      orderId,
    ]);
  });
});

describe("the tutorial's GET /order", () => {
  it('stays open, without a token, for wire compatibility with the Java tutorial', async () => {
    await request(app).get('/order?userId=u1&productId=p1&price=10').expect(200);

    expect((await entryFields(redis, 'order-events')).map((entry) => entry.userId)).toEqual(['u1']);
  });

  it('is gone with TUTORIAL_ENDPOINT=false (tutorialEndpoint: false): 404, nothing published', async () => {
    const closed = appWith({ tutorialEndpoint: false });

    const response = await request(closed).get('/order?userId=u1&productId=p1&price=10');

    expect(response.status).toBe(404);
    expect(await entryFields(redis, 'order-events')).toEqual([]);
  });
});

describe('auth off (no AUTH_SECRET or AUTH_JWKS_URL: development)', () => {
  it('places orders for the body userId, and answers 400 when the body names none', async () => {
    const open = appWith({ authenticate: undefined });

    await request(open)
      .post('/orders')
      .send({ ...order, userId: 'u1' })
      .expect(202);
    const missing = await request(open).post('/orders').send(order);

    expect([missing.status, missing.body]).toEqual([400, { error: 'userId is required', field: 'userId' }]);
  });
});

describe('the rate limits of orders, counted in Redis', () => {
  const limited = (perUser: number, perAddress: number, windowS = 60) =>
    appWith({
      limits: orderRateLimits(
        appRedis,
        { RATE_LIMIT_PER_USER: perUser, RATE_LIMIT_PER_ADDRESS: perAddress, RATE_LIMIT_WINDOW_S: windowS },
        logger,
      ),
    });

  it("answers a user's order over the limit with 429 and Retry-After, publishing nothing, while another user goes on", async () => {
    const limitedApp = limited(3, 0);
    const alice = await bearer('alice');
    for (let i = 0; i < 3; i += 1)
      await request(limitedApp).post('/orders').set('authorization', alice).send(order).expect(202);

    const over = await request(limitedApp).post('/orders').set('authorization', alice).send(order);

    expect(over.status).toBe(429);
    expect(over.body).toEqual({ error: 'too many orders: at most 3 orders every 60 s per user' });
    expect(Number(over.headers['retry-after'])).toBeGreaterThanOrEqual(58);
    expect(Number(over.headers['retry-after'])).toBeLessThanOrEqual(60);
    expect(await entryFields(redis, 'order-events')).toHaveLength(3);
    await request(limitedApp)
      .post('/orders')
      .set('authorization', await bearer('bob'))
      .send(order)
      .expect(202);
  });

  it('limits a client address whatever users it places for', async () => {
    const limitedApp = limited(0, 2);
    await request(limitedApp)
      .post('/orders')
      .set('authorization', await bearer('a'))
      .send(order)
      .expect(202);
    await request(limitedApp)
      .post('/orders')
      .set('authorization', await bearer('b'))
      .send(order)
      .expect(202);

    const over = await request(limitedApp)
      .post('/orders')
      .set('authorization', await bearer('c'))
      .send(order);

    expect(over.status).toBe(429);
    expect(over.body.error).toBe('too many orders: at most 2 orders every 60 s per client address');
  });

  it('shares its counts between apps on one Redis (several instances), and starts again after the window', async () => {
    const one = limited(2, 0, 1);
    const two = limited(2, 0, 1);
    const alice = await bearer('alice');
    await request(one).post('/orders').set('authorization', alice).send(order).expect(202);
    await request(two).post('/orders').set('authorization', alice).send(order).expect(202);
    const over = await request(one).post('/orders').set('authorization', alice).send(order);
    expect([over.status, over.headers['retry-after']]).toEqual([429, '1']);

    await new Promise((resolve) => setTimeout(resolve, 1_100));
    await request(two).post('/orders').set('authorization', alice).send(order).expect(202);
  });

  it("counts the tutorial's open GET /order for its address, but not against the user it names (anyone may name anyone)", async () => {
    const limitedApp = limited(1, 2);
    await request(limitedApp).get('/order?userId=alice&productId=p1&price=10').expect(200);
    await request(limitedApp).get('/order?userId=alice&productId=p1&price=10').expect(200);
    await request(limitedApp).get('/order?userId=alice&productId=p1&price=10').expect(429);

    // alice's own limit is whole: only the address's is spent.
    await request(limited(1, 0))
      .post('/orders')
      .set('authorization', await bearer('alice'))
      .send(order)
      .expect(202);
  });

  it('lets an order through after 200 ms, uncounted, when Redis stalls (CLIENT PAUSE)', async () => {
    const limits = orderRateLimits(
      appRedis,
      { RATE_LIMIT_PER_USER: 1, RATE_LIMIT_PER_ADDRESS: 1, RATE_LIMIT_WINDOW_S: 60 },
      logger,
    );
    await appRedis.ping();
    await redis.call('CLIENT', 'PAUSE', '1500', 'ALL');

    const started = performance.now();
    await expect(limits.check('alice', '127.0.0.1')).resolves.toBeUndefined();
    const waited = performance.now() - started;

    expect(waited).toBeGreaterThanOrEqual(150);
    expect(waited).toBeLessThan(1_000);
    await redis.call('CLIENT', 'UNPAUSE');
  });

  it('lets an order through at once when the connection to Redis is not ready (a server that never answers)', async () => {
    // A server that accepts the connection and says nothing: a Redis stalled mid-command.
    const silent = createNetServer((socket) => socket.on('data', () => {}));
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const stalled = new Redis({ port: (silent.address() as AddressInfo).port, maxRetriesPerRequest: 1 });
    stalled.on('error', () => {});
    try {
      // ioredis does not wait for a reply to consider the connection ready (no ready check here).
      const limits = orderRateLimits(
        stalled,
        { RATE_LIMIT_PER_USER: 1, RATE_LIMIT_PER_ADDRESS: 1, RATE_LIMIT_WINDOW_S: 60 },
        logger,
      );
      const started = performance.now();
      await expect(limits.check('alice', '127.0.0.1')).resolves.toBeUndefined();
      expect(performance.now() - started).toBeLessThan(1_000);
    } finally {
      stalled.disconnect();
      silent.close();
    }
  });

  it('lets orders through, uncounted, when Redis cannot count: the publish decides', async () => {
    const nowhere = new Redis({
      port: 1,
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
    });
    try {
      const limits = orderRateLimits(
        nowhere,
        { RATE_LIMIT_PER_USER: 1, RATE_LIMIT_PER_ADDRESS: 1, RATE_LIMIT_WINDOW_S: 60 },
        logger,
      );
      await expect(limits.check('alice', '127.0.0.1')).resolves.toBeUndefined();
      await expect(limits.check('alice', '127.0.0.1')).resolves.toBeUndefined();
    } finally {
      nowhere.disconnect();
    }
  });
});

describe('clientOf: the client an address stands for in the per-address limit', () => {
  it('keeps an IPv4 address, unwraps an IPv4-mapped IPv6 one, and counts IPv6 by its /64', async () => {
    const { clientOf } = await import('../src/rate-limit.ts');
    expect(clientOf('203.0.113.7')).toBe('203.0.113.7');
    expect(clientOf('::ffff:203.0.113.7')).toBe('203.0.113.7');
    expect(clientOf('2001:db8:1:2:3:4:5:6')).toBe('2001:db8:1:2::/64');
    expect(clientOf('2001:db8:1:2::ffff')).toBe(clientOf('2001:db8:1:2:3:4:5:6'));
    expect(clientOf('2001:db8:1:3::1')).not.toBe(clientOf('2001:db8:1:2::1'));
  });
});

describe("order-service's auth and limit variables (loadConfig)", () => {
  const production = { NODE_ENV: 'production' };
  const jwks = { AUTH_JWKS_URL: 'https://id.example/.well-known/jwks.json' };
  const refusal = (env: NodeJS.ProcessEnv) => {
    try {
      loadConfig(env);
    } catch (err) {
      return (err as Error).message;
    }
    return undefined;
  };

  it('refuses production without auth, naming AUTH_JWKS_URL', () => {
    expect(refusal(production)).toMatch(/AUTH_JWKS_URL: required with NODE_ENV=production/);
  });

  it("refuses a JWKS in production without https, issuer and audience: a provider signs every application's tokens", () => {
    expect(refusal({ ...production, AUTH_JWKS_URL: 'http://id.example/jwks' })).toMatch(
      /AUTH_JWKS_URL: must be an https:\/\/ URL with NODE_ENV=production/,
    );
    const message = refusal({ ...production, ...jwks });
    expect(message).toMatch(/AUTH_ISSUER: required with AUTH_JWKS_URL/);
    expect(message).toMatch(/AUTH_AUDIENCE: required with AUTH_JWKS_URL/);
    expect(
      refusal({ ...production, ...jwks, AUTH_ISSUER: 'https://id.example/', AUTH_AUDIENCE: 'shop' }),
    ).toBeUndefined();
  });

  it('takes an empty variable as unset for auth, but refuses an empty rate limit rather than read it as 0 (no limit)', () => {
    expect(refusal({ ...production, AUTH_SECRET: '', AUTH_JWKS_URL: '' })).toMatch(/AUTH_JWKS_URL: required/);
    expect(refusal({ RATE_LIMIT_PER_USER: '' })).toMatch(/RATE_LIMIT_PER_USER: must be a whole number/);
    expect(refusal({ RATE_LIMIT_PER_ADDRESS: ' ' })).toMatch(
      /RATE_LIMIT_PER_ADDRESS: must be a whole number/,
    );
    expect(loadConfig({ INTERNAL_PORT: '' }).INTERNAL_PORT).toBeUndefined();
    expect(loadConfig({})).toMatchObject({
      RATE_LIMIT_PER_USER: 30,
      RATE_LIMIT_PER_ADDRESS: 300,
      RATE_LIMIT_WINDOW_S: 60,
    });
  });

  it('takes TRUST_PROXY as hops, addresses, subnets or names, and refuses true or a typo by name', () => {
    expect(loadConfig({ TRUST_PROXY: '1' }).TRUST_PROXY).toBe(1);
    expect(loadConfig({ TRUST_PROXY: 'loopback, 10.0.0.0/8, 2001:db8::1' }).TRUST_PROXY).toBe(
      'loopback, 10.0.0.0/8, 2001:db8::1',
    );
    for (const value of ['true', 'TRUE', 'foo', '10.0.0.0/99', ''])
      expect(refusal({ TRUST_PROXY: value }), value).toMatch(/TRUST_PROXY: must be a number of hops/);
  });
});
