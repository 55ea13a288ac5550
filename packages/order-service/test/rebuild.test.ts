import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { subscribe, type Subscription } from '@msa/stream-kit';
import { OrderEvents, PaymentEvents } from '@msa/stream-kit/events';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { entryFields } from '../../../harness/streams.ts';
import { waitFor } from '../../../harness/wait.ts';
import { redisOrders, type Order, type Orders } from '../src/orders.ts';
import { liveReadModel, readModel, type ReadModel } from '../src/read-model.ts';
import { rebuildReadModel } from '../src/rebuild.ts';
import { startPaymentTimeouts, type PaymentTimeouts } from '../src/timeouts.ts';

/*
 * The read model rebuilt from the streams equals the live one. The live projection runs as
 * main.ts runs it (subscriptions in its group, the payment timeouts) against a Redis of its own;
 * the test plays payment-service, writing its events to payment-events, and puts each order
 * through a path of the saga. Then `pnpm orders:rebuild` runs as a process.
 */

const TIMEOUT_MS = 1_500;
const logger = pino({ level: 'silent' });
let server: RedisServer;
let redis: Redis;

/** A generation's projection and timeouts, as main.ts starts them. */
function project(model: ReadModel): { orders: Orders; close(): Promise<void> } {
  const orders = redisOrders({ redis, logger, paymentTimeoutMs: TIMEOUT_MS, model });
  const options = { connection: server.url, concurrency: 8, blockMs: 100, retryDelayMs: 100 };
  const projections: Subscription[] = [
    subscribe(model.group, 'c1', OrderEvents, orders.orderEventsHandler, options),
    subscribe(model.group, 'c1', PaymentEvents, orders.paymentEventsHandler, options),
  ];
  const timeouts: PaymentTimeouts = startPaymentTimeouts({ redis, orders, logger, model, maxWaitMs: 100 });
  return {
    orders,
    async close() {
      await timeouts.close();
      await Promise.all(projections.map((projection) => projection.close()));
    },
  };
}

const xadd = (stream: string, fields: Record<string, string | number>) =>
  redis.xadd(stream, '*', ...Object.entries(fields).flatMap(([k, v]) => [k, String(v)])) as Promise<string>;
const place = (orderId: string, userId = 'u1', price = 1000) =>
  xadd('order-events', { type: 'order-created', orderId, userId, productId: 'p1', price });
const charge = (orderId: string, userId = 'u1') =>
  xadd('payment-events', {
    type: 'payment-completed',
    orderId,
    userId,
    productId: 'p1',
    price: 1000,
    paymentProcessId: `pp-${orderId}`,
  });
const decline = (orderId: string) =>
  xadd('payment-events', { type: 'payment-failed', orderId, userId: 'u1', reason: 'limit-exceeded' });
const refund = (orderId: string) =>
  xadd('payment-events', {
    type: 'payment-refunded',
    orderId,
    userId: 'u1',
    paymentProcessId: `pp-${orderId}`,
    price: 1000,
  });
const cancellations = async () =>
  (await entryFields(redis, 'order-events')).filter((fields) => fields.type === 'order-cancelled');

beforeAll(async () => {
  server = await startRedisServer();
  redis = new Redis(server.url);
});
// Each test on a Redis of its own making: its own streams, generation 1 live.
beforeEach(async () => {
  await redis.flushall();
});
afterAll(async () => {
  redis?.disconnect();
  await server?.stop();
});

