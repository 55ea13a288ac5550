import { randomUUID } from 'node:crypto';
import { createPublisher, type Publisher } from '@msa/stream-kit';
import { openRequestConnection } from '@msa/stream-kit/service';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { entryFields } from '../../../harness/streams.ts';
import { createApp } from '../src/app.ts';
import { ordersOn } from './read-model.ts';

// The run's shared Redis: other suites write `order-events` too, so every test here has its own
// userId and idempotency key, and counts only the entries that carry them.
let redis: Redis;
let appRedis: Redis;
let publisher: Publisher;
let app: ReturnType<typeof createApp>;
const logger = pino({ level: 'silent' });

beforeAll(() => {
  redis = new Redis(inject('redisUrl'));
  appRedis = openRequestConnection(inject('redisUrl'), logger);
  publisher = createPublisher({ connection: appRedis });
  app = createApp({ publisher, redis: appRedis, logger, instance: 'test', orders: ordersOn(appRedis) });
});
afterAll(async () => {
  await publisher?.close();
  await appRedis?.quit();
  await redis?.quit();
});

/** A valid order of a user no other test has. */
const anOrder = () => ({ userId: `user-${randomUUID()}`, productId: 'product-9', price: 1000 });
const aKey = () => `key-${randomUUID()}`;

const entriesOf = async (userId: string) =>
  (await entryFields(redis, 'order-events')).filter((entry) => entry.userId === userId);

const post = (body: unknown, key?: string) => {
  const req = request(app).post('/orders');
  return key === undefined ? req.send(body as object) : req.set('Idempotency-Key', key).send(body as object);
};

describe('POST /orders with an Idempotency-Key', () => {
  it('places the order once: a repeat with the same body gets the same orderId and publishes nothing', async () => {
    const order = anOrder();
    const key = aKey();

    const first = await post(order, key);
    const second = await post(order, key);

    expect(first.status).toBe(202);
    expect(second.status).toBe(202);
    expect(second.body).toEqual({ orderId: first.body.orderId });
    expect(await entriesOf(order.userId)).toEqual([
      { type: 'order-created', orderId: first.body.orderId, ...order, price: '1000' },
    ]);
  });

  it('compares the body after validation: surrounding blanks do not make it another order', async () => {
    const order = anOrder();
    const key = aKey();

    const first = await post(order, key);
    const second = await post({ ...order, userId: `  ${order.userId} ` }, key);

    expect(second.status).toBe(202);
    expect(second.body.orderId).toBe(first.body.orderId);
    expect(await entriesOf(order.userId)).toHaveLength(1);
  });

  it('remembers the key for 24 hours in order-service:idempotency:<key>', async () => {
    const order = anOrder();
    const key = aKey();

    const { body } = await post(order, key).expect(202);

    const stored = `order-service:idempotency:${key}`;
    expect(await redis.hgetall(stored)).toEqual({
      bodyHash: expect.stringMatching(/^[0-9a-f]{64}$/),
      orderId: body.orderId,
      entryId: expect.stringMatching(/^\d+-\d+$/),
    });
    expect(await redis.ttl(stored)).toBeGreaterThan(24 * 60 * 60 - 60);
    expect(await redis.ttl(stored)).toBeLessThanOrEqual(24 * 60 * 60);
  });

  it('answers 409 naming the header when the key comes back with another body, and publishes nothing', async () => {
    const order = anOrder();
    const key = aKey();
    const first = await post(order, key).expect(202);

    const other = await post({ ...order, price: 1001 }, key);

    expect(other.status).toBe(409);
    expect(other.body).toEqual({
      error: expect.stringContaining('Idempotency-Key'),
      field: 'Idempotency-Key',
    });
    expect(await entriesOf(order.userId)).toEqual([
      expect.objectContaining({ orderId: first.body.orderId, price: '1000' }),
    ]);
  });

  it('publishes one entry and answers one orderId to 10 concurrent requests with the same key', async () => {
    const order = anOrder();
    const key = aKey();

    const responses = await Promise.all(Array.from({ length: 10 }, () => post(order, key)));

    expect(responses.map((response) => response.status)).toEqual(Array(10).fill(202));
    const orderIds = new Set(responses.map((response) => response.body.orderId));
    expect(orderIds.size).toBe(1);
    const entries = await entriesOf(order.userId);
    expect(entries).toHaveLength(1);
    expect(orderIds).toEqual(new Set([entries[0]!.orderId]));
  });

  it('keeps the key free when the body is rejected, for the corrected request to use', async () => {
    const order = anOrder();
    const key = aKey();

    await post({ ...order, price: 0 }, key).expect(400);
    const corrected = await post(order, key);

    expect(corrected.status).toBe(202);
    expect(await entriesOf(order.userId)).toEqual([
      expect.objectContaining({ orderId: corrected.body.orderId }),
    ]);
  });

  it('accepts a key of 255 printable ASCII characters', async () => {
    const order = anOrder();
    const key = `${randomUUID()}~ !"#$%&'()*+,-./:;<=>?@[\\]^_\``.padEnd(255, 'k');

    const response = await post(order, key);

    expect(response.status).toBe(202);
    expect(await redis.hget(`order-service:idempotency:${key}`, 'orderId')).toBe(response.body.orderId);
  });

  describe('rejects an invalid key with 400 naming the header, and publishes nothing', () => {
    const printable = 'Idempotency-Key must be 1 to 255 printable ASCII characters';
    const cases: [string, string | string[], string][] = [
      ['an empty key', '', printable],
      ['a key of 256 characters', 'k'.repeat(256), printable],
      ['a key with a tab inside', 'a\tb', printable],
      ['a key with a non-ASCII character', 'caf\u00e9', printable],
      // Node sends an array as one header line per value.
      ['a key given twice', [aKey(), aKey()], 'Idempotency-Key must be given once'],
    ];
    it.each(cases)('%s', async (_name, key, error) => {
      const order = anOrder();

      const response = await request(app)
        .post('/orders')
        .set('Idempotency-Key', key as string)
        .send(order);

      expect(response.status).toBe(400);
      expect(response.body).toEqual({ error, field: 'Idempotency-Key' });
      expect(await entriesOf(order.userId)).toEqual([]);
    });
  });
});

describe('POST /orders without an Idempotency-Key', () => {
  it('places a new order for every request, as before', async () => {
    const order = anOrder();

    const first = await post(order).expect(202);
    const second = await post(order).expect(202);

    expect(second.body.orderId).not.toBe(first.body.orderId);
    expect(await entriesOf(order.userId)).toHaveLength(2);
  });
});
