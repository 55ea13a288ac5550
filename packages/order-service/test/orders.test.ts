import { randomUUID } from 'node:crypto';
import { NonRetryableError, RetryLaterError, type DeliveryContext } from '@msa/stream-kit';
import type { OrderEvent, PaymentEvent } from '@msa/stream-kit/events';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { entryFields } from '../../../harness/streams.ts';
import { waitFor } from '../../../harness/wait.ts';
import { redisOrders, type Orders } from '../src/orders.ts';
import { readModel } from '../src/read-model.ts';
import { startPaymentTimeouts } from '../src/timeouts.ts';

// A Redis of its own: the timeouts below cancel every order due in it.
let server: RedisServer;
let redis: Redis;
let orders: Orders;
const model = readModel(1);
const { paymentDue: PAYMENT_DUE_KEY, refused: REFUSED_KEY } = model;
const logger = pino({ level: 'silent' });

beforeAll(async () => {
  server = await startRedisServer();
  redis = new Redis(server.url);
  orders = redisOrders({ redis, logger, paymentTimeoutMs: 30_000, model });
});
afterAll(async () => {
  redis?.disconnect();
  await server?.stop();
});

let sequence = 0;
/** A context for an entry of `stream` with a new ID, at Redis's time of now. */
const entryOf = (stream: string, ms = Date.now()): DeliveryContext => ({
  id: `${ms}-${(sequence += 1)}`,
  stream,
  group: 'order-service-group',
  consumer: 'c',
  deliveryCount: 1,
  stillHeld: () => true,
});

const placed = (userId = 'u1') =>
  ({ type: 'order-created', orderId: randomUUID(), userId, productId: 'p1', price: 1000 }) as const;
const paid = (orderId: string) =>
  ({
    type: 'payment-completed',
    orderId,
    userId: 'u1',
    productId: 'p1',
    price: 1000,
    paymentProcessId: 'pp-1',
  }) as const;
const declined = (orderId: string) =>
  ({ type: 'payment-failed', orderId, userId: 'u1', reason: 'limit-exceeded' }) as const;
const refunded = (orderId: string) =>
  ({ type: 'payment-refunded', orderId, userId: 'u1', paymentProcessId: 'pp-1', price: 1000 }) as const;

/** Applies `event` as the entry `context`; answers the context. */
async function onOrders(event: OrderEvent, context = entryOf('order-events')) {
  await orders.orderEventsHandler(event, context);
  return context;
}
async function onPayments(event: PaymentEvent, context = entryOf('payment-events')) {
  await orders.paymentEventsHandler(event, context);
  return context;
}
const cancellationsOf = async (orderId: string) =>
  (await entryFields(redis, 'order-events')).filter(
    (fields) => fields.type === 'order-cancelled' && fields.orderId === orderId,
  );

