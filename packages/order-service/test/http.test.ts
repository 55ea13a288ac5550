import { createPublisher, type Publisher } from '@msa/stream-kit';
import { openRequestConnection } from '@msa/stream-kit/service';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { freePort } from '../../../harness/net.ts';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { entryFields } from '../../../harness/streams.ts';
import { createApp } from '../src/app.ts';
import { ordersOn } from './read-model.ts';

// Its own Redis: these tests count the entries of the real `order-events` stream.
let server: RedisServer;
let redis: Redis;
let appRedis: Redis;
let publisher: Publisher;
let app: ReturnType<typeof createApp>;
const logger = pino({ level: 'silent' });

beforeAll(async () => {
  server = await startRedisServer();
  redis = new Redis(server.url);
  appRedis = openRequestConnection(server.url, logger);
  publisher = createPublisher({ connection: appRedis });
  app = createApp({ publisher, redis: appRedis, logger, instance: 'test', orders: ordersOn(appRedis) });
});
beforeEach(async () => {
  await redis.del('order-events');
});
afterAll(async () => {
  await publisher?.close();
  await appRedis?.quit();
  await redis?.quit();
  await server?.stop();
});

const orderEntries = () => entryFields(redis, 'order-events');

const valid = { userId: 'user-1', productId: 'product-9', price: 1000 };

