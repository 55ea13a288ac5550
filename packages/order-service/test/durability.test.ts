import { randomUUID } from 'node:crypto';
import { createPublisher, type Publisher } from '@msa/stream-kit';
import { openRequestConnection } from '@msa/stream-kit/service';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { waitFor } from '../../../harness/wait.ts';
import { createApp } from '../src/app.ts';
import { loadConfig } from '../src/config.ts';
import { ordersOn } from './read-model.ts';

/*
 * DURABLE_REPLICAS: POST /orders answers 202 only once a replica holds the order, so that a 202
 * survives the loss of its master; else 503, and a retry with the same Idempotency-Key gets the
 * same order. Against a real master and its replica.
 */

const logger = pino({ level: 'silent' });
let master: RedisServer;
let replica: RedisServer;
let replicaAdmin: Redis;
let writes: Redis;
let reads: Redis;
let publisher: Publisher;
let app: ReturnType<typeof createApp>;

async function untilReplicating() {
  await waitFor(async () => (await replicaAdmin.info('replication')).includes('master_link_status:up'), {
    timeoutMs: 15_000,
    what: 'the replica to sync',
  });
}

/** The order-events entries of `orderId` that the replica holds. */
async function onReplica(orderId: string) {
  const entries = await replicaAdmin.xrange('order-events', '-', '+');
  return entries.filter(([, fields]) => fields.includes(orderId)).length;
}

beforeAll(async () => {
  master = await startRedisServer();
  replica = await startRedisServer({ args: ['--replicaof', '127.0.0.1', String(master.port)] });
  replicaAdmin = new Redis(replica.url);
  replicaAdmin.on('error', () => {});
  await untilReplicating();
  // As main.ts wires DURABLE_REPLICAS=1: a connection of its own for the writes and their WAITs.
  const durability = { replicas: 1, timeoutMs: 1_000 };
  writes = openRequestConnection(master.url, logger, 'order-service:writes');
  publisher = createPublisher({ connection: writes, durability });
  reads = openRequestConnection(master.url, logger, 'order-service');
  app = createApp({
    publisher,
    redis: reads,
    writes,
    durability,
    logger,
    instance: 'test',
    orders: ordersOn(reads),
  });
});
afterAll(async () => {
  await publisher?.close();
  writes?.disconnect();
  reads?.disconnect();
  replicaAdmin?.disconnect();
  await replica?.stop();
  await master?.stop();
});

const anOrder = () => ({ userId: `user-${randomUUID()}`, productId: 'p', price: 10 });

describe('POST /orders with DURABLE_REPLICAS=1', () => {
  it('answers 202 once the replica holds the order, with and without an Idempotency-Key', async () => {
    const plain = await request(app).post('/orders').send(anOrder());
    const keyed = await request(app).post('/orders').set('Idempotency-Key', randomUUID()).send(anOrder());

    expect([plain.status, keyed.status]).toEqual([202, 202]);
    expect(await onReplica(plain.body.orderId)).toBe(1);
    expect(await onReplica(keyed.body.orderId)).toBe(1);
  });

  it('answers 503 while no replica confirms the order, and the same order once one does, to a retry with its key', async () => {
    const key = randomUUID();
    const order = anOrder();
    await replica.stop();

    const refused = await request(app).post('/orders').set('Idempotency-Key', key).send(order);

    expect(refused.status).toBe(503);
    replica = await startRedisServer({
      port: replica.port,
      args: ['--replicaof', '127.0.0.1', String(master.port)],
    });
    await untilReplicating();
    // As a client retries: until it gets its answer (the new replica may still be catching up).
    const retried = await waitFor(
      async () => {
        const answer = await request(app).post('/orders').set('Idempotency-Key', key).send(order);
        return answer.status === 202 && answer;
      },
      { timeoutMs: 15_000, what: 'a 202 for the retry' },
    );
    expect(await onReplica(retried.body.orderId)).toBe(1);
    // The first attempt wrote it; the retries replayed it: one order, not one per request.
    const placed = (await reads.xrange('order-events', '-', '+')).filter(([, f]) => f.includes(order.userId));
    expect(placed).toHaveLength(1);
  });
});

describe('the configuration', () => {
  it('leaves DURABLE_REPLICAS off (0) by default, with a 1 s DURABLE_TIMEOUT_MS', () => {
    expect(loadConfig({})).toMatchObject({ DURABLE_REPLICAS: 0, DURABLE_TIMEOUT_MS: 1_000 });
  });

  it('refuses a DURABLE_REPLICAS that is not a whole number from 0 to 16, naming it', () => {
    expect(() => loadConfig({ DURABLE_REPLICAS: '-1' })).toThrow(/DURABLE_REPLICAS/);
    expect(() => loadConfig({ DURABLE_REPLICAS: 'two' })).toThrow(/DURABLE_REPLICAS/);
  });
});