describe('the order read model', () => {
  it('shows a placed order as PENDING, version 1, with its first step', async () => {
    const order = placed();
    const context = await onOrders(order);

    expect(await orders.get(order.orderId)).toEqual({
      orderId: order.orderId,
      userId: 'u1',
      productId: 'p1',
      price: 1000,
      status: 'PENDING',
      version: 1,
      // When it happened: the time of its entry.
      history: [
        {
          status: 'PENDING',
          event: 'order-created',
          entryId: context.id,
          at: new Date(Number(context.id.split('-')[0])).toISOString(),
        },
      ],
    });
    expect(await redis.zscore(PAYMENT_DUE_KEY, order.orderId)).not.toBeNull();
  });

  it('moves a paid order to PAID, version 2, and no longer waits for its payment', async () => {
    const order = placed();
    await onOrders(order);
    const payment = await onPayments(paid(order.orderId));

    expect(await orders.get(order.orderId)).toMatchObject({
      status: 'PAID',
      version: 2,
      history: [{ status: 'PENDING' }, { status: 'PAID', event: 'payment-completed', entryId: payment.id }],
    });
    expect(await redis.zscore(PAYMENT_DUE_KEY, order.orderId)).toBeNull();
  });

  it('cancels a declined order (payment-declined) and publishes order-cancelled once, however often the failure comes', async () => {
    const order = placed();
    await onOrders(order);
    const failure = await onPayments(declined(order.orderId));
    await onPayments(declined(order.orderId), { ...failure, deliveryCount: 2 });
    const [cancellation] = await cancellationsOf(order.orderId);
    // Its own order-cancelled, read back from order-events, changes nothing.
    await onOrders({
      type: 'order-cancelled',
      orderId: order.orderId,
      userId: 'u1',
      reason: 'payment-declined',
    });

    expect(await cancellationsOf(order.orderId)).toEqual([
      { type: 'order-cancelled', orderId: order.orderId, userId: 'u1', reason: 'payment-declined' },
    ]);
    expect(cancellation).toBeDefined();
    expect(await orders.get(order.orderId)).toMatchObject({
      status: 'CANCELLED',
      reason: 'payment-declined',
      version: 2,
      history: [{ status: 'PENDING' }, { status: 'CANCELLED', event: 'payment-failed', entryId: failure.id }],
    });
  });

  it("applies a payment whose entry ID equals its order entry's: two streams, one millisecond", async () => {
    const order = placed();
    const created = await onOrders(order);
    await onPayments(paid(order.orderId), { ...entryOf('payment-events'), id: created.id });

    expect(await orders.get(order.orderId)).toMatchObject({ status: 'PAID', version: 2 });
  });

  it('applies an entry delivered again only once', async () => {
    const order = placed();
    const created = await onOrders(order);
    const payment = await onPayments(paid(order.orderId));
    await onOrders(order, { ...created, deliveryCount: 2 });
    await onPayments(paid(order.orderId), { ...payment, deliveryCount: 3 });

    expect(await orders.get(order.orderId)).toMatchObject({ status: 'PAID', version: 2 });
  });

  it('times out a pending order once (payment-timeout, order-cancelled published), refuses and counts a payment that comes after, and records its refund', async () => {
    const order = placed();
    await onOrders(order);

    expect(await orders.timeOut(order.orderId)).toBe(true);
    expect(await orders.timeOut(order.orderId)).toBe(false);
    const refusedBefore = Number((await redis.hget(REFUSED_KEY, 'CANCELLED payment-completed')) ?? 0);
    await onPayments(paid(order.orderId));
    const refund = await onPayments(refunded(order.orderId));

    const cancellations = await cancellationsOf(order.orderId);
    expect(cancellations).toEqual([
      { type: 'order-cancelled', orderId: order.orderId, userId: 'u1', reason: 'payment-timeout' },
    ]);
    expect(await orders.get(order.orderId)).toMatchObject({
      status: 'CANCELLED',
      reason: 'payment-timeout',
      version: 3,
      history: [
        { status: 'PENDING', event: 'order-created' },
        { status: 'CANCELLED', event: 'order-cancelled' },
        { status: 'CANCELLED', event: 'payment-refunded', entryId: refund.id },
      ],
    });
    expect(Number(await redis.hget(REFUSED_KEY, 'CANCELLED payment-completed'))).toBe(refusedBefore + 1);
    expect(await redis.zscore(PAYMENT_DUE_KEY, order.orderId)).toBeNull();
  });

  it.each([
    ['payment', paid, 'PENDING payment-completed'],
    ['decline', declined, 'PENDING payment-failed'],
  ] as const)(
    'leaves an order pending when its %s comes in or after the millisecond it was due, by its entry time however soon it is read, for the timeout to cancel',
    async (_, event, counted) => {
      const order = placed();
      const created = await onOrders(order, entryOf('order-events', Date.now() - 31_000));
      const refusedBefore = Number((await redis.hget(REFUSED_KEY, counted)) ?? 0);
      await onPayments(
        event(order.orderId),
        entryOf('payment-events', Number(created.id.split('-')[0]) + 30_000),
      );

      expect(await orders.get(order.orderId)).toMatchObject({ status: 'PENDING', version: 1 });
      expect(await cancellationsOf(order.orderId)).toEqual([]);
      expect(Number(await redis.hget(REFUSED_KEY, counted))).toBe(refusedBefore + 1);
      expect(await orders.timeOut(order.orderId)).toBe(true);
      expect(await orders.get(order.orderId)).toMatchObject({
        status: 'CANCELLED',
        reason: 'payment-timeout',
      });
    },
  );

  it('applies a payment in the last millisecond before the order is due', async () => {
    const order = placed();
    const created = await onOrders(order, entryOf('order-events', Date.now() - 31_000));
    await onPayments(
      paid(order.orderId),
      entryOf('payment-events', Number(created.id.split('-')[0]) + 29_999),
    );

    expect(await orders.get(order.orderId)).toMatchObject({ status: 'PAID' });
  });

  it("publishes an order's cancellation once when two generations cancel it (instances switching after a rebuild), and both record that one", async () => {
    const other = redisOrders({ redis, logger, paymentTimeoutMs: 30_000, model: readModel(2) });
    const [timedOut, refused] = [placed(), placed()];
    for (const order of [timedOut, refused]) {
      const context = entryOf('order-events');
      await orders.orderEventsHandler(order, context);
      await other.orderEventsHandler(order, context);
    }

    expect(await orders.timeOut(timedOut.orderId)).toBe(true);
    expect(await other.timeOut(timedOut.orderId)).toBe(true);
    const failure = entryOf('payment-events');
    await orders.paymentEventsHandler(declined(refused.orderId), failure);
    await other.paymentEventsHandler(declined(refused.orderId), failure);

    for (const order of [timedOut, refused]) {
      const published = await cancellationsOf(order.orderId);
      expect(published).toHaveLength(1);
      const [inOne, inOther] = [await orders.get(order.orderId), await other.get(order.orderId)];
      expect(inOther).toEqual(inOne);
      expect(inOne).toMatchObject({ status: 'CANCELLED', version: 2 });
    }
  });

  it("asks to retry a refund read before its order's cancellation, then records it after", async () => {
    await redis.xgroup('CREATE', 'order-events', model.group, '$', 'MKSTREAM');
    try {
      const order = placed();
      await onOrders(order);
      // The cancellation is in order-events, not yet applied: the projection has not read it.
      const cancelled = {
        type: 'order-cancelled',
        orderId: order.orderId,
        userId: 'u1',
        reason: 'payment-timeout',
      } as const;
      const cancelId = (await redis.xadd('order-events', '*', ...Object.entries(cancelled).flat()))!;
      const refund = entryOf('payment-events');

      await expect(orders.paymentEventsHandler(refunded(order.orderId), refund)).rejects.toBeInstanceOf(
        RetryLaterError,
      );
      await onOrders(cancelled, { ...entryOf('order-events'), id: cancelId });
      await onPayments(refunded(order.orderId), { ...refund, deliveryCount: 2 });

      expect(await orders.get(order.orderId)).toMatchObject({
        status: 'CANCELLED',
        history: [
          { event: 'order-created' },
          { event: 'order-cancelled', entryId: cancelId },
          { event: 'payment-refunded', entryId: refund.id },
        ],
      });
    } finally {
      await redis.xgroup('DESTROY', 'order-events', model.group);
    }
  });

  it("waits for a decline's payment-failed when its order-cancelled comes first (the streams read apart), and steps once", async () => {
    const order = placed();
    await onOrders(order);
    await onOrders({
      type: 'order-cancelled',
      orderId: order.orderId,
      userId: 'u1',
      reason: 'payment-declined',
    });
    expect(await orders.get(order.orderId)).toMatchObject({ status: 'PENDING', version: 1 });

    const failure = await onPayments(declined(order.orderId));
    expect(await orders.get(order.orderId)).toMatchObject({
      status: 'CANCELLED',
      reason: 'payment-declined',
      version: 2,
      history: [{ event: 'order-created' }, { event: 'payment-failed', entryId: failure.id }],
    });
  });

  it('refuses to cancel a paid order, and never moves it', async () => {
    const order = placed();
    await onOrders(order);
    await onPayments(paid(order.orderId));
    await onOrders({
      type: 'order-cancelled',
      orderId: order.orderId,
      userId: 'u1',
      reason: 'payment-timeout',
    });
    await onPayments(refunded(order.orderId));

    expect(await orders.get(order.orderId)).toMatchObject({ status: 'PAID', version: 2 });
    expect(await orders.timeOut(order.orderId)).toBe(false);
  });

  it('asks to retry a payment of an order not applied yet (the streams are read apart), then applies it', async () => {
    const order = placed();
    const payment = entryOf('payment-events');

    await expect(orders.paymentEventsHandler(paid(order.orderId), payment)).rejects.toBeInstanceOf(
      RetryLaterError,
    );
    expect(await redis.exists(model.order(order.orderId))).toBe(0);

    await onOrders(order);
    await onPayments(paid(order.orderId), { ...payment, deliveryCount: 2 });
    expect(await orders.get(order.orderId)).toMatchObject({ status: 'PAID' });
  });

  it('dead-letters a payment of an order that is not coming: its group has handled every order entry up to the payment', async () => {
    const order = placed();
    const payment = entryOf('payment-events', Date.now() - 1_000);
    // The projection of order-events has read past the payment, and holds nothing pending.
    await redis.xadd('order-events', '*', 'type', 'unrelated');
    await redis.xgroup('CREATE', 'order-events', 'order-service-group', '$', 'MKSTREAM');
    try {
      const handling = orders.paymentEventsHandler(paid(order.orderId), payment);

      await expect(handling).rejects.toBeInstanceOf(NonRetryableError);
      await expect(handling).rejects.toThrow(`no order ${order.orderId} in order-events before this entry`);
    } finally {
      await redis.xgroup('DESTROY', 'order-events', 'order-service-group');
    }
  });

  it('dead-letters a cancellation of an order that is not coming, though its own entry is pending while it is handled', async () => {
    const orderId = randomUUID();
    await redis.xgroup('CREATE', 'order-events', 'order-service-group', '$', 'MKSTREAM');
    try {
      // prettier-ignore
      const id = (await redis.xadd('order-events', '*', 'type', 'order-cancelled', 'orderId', orderId,
        'userId', 'u1', 'reason', 'payment-timeout'))!;
      await redis.xreadgroup('GROUP', 'order-service-group', 'c', 'STREAMS', 'order-events', '>');
      const context = { ...entryOf('order-events'), id };

      const handling = orders.orderEventsHandler(
        { type: 'order-cancelled', orderId, userId: 'u1', reason: 'payment-timeout' },
        context,
      );

      await expect(handling).rejects.toBeInstanceOf(NonRetryableError);
    } finally {
      await redis.xgroup('DESTROY', 'order-events', 'order-service-group');
    }
  });

  it("lists a user's orders newest first, a page at a time", async () => {
    const userId = `u-${randomUUID()}`;
    const placedIds: string[] = [];
    for (let n = 0; n < 5; n += 1) {
      const order = placed(userId);
      await onOrders(order, entryOf('order-events', 1_700_000_000_000 + n));
      placedIds.push(order.orderId);
    }

    const first = await orders.ofUser(userId, 2);
    const second = await orders.ofUser(userId, 2, first.nextCursor);
    const third = await orders.ofUser(userId, 2, second.nextCursor);

    const ids = [first, second, third].flatMap((page) => page.orders.map((order) => order.orderId));
    expect(ids).toEqual([...placedIds].reverse());
    expect(third.nextCursor).toBeUndefined();
    expect(await orders.ofUser(`u-${randomUUID()}`, 10)).toEqual({ orders: [] });
  });
});