describe('POST /orders', () => {
  it('answers 202 with the order id and publishes one order-created entry', async () => {
    const response = await request(app).post('/orders').send(valid);

    expect(response.status).toBe(202);
    expect(response.body).toEqual({ orderId: expect.stringMatching(/^[0-9a-f-]{36}$/) });
    expect(await orderEntries()).toEqual([
      {
        type: 'order-created',
        orderId: response.body.orderId,
        userId: 'user-1',
        productId: 'product-9',
        price: '1000',
      },
    ]);
  });

  it('keeps up to two decimals of the price exactly', async () => {
    await request(app)
      .post('/orders')
      .send({ ...valid, price: 12.5 })
      .expect(202);

    expect((await orderEntries())[0]?.price).toBe('12.5');
  });

  describe('rejects invalid input with 400, the field at fault, and publishes nothing', () => {
    const cases: [string, unknown, string][] = [
      ['a missing userId', { productId: 'p', price: 1 }, 'userId'],
      ['a blank userId', { ...valid, userId: '   ' }, 'userId'],
      ['a numeric productId', { ...valid, productId: 42 }, 'productId'],
      ['a userId with a lone high surrogate', { ...valid, userId: 'alice\ud800' }, 'userId'],
      ['a productId with a lone low surrogate', { ...valid, productId: '\udc00book' }, 'productId'],
      ['a userId with its surrogates swapped', { ...valid, userId: '\udc69\ud83d' }, 'userId'],
      ['a missing price', { userId: 'u', productId: 'p' }, 'price'],
      ['a zero price', { ...valid, price: 0 }, 'price'],
      ['a negative price', { ...valid, price: -5 }, 'price'],
      ['a price given as a string', { ...valid, price: '1000' }, 'price'],
      ['a non-numeric price', { ...valid, price: 'abc' }, 'price'],
      ['a price with three decimals', { ...valid, price: 1.005 }, 'price'],
      ['an absurdly large price', { ...valid, price: 1e15 }, 'price'],
      ['an array instead of an object', [valid], 'body'],
      ['a bare string', 'order', 'body'],
      ['null', null, 'body'],
    ];
    it.each(cases)('%s', async (_name, body, field) => {
      const response = await request(app)
        .post('/orders')
        .set('content-type', 'application/json')
        .send(JSON.stringify(body));

      expect(response.status).toBe(400);
      expect(response.body).toMatchObject({ field, error: expect.stringContaining(field) });
      expect(await orderEntries()).toEqual([]);
    });

    it('malformed JSON', async () => {
      const response = await request(app)
        .post('/orders')
        .set('content-type', 'application/json')
        .send('{"userId": "u1", ');

      expect(response.status).toBe(400);
      expect(response.body).toEqual({ error: 'body: malformed JSON', field: 'body' });
      expect(await orderEntries()).toEqual([]);
    });

    it('a body that does not inflate as its Content-Encoding says', async () => {
      const response = await request(app)
        .post('/orders')
        .set('content-type', 'application/json')
        .set('content-encoding', 'gzip')
        .send(JSON.stringify(valid));

      expect(response.status).toBe(400);
      expect(response.body).toEqual({ error: 'body: cannot be decoded', field: 'body' });
      expect(await orderEntries()).toEqual([]);
    });

    it('an unknown field, named', async () => {
      const response = await request(app)
        .post('/orders')
        .send({ ...valid, discount: 50 });

      expect(response.status).toBe(400);
      expect(response.body).toEqual({
        error: 'discount is not a field of an order (userId, productId, price)',
        field: 'discount',
      });
      expect(await orderEntries()).toEqual([]);
    });
  });

  describe('answers in words a person can act on', () => {
    it.each([
      ['a missing field', { productId: 'p', price: 1 }, 'userId is required'],
      ['a field of the wrong type', { ...valid, price: '1000' }, 'price must be a number'],
      ['a price of 0', { ...valid, price: 0 }, 'price must be a positive number with at most 2 decimals'],
      [
        'an ID too long',
        { ...valid, productId: 'p'.repeat(129) },
        'productId must be at most 128 characters',
      ],
      ['a body that is not an object', [valid], 'body must be a JSON object'],
    ])('%s: %j', async (_name, body, error) => {
      const response = await request(app)
        .post('/orders')
        .set('content-type', 'application/json')
        .send(JSON.stringify(body));

      expect([response.status, response.body.error]).toEqual([400, error]);
    });
  });

  describe('with a body that is not JSON', () => {
    it.each([
      ['text/plain', 'userId=u1'],
      ['application/x-www-form-urlencoded', 'userId=u1&productId=p1&price=1'],
    ])('answers 415 naming the content type it takes (%s), and publishes nothing', async (type, body) => {
      const response = await request(app).post('/orders').set('content-type', type).send(body);

      expect(response.status).toBe(415);
      expect(response.body).toEqual({
        error: 'content-type must be application/json',
        field: 'content-type',
      });
      expect(await orderEntries()).toEqual([]);
    });

    it('answers 415 to a request with no content type at all', async () => {
      const response = await request(app).post('/orders');

      expect([response.status, response.body.field]).toEqual([415, 'content-type']);
    });
  });

  describe('on a known path asked with another method', () => {
    it.each([
      ['put', '/orders', 'GET, HEAD, POST'],
      ['delete', '/orders', 'GET, HEAD, POST'],
      ['post', '/orders/o-1', 'GET, HEAD'],
      ['post', '/order', 'GET, HEAD'],
      ['put', '/healthz', 'GET, HEAD'],
    ] as const)('answers %s %s with 405 and Allow: %s', async (method, path, allow) => {
      const response = await request(app)[method](path);

      expect(response.status).toBe(405);
      expect(response.headers.allow).toBe(allow);
      expect(response.body).toEqual({
        error: `${method.toUpperCase()} ${path} is not allowed; use ${allow}`,
      });
    });
  });

  describe('with a lone surrogate in an ID, sent as a JSON escape', () => {
    it('answers 400 naming the field, instead of storing U+FFFD and merging two users', async () => {
      const response = await request(app)
        .post('/orders')
        .set('content-type', 'application/json')
        .send('{"userId":"alice\\ud800","productId":"p1","price":1000}');

      expect(response.status).toBe(400);
      expect(response.body).toEqual({
        error: 'userId must be valid Unicode text (it has a lone surrogate)',
        field: 'userId',
      });
      expect(await orderEntries()).toEqual([]);
    });

    it('accepts a surrogate pair, and stores the character exactly', async () => {
      const response = await request(app)
        .post('/orders')
        .set('content-type', 'application/json')
        .send('{"userId":"alice\\ud83d\\udc69","productId":"p1","price":1000}');

      expect(response.status).toBe(202);
      expect((await orderEntries())[0]?.userId).toBe('alice👩');
    });
  });

  it('answers 413 to an oversized body and publishes nothing', async () => {
    const response = await request(app)
      .post('/orders')
      .send({ ...valid, userId: 'u'.repeat(20_000) });

    expect(response.status).toBe(413);
    expect(response.body.field).toBe('body');
    expect(await orderEntries()).toEqual([]);
  });
});

describe('GET /order (the tutorial endpoint)', () => {
  it("answers 'ok' and publishes the order", async () => {
    const response = await request(app).get('/order').query({ userId: 'u1', productId: 'p1', price: '1000' });

    expect(response.status).toBe(200);
    expect(response.text).toBe('ok');
    expect(await orderEntries()).toEqual([
      expect.objectContaining({ type: 'order-created', userId: 'u1', productId: 'p1', price: '1000' }),
    ]);
  });

  const cases: [string, string, string][] = [
    ['a missing price', 'userId=u1&productId=p1', 'price'],
    ['a zero price', 'userId=u1&productId=p1&price=0', 'price'],
    ['a non-numeric price', 'userId=u1&productId=p1&price=abc', 'price'],
    ['a blank userId', 'userId=&productId=p1&price=10', 'userId'],
    ['a repeated userId', 'userId=a&userId=b&productId=p1&price=10', 'userId'],
    // Node's query parser would read these bytes as U+FFFD.
    ['a userId with an encoded lone surrogate', 'userId=alice%ED%A0%80&productId=p1&price=10', 'userId'],
    ['a productId that is not UTF-8', 'userId=u1&productId=p%FF&price=10', 'productId'],
    ['a parameter name that is not UTF-8', 'userId=u1&productId=p1&price=10&%C3=x', 'query'],
  ];
  it.each(cases)('rejects %s with 400 and publishes nothing', async (_name, query, field) => {
    const response = await request(app).get(`/order?${query}`);

    expect(response.status).toBe(400);
    expect(response.body.field).toBe(field);
    expect(await orderEntries()).toEqual([]);
  });
});