describe('rebuilding the order read model', () => {
  it(
    'rebuilds every path of the saga into a new generation equal to the live one, publishes nothing, switches, and the new generation carries on from there',
    { timeout: 60_000 },
    async () => {
      const live = project(readModel(1));
      const ids = {
        paid: randomUUID(),
        declined: randomUUID(),
        timedOut: randomUUID(),
        latePayment: randomUUID(),
        chargedThenCancelled: randomUUID(),
      };
      const status = async (orderId: string) => (await live.orders.get(orderId))?.status;
      let tutorialOrderId: string;
      try {
        // Placed 10 s ago (the stream's first entry), and paid now: too late, whether the timeout
        // or the payment is applied first.
        const longAgo = `${Date.now() - 10_000}-0`;
        await redis.xadd(
          'order-events',
          longAgo,
          'type',
          'order-created',
          'orderId',
          ids.latePayment,
          'userId',
          'u1',
          'productId',
          'p1',
          'price',
          '1000',
        );
        await charge(ids.latePayment);
        await place(ids.paid);
        await place(ids.declined, 'u1', 2_000_000);
        await place(ids.timedOut, 'u2');
        await place(ids.chargedThenCancelled);
        // The tutorial's order: three fields, its entry ID its orderId; our payment-service pays it.
        tutorialOrderId = (await xadd('order-events', { userId: 'u3', productId: 'p9', price: 500 }))!;
        await charge(tutorialOrderId, 'u3');
        // The tutorial's payment names no order: nothing to project.
        await xadd('payment-events', { userId: 'u3', productId: 'p9', price: 500, paymentProcessId: 'pp-t' });
        // A malformed entry: dead-lettered, by the rebuild's group too, and the rest goes on.
        await xadd('order-events', { type: 'order-created', orderId: 'bad' });
        await charge(ids.paid);
        await decline(ids.declined);
        await waitFor(
          async () => (await status(ids.paid)) === 'PAID' && (await status(ids.declined)) === 'CANCELLED',
          {
            what: 'the paid and declined orders',
          },
        );
        // The others time out; one is charged after its cancellation. payment-service refunds both charges.
        await waitFor(async () => (await status(ids.chargedThenCancelled)) === 'CANCELLED', {
          timeoutMs: 10_000,
          what: 'the timeouts',
        });
        await refund(ids.latePayment);
        await charge(ids.chargedThenCancelled);
        await refund(ids.chargedThenCancelled);
        for (const orderId of [ids.latePayment, ids.chargedThenCancelled])
          await waitFor(async () => (await live.orders.get(orderId))?.version === 3, { what: 'the refunds' });
        await waitFor(async () => (await status(tutorialOrderId)) === 'PAID', {
          what: "the tutorial's order",
        });
      } finally {
        await live.close();
      }
      const published = await cancellations();
      expect(published).toHaveLength(4);
      const liveDeadLetters = await redis.xlen('order-events:dlq');
      expect(liveDeadLetters).toBe(1);

      const { stdout } = await promisify(execFile)(
        process.execPath,
        ['--import', 'tsx', fileURLToPath(new URL('../src/main-rebuild.ts', import.meta.url))],
        {
          env: {
            ...process.env,
            REDIS_URL: server.url,
            PAYMENT_TIMEOUT_MS: String(TIMEOUT_MS),
            LOG_LEVEL: 'warn',
          },
        },
      );

      expect(stdout).toContain('generation 2: 6 orders rebuilt, 0 of them differ from generation 1 (live)');
      // The malformed entry again, in the rebuild's own dead letters, not in the live ones.
      expect(stdout).toContain(
        '1 entries dead-lettered by the replay, in order-service:read-model:2:dead-letters',
      );
      expect(stdout).toContain('generation 2 is live');
      expect((await liveReadModel(redis)).generation).toBe(2);
      expect(await cancellations()).toEqual(published);
      expect(await redis.xlen('order-events:dlq')).toBe(liveDeadLetters);
      const [before, after] = [readModel(1), readModel(2)].map((model) =>
        redisOrders({ redis, logger, paymentTimeoutMs: TIMEOUT_MS, model }),
      );
      const allIds = [...Object.values(ids), tutorialOrderId];
      const rebuilt = await Promise.all(allIds.map((orderId) => after!.get(orderId)));
      expect(rebuilt).toEqual(await Promise.all(allIds.map((orderId) => before!.get(orderId))));
      expect(
        rebuilt.map((order) => [order?.status, order?.reason, order?.history.map((step) => step.event)]),
      ).toEqual([
        ['PAID', undefined, ['order-created', 'payment-completed']],
        ['CANCELLED', 'payment-declined', ['order-created', 'payment-failed']],
        ['CANCELLED', 'payment-timeout', ['order-created', 'order-cancelled']],
        ['CANCELLED', 'payment-timeout', ['order-created', 'order-cancelled', 'payment-refunded']],
        ['CANCELLED', 'payment-timeout', ['order-created', 'order-cancelled', 'payment-refunded']],
        ['PAID', undefined, ['order-created', 'payment-completed']],
      ]);
      for (const user of ['u1', 'u2', 'u3'])
        expect(await after!.ofUser(user, 10)).toEqual(await before!.ofUser(user, 10));

      // The new generation, live, goes on from where the rebuild stopped.
      const next = project(readModel(2));
      try {
        const orderId = randomUUID();
        await place(orderId);
        await charge(orderId);
        await waitFor(async () => (await next.orders.get(orderId))?.status === 'PAID', {
          what: 'an order placed after the rebuild',
        });
        expect(((await next.orders.get(orderId)) as Order).version).toBe(2);
        expect(await redis.hlen(readModel(1).order(orderId))).toBe(0);
      } finally {
        await next.close();
      }
    },
  );

  it('leaves out, once payment-events has been trimmed, the orders older than its oldest entry, whose payments may be gone, without dead-lettering their payments', async () => {
    const [oldOrder, newOrder] = [randomUUID(), randomUUID()];
    // Explicit IDs: the old order's millisecond, then the new one's, whatever the clock does.
    const t = Date.now() + 100;
    const at = (stream: string, id: string, fields: Record<string, string | number>) =>
      redis.xadd(
        stream,
        id,
        ...Object.entries(fields).flatMap(([k, v]) => [k, String(v)]),
      ) as Promise<string>;
    const order = (orderId: string) => ({
      type: 'order-created',
      orderId,
      userId: 'u1',
      productId: 'p1',
      price: 1000,
    });
    const payment = (orderId: string) => ({
      type: 'payment-completed',
      orderId,
      userId: 'u1',
      productId: 'p1',
      price: 1000,
      paymentProcessId: `pp-${orderId}`,
    });
    await at('order-events', `${t}-0`, order(oldOrder));
    await at('payment-events', `${t}-0`, payment(oldOrder));
    await at('order-events', `${t + 1}-0`, order(newOrder));
    // The old order paid twice (its redelivery, say): the second one outlives the trim.
    const paymentOfOld = await at('payment-events', `${t + 1}-0`, payment(oldOrder));
    await at('payment-events', `${t + 1}-1`, payment(newOrder));
    // Retention trims the first payment, and what came before it.
    await redis.xtrim('payment-events', 'MINID', paymentOfOld);
    const deadLetters = await redis.xlen('payment-events:dlq');

    const rebuilt = await rebuildReadModel({
      redis,
      logger,
      paymentTimeoutMs: TIMEOUT_MS,
      consumer: 'r1',
      switchTo: false,
    });

    expect(rebuilt.since).toBe(Number(paymentOfOld.split('-')[0]));
    const orders = redisOrders({ redis, logger, paymentTimeoutMs: TIMEOUT_MS, model: rebuilt.model });
    expect(await orders.get(oldOrder)).toBeUndefined();
    expect(await orders.get(newOrder)).toMatchObject({ status: 'PAID' });
    expect(rebuilt.orderIds.has(oldOrder)).toBe(false);
    expect(await redis.xlen('payment-events:dlq')).toBe(deadLetters);
    expect(rebuilt.deadLetters).toBe(0);
    expect(rebuilt.switched).toBe(false);
    expect((await liveReadModel(redis)).generation).toBe(1);
  });

  it('does not switch to a rebuilt generation whose orders differ from the live one (rebuilt with a shorter PAYMENT_TIMEOUT_MS), unless forced', async () => {
    // An order paid half a second after it was placed: in time at the live 1.5 s, so PAID; late
    // at 0.2 s, so the rebuilt one is PENDING, and its timeout would cancel a paid order.
    const live = project(readModel(1));
    const orderId = randomUUID();
    try {
      await place(orderId);
      await new Promise((resolve) => setTimeout(resolve, 500));
      await charge(orderId);
      await waitFor(async () => (await live.orders.get(orderId))?.status === 'PAID', {
        what: 'the payment',
      });
    } finally {
      await live.close();
    }

    const differing = await rebuildReadModel({ redis, logger, paymentTimeoutMs: 200, consumer: 'r1' });
    expect(differing.differing).toContain(orderId);
    expect(differing.switched).toBe(false);
    expect((await liveReadModel(redis)).generation).toBe(1);

    const forced = await rebuildReadModel({
      redis,
      logger,
      paymentTimeoutMs: 200,
      consumer: 'r1',
      force: true,
    });
    expect(forced.switched).toBe(true);
    expect((await liveReadModel(redis)).generation).toBe(forced.model.generation);
  });
});
