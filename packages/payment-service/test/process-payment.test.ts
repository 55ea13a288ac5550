import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { NonRetryableError, type DeliveryContext } from '@msa/stream-kit';
import type { OrderEvent } from '@msa/stream-kit/events';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { entryFields } from '../../../harness/streams.ts';
import { paymentHandler as unacked, paymentKey, type PaymentDeps } from '../src/process-payment.ts';

/**
 * The handler as its subscription runs it: the entry is acked once the handler resolves (and only
 * then: one that throws stays pending). Its effects are atomic in payment-events' slot; the ack
 * of order-events comes after them (README, Redis Cluster).
 */
function paymentHandler(deps: PaymentDeps) {
  const handle = unacked(deps);
  return async (event: OrderEvent, context: DeliveryContext) => {
    await handle(event, context);
    await deps.redis.xack(context.stream, context.group, context.id);
  };
}

let redis: Redis;
const logger = pino({ level: 'silent' });
const LIMIT = 1_000_000;

beforeAll(() => {
  redis = new Redis(inject('redisUrl'));
});
afterAll(async () => {
  await redis.quit();
});

async function paymentsFor(orderId: string) {
  return (await entryFields(redis, 'payment-events')).filter((fields) => fields.orderId === orderId);
}

/**
 * An order entry delivered to a group of its own (other test files consume `order-events` too),
 * as the subscription would hand it to the handler.
 */
async function deliveredOrder(
  ids: { userId?: string; productId?: string } = {},
): Promise<[OrderEvent & { type: 'order-created' }, DeliveryContext]> {
  const group = `test-${randomUUID()}`;
  await redis.xgroup('CREATE', 'order-events', group, '$', 'MKSTREAM');
  const order = {
    type: 'order-created' as const,
    orderId: randomUUID(),
    userId: 'u1',
    productId: 'p1',
    price: 1000,
    ...ids,
  };
  const id = (await redis.xadd('order-events', '*', ...Object.entries(order).flat().map(String)))!;
  await redis.xreadgroup('GROUP', group, 'c', 'STREAMS', 'order-events', '>');
  return [
    order,
    { id, stream: 'order-events', group, consumer: 'c', deliveryCount: 1, stillHeld: () => true },
  ];
}

async function pending(context: DeliveryContext) {
  const [count] = (await redis.xpending('order-events', context.group)) as [number];
  return count;
}

describe('on order-created', () => {
  it('publishes payment-completed and records the payment in one step; the order is acked after it', async () => {
    const [order, context] = await deliveredOrder();

    await paymentHandler({ redis, logger, limit: LIMIT })(order, context);

    const [payment] = await paymentsFor(order.orderId);
    expect(payment).toEqual({
      type: 'payment-completed',
      orderId: order.orderId,
      userId: 'u1',
      productId: 'p1',
      price: '1000',
      paymentProcessId: expect.stringMatching(/^[0-9a-f-]{36}$/),
    });
    expect(await redis.hgetall(paymentKey(order.orderId))).toEqual({
      state: 'charged',
      paymentProcessId: payment!.paymentProcessId,
      orderEntryId: context.id,
      paymentEntryId: expect.stringMatching(/^\d+-\d+$/),
      paidAt: expect.any(String),
      userId: 'u1',
      price: '1000',
    });
    expect(await pending(context)).toBe(0);
  });

  it('writes IDs byte for byte through the JSON its script reads: quotes, backslashes, control characters, non-ASCII', async () => {
    const userId = 'jos\u00e9 "q" \\ \t\u0001 \u65e5\u672c \ud83d\ude00';
    const productId = '[{"not":"json"}]\u0000\u00ff';
    const [order, context] = await deliveredOrder({ userId, productId });

    await paymentHandler({ redis, logger, limit: LIMIT })(order, context);

    const [payment] = await paymentsFor(order.orderId);
    expect(payment).toMatchObject({ userId, productId });
    expect(await redis.hmget(paymentKey(order.orderId), 'userId')).toEqual([userId]);
    expect(await pending(context)).toBe(0);
  });

  it('pays an order delivered again (or to two instances at once) only once', async () => {
    const [order, context] = await deliveredOrder();
    const instances = [1, 2, 3].map(() => paymentHandler({ redis, logger, limit: LIMIT }));

    await Promise.all(instances.map((handle) => handle(order, context)));
    await instances[0]!(order, { ...context, deliveryCount: 2 });

    expect(await paymentsFor(order.orderId)).toHaveLength(1);
    expect(await pending(context)).toBe(0);
  });

  it('only resolves (to be acked) for an order whose payment was recorded before a crash lost the ack', async () => {
    const [order, context] = await deliveredOrder();
    await redis.hset(paymentKey(order.orderId), 'paymentProcessId', 'paid-before-the-crash');

    await paymentHandler({ redis, logger, limit: LIMIT })(order, context);

    expect(await paymentsFor(order.orderId)).toEqual([]);
    expect(await pending(context)).toBe(0);
  });

  it('gives every payment a new ID, even from two separate instances', async () => {
    const orders = await Promise.all([1, 2, 3].map(() => deliveredOrder()));
    // Two handlers stand for two instances, or one instance before and after a restart.
    const instances = [1, 2].map(() => paymentHandler({ redis, logger, limit: LIMIT }));

    for (const [i, [order, context]] of orders.entries()) await instances[i % 2]!(order, context);

    const ids = (await Promise.all(orders.map(([order]) => paymentsFor(order.orderId))))
      .flat()
      .map((p) => p.paymentProcessId);
    expect(ids).toHaveLength(3);
    expect(new Set(ids).size).toBe(3);
  });
});