describe('GET /order with percent-encoded UTF-8', () => {
  it('accepts it, and stores the characters exactly', async () => {
    const response = await request(app).get('/order?userId=alice%F0%9F%91%A9&productId=100%&price=10');

    expect(response.status).toBe(200);
    expect(await orderEntries()).toEqual([expect.objectContaining({ userId: 'alice👩', productId: '100%' })]);
  });
});

describe('the HTTP surface', () => {
  it('answers /healthz with its instance', async () => {
    await request(app).get('/healthz').expect(200, { status: 'ok', instance: 'test' });
  });

  it('answers unknown routes with a JSON 404 and does not advertise Express', async () => {
    const response = await request(app).get('/nope');

    expect(response.status).toBe(404);
    expect(response.body).toEqual({ error: 'not found' });
    expect(response.headers['x-powered-by']).toBeUndefined();
  });

  it('answers 503, not 500, when Redis cannot be reached', async () => {
    const nowhere = openRequestConnection(`redis://127.0.0.1:${await freePort()}`, logger);
    try {
      const response = await request(
        createApp({
          publisher: createPublisher({ connection: nowhere }),
          redis: nowhere,
          logger,
          instance: 'test',
          orders: ordersOn(nowhere),
        }),
      )
        .post('/orders')
        .send(valid);

      expect(response.status).toBe(503);
      expect(response.body.error).toMatch(/try again later/);
    } finally {
      nowhere.disconnect();
    }
  });
});

describe('the order read model over HTTP', () => {
  const orders = () => ordersOn(appRedis);
  /** Places an order over HTTP and applies its entry to the read model, as the projection would. */
  async function placedAndProjected(userId = 'user-1') {
    const response = await request(app)
      .post('/orders')
      .send({ ...valid, userId });
    const { orderId } = response.body as { orderId: string };
    const [entry] = (await redis.xrange('order-events', '-', '+')).filter(([, fields]) =>
      fields.includes(orderId),
    );
    // prettier-ignore
    await orders().orderEventsHandler(
      { type: 'order-created', orderId, userId, productId: valid.productId, price: valid.price },
      { id: entry![0], stream: 'order-events', group: 'order-service-group', consumer: 'c', deliveryCount: 1, stillHeld: () => true },
    );
    return { response, orderId };
  }

  it('answers POST /orders with the Location of the order', async () => {
    const { response, orderId } = await placedAndProjected();

    expect(response.status).toBe(202);
    expect(response.headers.location).toBe(`/orders/${orderId}`);
    const order = await request(app).get(response.headers.location!);
    expect(order.status).toBe(200);
    expect(order.body).toMatchObject({ orderId, status: 'PENDING', version: 1, price: 1000 });
  });

  it.each([
    ['404 for an order it does not know', '/orders/no-such-order', 404, 'orderId'],
    ['400 for a blank orderId', '/orders/%20%20', 400, 'orderId'],
    ['400 for an orderId over 128 characters', `/orders/${'o'.repeat(129)}`, 400, 'orderId'],
  ])('answers %s, naming the field', async (_name, path, status, field) => {
    const response = await request(app).get(path);

    expect([response.status, response.body.field]).toEqual([status, field]);
  });

  it("lists a user's orders newest first, a page at a time", async () => {
    const userId = `user-${Date.now()}`;
    const placed: string[] = [];
    for (let n = 0; n < 3; n += 1) placed.push((await placedAndProjected(userId)).orderId);

    const first = await request(app).get('/orders').query({ userId, limit: 2 });
    const second = await request(app)
      .get('/orders')
      .query({ userId, limit: 2, cursor: first.body.nextCursor });

    expect(first.status).toBe(200);
    expect(
      [...first.body.orders, ...second.body.orders].map((order: { orderId: string }) => order.orderId),
    ).toEqual([...placed].reverse());
    expect(second.body.nextCursor).toBeUndefined();
  });

  it.each([
    ['no userId', {}, 'userId'],
    ['a limit of 0', { userId: 'u', limit: '0' }, 'limit'],
    ['a limit of 101', { userId: 'u', limit: '101' }, 'limit'],
    ['a cursor that is not one', { userId: 'u', cursor: 'not a cursor!' }, 'cursor'],
  ])('answers GET /orders with 400 for %s, naming the field', async (_name, query, field) => {
    const response = await request(app).get('/orders').query(query);

    expect([response.status, response.body.field]).toEqual([400, field]);
  });
});
