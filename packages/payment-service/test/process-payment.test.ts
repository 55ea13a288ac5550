import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { NonRetryableError, type DeliveryContext } from '@msa/stream-kit';
import type { OrderEvent } from '@msa/stream-kit/events';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { entryFields } from '../../../harness/streams.ts';
import { paymentHandler, paymentKey } from '../src/process-payment.ts';

let redis: Redis;
const logger = pino({ level: 'silent' });

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
async function deliveredOrder(): Promise<[OrderEvent & { type: 'order-created' }, DeliveryContext]> {
  const group = `test-${randomUUID()}`;
  await redis.xgroup('CREATE', 'order-events', group, '$', 'MKSTREAM');
  const order = {
    type: 'order-created' as const,
    orderId: randomUUID(),
    userId: 'u1',
    productId: 'p1',
    price: 1000,
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
  it('publishes payment-completed, records the payment and acks the order, all at once', async () => {
    const [order, context] = await deliveredOrder();

    await paymentHandler({ redis, logger })(order, context);

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
      paymentProcessId: payment!.paymentProcessId,
      orderEntryId: context.id,
      paymentEntryId: expect.stringMatching(/^\d+-\d+$/),
      paidAt: expect.any(String),
    });
    expect(await pending(context)).toBe(0);
  });

  it('pays an order delivered again (or to two instances at once) only once', async () => {
    const [order, context] = await deliveredOrder();
    const instances = [1, 2, 3].map(() => paymentHandler({ redis, logger }));

    await Promise.all(instances.map((handle) => handle(order, context)));
    await instances[0]!(order, { ...context, deliveryCount: 2 });

    expect(await paymentsFor(order.orderId)).toHaveLength(1);
    expect(await pending(context)).toBe(0);
  });

  it('only acks an order whose payment was recorded before a crash lost the ack', async () => {
    const [order, context] = await deliveredOrder();
    await redis.hset(paymentKey(order.orderId), 'paymentProcessId', 'paid-before-the-crash');

    await paymentHandler({ redis, logger })(order, context);

    expect(await paymentsFor(order.orderId)).toEqual([]);
    expect(await pending(context)).toBe(0);
  });

  it('gives every payment a new ID, even from two separate instances', async () => {
    const orders = await Promise.all([1, 2, 3].map(() => deliveredOrder()));
    // Two handlers stand for two instances, or one instance before and after a restart.
    const instances = [1, 2].map(() => paymentHandler({ redis, logger }));

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

    await paymentHandler({ redis, logger: pino(sink) })(order, context);

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
    const forged = { ...order, type: 'order-cancelled' } as unknown as OrderEvent;

    const handling = paymentHandler({ redis, logger })(forged, context);

    await expect(handling).rejects.toBeInstanceOf(NonRetryableError);
    await expect(handling).rejects.toThrow('no handler for event type "order-cancelled"');
    expect(await paymentsFor(order.orderId)).toEqual([]);
    expect(await redis.exists(paymentKey(order.orderId))).toBe(0);
    expect(await pending(context)).toBe(1);
  });
});