describe('the payment log line', () => {
  it('names the order entry entryId, beside orderId and paymentProcessId', async () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const [order, context] = await deliveredOrder();

    await paymentHandler({ redis, logger: pino(sink), limit: LIMIT })(order, context);

    expect(lines).toEqual([
      expect.objectContaining({
        msg: 'payment completed',
        orderId: order.orderId,
        entryId: context.id,
        paymentProcessId: expect.any(String),
      }),
    ]);
    expect(lines[0]).not.toHaveProperty('orderEntryId');
  });
});

describe('on an event type without a handler', () => {
  it('throws NonRetryableError, so the subscription dead-letters it, and pays and acks nothing', async () => {
    const [order, context] = await deliveredOrder();
    // What a schema with a new type would let through to a handler built without its case.
    const forged = { ...order, type: 'order-shipped' } as unknown as OrderEvent;

    const handling = paymentHandler({ redis, logger, limit: LIMIT })(forged, context);

    await expect(handling).rejects.toBeInstanceOf(NonRetryableError);
    await expect(handling).rejects.toThrow('no handler for event type "order-shipped"');
    expect(await paymentsFor(order.orderId)).toEqual([]);
    expect(await redis.exists(paymentKey(order.orderId))).toBe(0);
    expect(await pending(context)).toBe(1);
  });
});