describe('the payment timeouts', () => {
  const GROUP = model.group;
  const short = () => redisOrders({ redis, logger, paymentTimeoutMs: 1_000, model });
  const looking = (orders: Orders) => startPaymentTimeouts({ redis, orders, logger, model, maxWaitMs: 100 });
  /** The projection's group on payment-events, caught up with an empty stream. */
  beforeAll(async () => {
    await redis.del('payment-events');
    await redis.xgroup('CREATE', 'payment-events', GROUP, '$', 'MKSTREAM');
  });

  it('cancel an order still pending once it is due, once, with two instances looking', async () => {
    const order = placed();
    await short().orderEventsHandler(order, entryOf('order-events'));
    const instances = [looking(short()), looking(short())];
    try {
      await waitFor(async () => (await orders.get(order.orderId))?.status === 'CANCELLED', {
        timeoutMs: 10_000,
        what: 'the order to time out',
      });
      // Both had their chance at it.
      await new Promise((resolve) => setTimeout(resolve, 300));
    } finally {
      await Promise.all(instances.map((instance) => instance.close()));
    }

    expect(await cancellationsOf(order.orderId)).toHaveLength(1);
    expect(await orders.get(order.orderId)).toMatchObject({ reason: 'payment-timeout', version: 2 });
  });

  it('leave an order paid in time alone', async () => {
    const order = placed();
    await short().orderEventsHandler(order, entryOf('order-events', Date.now() - 5_000));
    await short().paymentEventsHandler(paid(order.orderId), entryOf('payment-events', Date.now() - 4_500));
    const timeouts = looking(short());
    await new Promise((resolve) => setTimeout(resolve, 300));
    await timeouts.close();

    expect(await orders.get(order.orderId)).toMatchObject({ status: 'PAID' });
    expect(await cancellationsOf(order.orderId)).toEqual([]);
  });

  it('wait for the projection to apply a payment that came in time, however late it reads it (an order-service that was down)', async () => {
    const order = placed();
    await short().orderEventsHandler(order, entryOf('order-events', Date.now() - 5_000));
    // Its payment came in time (half a second before it was due) and waits unread on payment-events.
    // prettier-ignore
    const paymentId = (await redis.xadd('payment-events', `${Date.now() - 4_500}-0`, 'type', 'payment-completed',
      'orderId', order.orderId))!;
    const timeouts = looking(short());
    try {
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await orders.get(order.orderId)).toMatchObject({ status: 'PENDING' });

      // The projection reads it (pending while it is handled), applies it and acks it.
      await redis.xreadgroup('GROUP', GROUP, 'c', 'COUNT', 1, 'STREAMS', 'payment-events', '>');
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(await orders.get(order.orderId)).toMatchObject({ status: 'PENDING' });
      await short().paymentEventsHandler(paid(order.orderId), {
        ...entryOf('payment-events'),
        id: paymentId,
      });
      await redis.xack('payment-events', GROUP, paymentId);
      await new Promise((resolve) => setTimeout(resolve, 300));
    } finally {
      await timeouts.close();
    }

    expect(await orders.get(order.orderId)).toMatchObject({ status: 'PAID' });
    expect(await cancellationsOf(order.orderId)).toEqual([]);
  });
});
