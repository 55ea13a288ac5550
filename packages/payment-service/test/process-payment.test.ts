import { randomUUID } from 'node:crypto';
import { createPublisher, type DeliveryContext, type Publisher } from '@msa/stream-kit';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { entryFields } from '../../../test/support/streams.ts';
import { paymentHandler } from '../src/process-payment.ts';

let redis: Redis;
let publisher: Publisher;

beforeAll(() => {
  redis = new Redis(inject('redisUrl'));
  publisher = createPublisher({ connection: redis });
});
afterAll(async () => {
  await publisher.close();
  await redis.quit();
});

async function paymentsFor(orderId: string) {
  return (await entryFields(redis, 'payment-events')).filter((fields) => fields.orderId === orderId);
}

const context: DeliveryContext = {
  id: '1-0',
  stream: 'order-events',
  group: 'payment-service-group',
  deliveryCount: 1,
};

describe('on order-created', () => {
  it('publishes payment-completed with the order fields and a payment process ID', async () => {
    const orderId = randomUUID();
    const handle = paymentHandler({ publisher, logger: pino({ level: 'silent' }) });

    await handle({ type: 'order-created', orderId, userId: 'u1', productId: 'p1', price: 1000 }, context);

    expect(await paymentsFor(orderId)).toEqual([
      {
        type: 'payment-completed',
        orderId,
        userId: 'u1',
        productId: 'p1',
        price: '1000',
        paymentProcessId: expect.stringMatching(/^[0-9a-f-]{36}$/),
      },
    ]);
  });

  it('gives every payment a new ID, even from two separate instances', async () => {
    const orderIds = [randomUUID(), randomUUID(), randomUUID()];
    // Two handlers stand for two instances, or one instance before and after a restart.
    const instances = [1, 2].map(() => paymentHandler({ publisher, logger: pino({ level: 'silent' }) }));

    for (const [i, orderId] of orderIds.entries()) {
      await instances[i % 2]!(
        { type: 'order-created', orderId, userId: 'u', productId: 'p', price: 1 },
        context,
      );
    }

    const ids = (await Promise.all(orderIds.map(paymentsFor))).flat().map((p) => p.paymentProcessId);
    expect(ids).toHaveLength(3);
    expect(new Set(ids).size).toBe(3);
  });
});