describe('orders handled side by side (one SETTLE_MANY call per tick)', () => {
  // A Redis of its own: these tests count its script calls, starve it of memory and push
  // payment-events' IDs ahead of the clock, which would disturb the suites on the shared one.
  let server: RedisServer;
  let own: Redis;

  beforeAll(async () => {
    server = await startRedisServer();
    own = new Redis(server.url);
  });
  afterAll(async () => {
    own?.disconnect();
    await server?.stop();
  });

  /** `count` orders, delivered to a group of their own, as the subscription hands them over. */
  async function deliveredOrders(count: number) {
    const group = `test-${randomUUID()}`;
    await own.xgroup('CREATE', 'order-events', group, '$', 'MKSTREAM');
    const orders: [OrderEvent & { type: 'order-created' }, DeliveryContext][] = [];
    for (let n = 0; n < count; n += 1) {
      const order = {
        type: 'order-created' as const,
        orderId: randomUUID(),
        userId: 'u1',
        productId: 'p1',
        price: 1000,
      };
      const id = (await own.xadd('order-events', '*', ...Object.entries(order).flat().map(String)))!;
      orders.push([
        order,
        { id, stream: 'order-events', group, consumer: 'c', deliveryCount: 1, stillHeld: () => true },
      ]);
    }
    await own.xreadgroup('GROUP', group, 'c', 'STREAMS', 'order-events', '>');
    return { group, orders };
  }

  const pendingIds = async (group: string) =>
    ((await own.xpending('order-events', group, '-', '+', 100)) as [string][]).map(([id]) => id);
  const paidOrders = async () =>
    new Set((await entryFields(own, 'payment-events')).map((fields) => fields.orderId));
  /** Script calls Redis refused before running them (`#!lua` under OOM). */
  const rejectedScriptCalls = async () => {
    const stats = await own.info('commandstats');
    return Number(/^cmdstat_evalsha:.*rejected_calls=(\d+)/m.exec(stats)?.[1] ?? 0);
  };
  const scriptCalls = async () => {
    const stats = await own.info('commandstats');
    return [...stats.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)].reduce(
      (sum, [, calls]) => sum + Number(calls),
      0,
    );
  };

  it('pays all of them in one script call', async () => {
    const { group, orders } = await deliveredOrders(8);
    const handle = paymentHandler({ redis: own, logger, limit: LIMIT });
    const before = await scriptCalls();

    await Promise.all(orders.map(([order, context]) => handle(order, context)));

    const calls = (await scriptCalls()) - before;
    expect(calls).toBe(1);
    const paid = await paidOrders();
    expect(orders.every(([order]) => paid.has(order.orderId))).toBe(true);
    expect(await pendingIds(group)).toEqual([]);
  });

  it('pays and acks the others when one order fails, which fails alone with its own Redis error and stays pending', async () => {
    const { group, orders } = await deliveredOrders(4);
    const [bad, badContext] = orders[1]!;
    // Its record key holds a string: HGET answers WRONGTYPE for this order alone.
    await own.set(paymentKey(bad.orderId), 'not a hash');
    const handle = paymentHandler({ redis: own, logger, limit: LIMIT });

    const outcomes = await Promise.allSettled(orders.map(([order, context]) => handle(order, context)));

    expect(outcomes.map((outcome) => outcome.status)).toEqual([
      'fulfilled',
      'rejected',
      'fulfilled',
      'fulfilled',
    ]);
    const reason = (outcomes[1] as PromiseRejectedResult).reason as Error;
    expect(reason).toBeInstanceOf(Error);
    expect(reason.message).toMatch(/^WRONGTYPE /);
    const paid = await paidOrders();
    expect(orders.map(([order]) => paid.has(order.orderId))).toEqual([true, false, true, true]);
    expect(await pendingIds(group)).toEqual([badContext.id]);
  });

  it('pays the rest one at a time when the call for all of them fails', async () => {
    const { group, orders } = await deliveredOrders(3);
    const scripts = own as unknown as { settleMany: (...args: unknown[]) => Promise<unknown> };
    const settleMany = scripts.settleMany.bind(own);
    const calls: number[] = [];
    // A call for more than one order fails as a whole (a stand-in for, say, a script error
    // outside the pcalls); a call for one goes through.
    scripts.settleMany = (keys, ...args) => {
      calls.push(Number(keys) - 1);
      return Number(keys) > 2
        ? Promise.reject(new Error('ERR something broke the batch'))
        : settleMany(keys, ...args);
    };
    try {
      const handle = paymentHandler({ redis: own, logger, limit: LIMIT });

      await Promise.all(orders.map(([order, context]) => handle(order, context)));
    } finally {
      scripts.settleMany = settleMany;
    }

    expect(calls).toEqual([3, 1, 1, 1]);
    const paid = await paidOrders();
    expect(orders.every(([order]) => paid.has(order.orderId))).toBe(true);
    expect(await pendingIds(group)).toEqual([]);
  });

  it('is refused whole while Redis is out of memory: every order fails with OOM, even one paid before, and nothing is written or acked', async () => {
    const { group, orders } = await deliveredOrders(3);
    // Paid before: a script run under OOM could still ack it; one refused up front does not.
    await own.hset(paymentKey(orders[0]![0].orderId), 'paymentProcessId', 'paid-before');
    const handle = paymentHandler({ redis: own, logger, limit: LIMIT });
    const paidBefore = await own.xlen('payment-events');
    const refusedBefore = await rejectedScriptCalls();

    await own.config('SET', 'maxmemory', '1');
    let outcomes: PromiseSettledResult<void>[];
    try {
      outcomes = await Promise.allSettled(orders.map(([order, context]) => handle(order, context)));
    } finally {
      await own.config('SET', 'maxmemory', '0');
    }

    // An Error with Redis's own message: the subscription tells a Redis fault by it, and pauses.
    for (const outcome of outcomes) {
      expect(outcome.status).toBe('rejected');
      expect((outcome as PromiseRejectedResult).reason).toBeInstanceOf(Error);
      expect(((outcome as PromiseRejectedResult).reason as Error).message).toMatch(/^OOM /);
    }
    expect((await rejectedScriptCalls()) - refusedBefore).toBe(1);
    expect(await own.xlen('payment-events')).toBe(paidBefore);
    expect(await pendingIds(group)).toHaveLength(3);
  });

  it("fails each order with Redis's IDAHEAD error once payment-events IDs run ahead of the clock", async () => {
    const { group, orders } = await deliveredOrders(2);
    const handle = paymentHandler({ redis: own, logger, limit: LIMIT });
    // An ID set by hand an hour ahead: every `*` ID after it follows.
    await own.xadd('payment-events', `${Date.now() + 3_600_000}-0`, 'type', 'forged');

    const outcomes = await Promise.allSettled(orders.map(([order, context]) => handle(order, context)));
    await own.del('payment-events');

    // Each an Error with Redis's own message, which the subscription reads as a stream ID error.
    for (const outcome of outcomes) {
      expect(outcome.status).toBe('rejected');
      expect((outcome as PromiseRejectedResult).reason).toBeInstanceOf(Error);
      expect(((outcome as PromiseRejectedResult).reason as Error).message).toMatch(
        /^IDAHEAD payment-events: /,
      );
    }
    expect(await pendingIds(group)).toHaveLength(2);
    expect(await Promise.all(orders.map(([order]) => own.exists(paymentKey(order.orderId))))).toEqual([0, 0]);
  });
});

describe("the payment record's state machine (the saga's payment side)", () => {
  /** `events`, appended to order-events in this order and delivered to a group of their own. */
  async function delivered(...events: OrderEvent[]): Promise<DeliveryContext[]> {
    const group = `test-${randomUUID()}`;
    await redis.xgroup('CREATE', 'order-events', group, '$', 'MKSTREAM');
    const ids: string[] = [];
    for (const event of events)
      ids.push((await redis.xadd('order-events', '*', ...Object.entries(event).flat().map(String)))!);
    await redis.xreadgroup('GROUP', group, 'c', 'STREAMS', 'order-events', '>');
    return ids.map((id) => ({
      id,
      stream: 'order-events',
      group,
      consumer: 'c',
      deliveryCount: 1,
      stillHeld: () => true,
    }));
  }
  const created = (price = 1000) => ({
    type: 'order-created' as const,
    orderId: randomUUID(),
    userId: 'u1',
    productId: 'p1',
    price,
  });
  const cancelled = (orderId: string) => ({
    type: 'order-cancelled' as const,
    orderId,
    userId: 'u1',
    reason: 'payment-timeout' as const,
  });
  const eventsOf = async (orderId: string, type: string) =>
    (await paymentsFor(orderId)).filter((fields) => fields.type === type);
  const pendingIn = async (group: string) => {
    const [count] = (await redis.xpending('order-events', group)) as [number];
    return count;
  };

  it('declines an order above the limit once: payment-failed (limit-exceeded), a declined record, nothing charged', async () => {
    const order = created(1000.5);
    const [context] = await delivered(order);
    const handle = paymentHandler({ redis, logger, limit: 1000 });

    await handle(order, context!);
    await handle(order, { ...context!, deliveryCount: 2 });

    expect(await paymentsFor(order.orderId)).toEqual([
      { type: 'payment-failed', orderId: order.orderId, userId: 'u1', reason: 'limit-exceeded' },
    ]);
    expect(await redis.hgetall(paymentKey(order.orderId))).toMatchObject({
      state: 'declined',
      reason: 'limit-exceeded',
      orderEntryId: context!.id,
      failedEntryId: expect.stringMatching(/^\d+-\d+$/),
    });
    expect(await pendingIn(context!.group)).toBe(0);
  });

  it('charges an order whose price equals the limit', async () => {
    const order = created(1000);
    const [context] = await delivered(order);

    await paymentHandler({ redis, logger, limit: 1000 })(order, context!);

    expect((await paymentsFor(order.orderId)).map((fields) => fields.type)).toEqual(['payment-completed']);
  });

  it('refunds a charged order once when it is cancelled, however often either event is delivered again', async () => {
    const order = created();
    const [orderContext, cancelContext] = await delivered(order, cancelled(order.orderId));
    const handle = paymentHandler({ redis, logger, limit: LIMIT });

    await handle(order, orderContext!);
    await handle(cancelled(order.orderId), cancelContext!);
    await handle(cancelled(order.orderId), { ...cancelContext!, deliveryCount: 2 });
    await handle(order, { ...orderContext!, deliveryCount: 2 });

    const [charge] = await eventsOf(order.orderId, 'payment-completed');
    expect(await paymentsFor(order.orderId)).toEqual([
      charge,
      {
        type: 'payment-refunded',
        orderId: order.orderId,
        userId: 'u1',
        paymentProcessId: charge!.paymentProcessId,
        price: '1000',
      },
    ]);
    expect(await redis.hgetall(paymentKey(order.orderId))).toMatchObject({
      state: 'refunded',
      cancelledEntryId: cancelContext!.id,
      refundEntryId: expect.stringMatching(/^\d+-\d+$/),
    });
    expect(await pendingIn(orderContext!.group)).toBe(0);
  });

  it('never charges an order cancelled before its order-created is handled', async () => {
    const order = created();
    const [orderContext, cancelContext] = await delivered(order, cancelled(order.orderId));
    const handle = paymentHandler({ redis, logger, limit: LIMIT });

    await handle(cancelled(order.orderId), cancelContext!);
    await handle(order, orderContext!);

    expect(await paymentsFor(order.orderId)).toEqual([]);
    expect(await redis.hgetall(paymentKey(order.orderId))).toMatchObject({
      state: 'cancelled',
      reason: 'payment-timeout',
      cancelledEntryId: cancelContext!.id,
    });
    expect(await pendingIn(orderContext!.group)).toBe(0);
  });

  it('refunds nothing when a declined order is cancelled', async () => {
    const order = created(5_000);
    const [orderContext, cancelContext] = await delivered(order, {
      ...cancelled(order.orderId),
      reason: 'payment-declined',
    });
    const handle = paymentHandler({ redis, logger, limit: 1000 });

    await handle(order, orderContext!);
    await handle({ ...cancelled(order.orderId), reason: 'payment-declined' }, cancelContext!);

    expect((await paymentsFor(order.orderId)).map((fields) => fields.type)).toEqual(['payment-failed']);
    expect((await redis.hgetall(paymentKey(order.orderId))).state).toBe('declined');
    expect(await pendingIn(orderContext!.group)).toBe(0);
  });

  it('side by side, in either order of arrival, ends charged and refunded or never charged: never a charge kept for a cancelled order', async () => {
    const handle = paymentHandler({ redis, logger, limit: LIMIT });
    for (let n = 0; n < 20; n += 1) {
      const order = created();
      const cancellation = cancelled(order.orderId);
      const cancelFirst = n % 2 === 1;
      const contexts = await delivered(...(cancelFirst ? [cancellation, order] : [order, cancellation]));
      const [orderContext, cancelContext] = cancelFirst ? [contexts[1]!, contexts[0]!] : contexts;
      // Both started in one tick, as a subscription hands a read's entries to its handlers.
      const runs = [handle(order, orderContext!), handle(cancellation, cancelContext!)];
      await Promise.all(cancelFirst ? runs.reverse() : runs);

      const types = (await paymentsFor(order.orderId)).map((fields) => fields.type);
      const { state } = await redis.hgetall(paymentKey(order.orderId));
      expect([
        ['refunded', 'payment-completed,payment-refunded'],
        ['cancelled', ''],
      ]).toContainEqual([state, types.join()]);
      expect(await pendingIn(orderContext!.group)).toBe(0);
    }
  });

  it('reads the record again when a charge lands between the cancellation reading it and its script, and refunds', async () => {
    const order = created();
    const [orderContext, cancelContext] = await delivered(order, cancelled(order.orderId));
    const connection = new Redis(inject('redisUrl'));
    const handle = paymentHandler({ redis: connection, logger, limit: LIMIT });
    const hgetall = connection.hgetall.bind(connection);
    let reads = 0;
    // The first read finds no record; the order is charged right after it.
    connection.hgetall = (async (key: string) => {
      const read = await hgetall(key);
      if ((reads += 1) === 1) await paymentHandler({ redis, logger, limit: LIMIT })(order, orderContext!);
      return read;
    }) as typeof connection.hgetall;
    try {
      await handle(cancelled(order.orderId), cancelContext!);
    } finally {
      connection.disconnect();
    }

    expect(reads).toBe(2);
    expect((await paymentsFor(order.orderId)).map((fields) => fields.type)).toEqual([
      'payment-completed',
      'payment-refunded',
    ]);
    expect((await redis.hgetall(paymentKey(order.orderId))).state).toBe('refunded');
  });

  it('refunds a payment recorded before records had a state, with the user and price of its payment-completed entry', async () => {
    const order = created();
    const [, cancelContext] = await delivered(order, cancelled(order.orderId));
    // prettier-ignore
    const paymentEntryId = (await redis.xadd('payment-events', '*', 'type', 'payment-completed',
      'orderId', order.orderId, 'userId', 'u1', 'productId', 'p1', 'price', '1000', 'paymentProcessId', 'old-1'))!;
    await redis.hset(paymentKey(order.orderId), { paymentProcessId: 'old-1', paymentEntryId });

    await paymentHandler({ redis, logger, limit: LIMIT })(cancelled(order.orderId), cancelContext!);

    expect(await eventsOf(order.orderId, 'payment-refunded')).toEqual([
      {
        type: 'payment-refunded',
        orderId: order.orderId,
        userId: 'u1',
        paymentProcessId: 'old-1',
        price: '1000',
      },
    ]);
  });
});
