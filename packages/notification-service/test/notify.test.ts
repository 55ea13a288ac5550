import { randomUUID } from 'node:crypto';
import type { DeliveryContext } from '@msa/stream-kit';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort } from '../../../scripts/net.ts';
import { createApp } from '../src/app.ts';
import { orderMailHandler, paymentSmsHandler } from '../src/notify.ts';
import type { Message, NotificationSender } from '../src/sender.ts';
import { markerKey, redisSentLog, type SentLog } from '../src/sent-log.ts';

let redis: Redis;
let sentLog: SentLog;
const logger = pino({ level: 'silent' });

beforeAll(() => {
  redis = new Redis(inject('redisUrl'));
  sentLog = redisSentLog(redis);
});
afterAll(async () => {
  await redis.quit();
});

/** A sender standing in for a mail or SMS provider: it keeps what it was asked to send. */
function recordingSender(): NotificationSender & { sent: Message[] } {
  const sent: Message[] = [];
  return { sent, send: async (message) => void sent.push(message) };
}

/** An entry of a stream of its own, delivered to `consumer` as the subscription would. */
async function delivered(consumer = 'c1'): Promise<DeliveryContext> {
  const stream = `test-${randomUUID()}`;
  await redis.xgroup('CREATE', stream, 'g', '$', 'MKSTREAM');
  const id = (await redis.xadd(stream, '*', 'any', 'thing'))!;
  await redis.xreadgroup('GROUP', 'g', consumer, 'STREAMS', stream, '>');
  return { id, stream, group: 'g', consumer, deliveryCount: 1 };
}

async function pending({ stream, group }: DeliveryContext) {
  const [count] = (await redis.xpending(stream, group)) as [number];
  return count;
}

const order = (userId: string, orderId: string = randomUUID()) =>
  ({ type: 'order-created', orderId, userId, productId: 'p-1', price: 1000 }) as const;

describe('on order-created', () => {
  it('mails the customer, records the mail and acks the entry', async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();
    const context = await delivered();

    await orderMailHandler({ sender, sentLog })(order(userId, 'o-1'), context);

    expect(sender.sent).toEqual([
      { channel: 'mail', userId, text: expect.stringContaining('o-1'), idempotencyKey: 'mail:o-1' },
    ]);
    expect(await sentLog.list(userId)).toEqual([
      {
        channel: 'mail',
        event: 'order-created',
        orderId: 'o-1',
        entryId: context.id,
        time: expect.any(String),
      },
    ]);
    expect(await pending(context)).toBe(0);
  });

  it('records nothing when the sender fails, and a retry sends at once', async () => {
    const userId = `user-${randomUUID()}`;
    const failing: NotificationSender = { send: async () => Promise.reject(new Error('SMTP down')) };
    const event = order(userId);
    const context = await delivered();

    const handling = orderMailHandler({ sender: failing, sentLog })(event, context);

    await expect(handling).rejects.toThrow('SMTP down');
    expect(await sentLog.list(userId)).toEqual([]);
    expect(await pending(context)).toBe(1);
    const sender = recordingSender();
    await orderMailHandler({ sender, sentLog })(event, { ...context, deliveryCount: 2 });
    expect(sender.sent).toHaveLength(1);
  });

  it('does not mail again when the record failed after the send, only records it', async () => {
    const own = new Redis(inject('redisUrl'));
    try {
      const log = redisSentLog(own);
      const scripts = own as unknown as { completeOnce: (...args: unknown[]) => Promise<number> };
      const complete = scripts.completeOnce.bind(own);
      let failures = 1;
      // Redis goes away just after the provider accepted the mail.
      scripts.completeOnce = (...args) =>
        failures-- > 0 ? Promise.reject(new Error('Connection is closed.')) : complete(...args);
      const userId = `user-${randomUUID()}`;
      const sender = recordingSender();
      const context = await delivered();
      const handle = orderMailHandler({ sender, sentLog: log });
      const event = order(userId);

      await expect(handle(event, context)).rejects.toThrow('Connection is closed.');
      await handle(event, { ...context, deliveryCount: 2 });

      expect(sender.sent).toHaveLength(1);
      expect(await log.list(userId)).toHaveLength(1);
      expect(await pending(context)).toBe(0);
    } finally {
      own.disconnect();
    }
  });

  it('mails once when the order is delivered again, or to two instances at once', async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();
    const event = order(userId);
    const context = await delivered();
    const handle = orderMailHandler({ sender, sentLog });

    const outcomes = await Promise.allSettled([
      handle(event, { ...context, consumer: 'a' }),
      handle(event, { ...context, consumer: 'b' }),
    ]);
    await handle(event, { ...context, consumer: 'c', deliveryCount: 2 });

    expect(sender.sent).toHaveLength(1);
    expect(await sentLog.list(userId)).toHaveLength(1);
    // One instance sent; the other found the mail leased and will see it sent on its retry.
    expect(outcomes.map((outcome) => outcome.status).sort()).toEqual(['fulfilled', 'rejected']);
    expect(await pending(context)).toBe(0);
  });

  it("waits while another consumer's lease on the mail is live, and takes over once it expires", async () => {
    const userId = `user-${randomUUID()}`;
    const event = order(userId);
    const context = await delivered('b');
    // 'a' claimed the mail and died before sending it.
    await redis.set(markerKey(`mail:${event.orderId}`), 'sending:a:1', 'PX', 300);
    const sender = recordingSender();
    const handle = orderMailHandler({ sender, sentLog });

    await expect(handle(event, context)).rejects.toThrow(/being sent by another consumer/);
    await new Promise((resolve) => setTimeout(resolve, 400));
    await handle(event, { ...context, deliveryCount: 2 });

    expect(sender.sent).toHaveLength(1);
  });

  it('mails once when two entries of one order are handled side by side by one instance', async () => {
    const userId = `user-${randomUUID()}`;
    const event = order(userId);
    const [first, second] = [await delivered('a'), await delivered('a')];
    const sent: Message[] = [];
    // A provider slow enough that the two handlers overlap.
    const sender: NotificationSender = {
      send: async (message) => {
        await new Promise((resolve) => setTimeout(resolve, 50));
        sent.push(message);
      },
    };
    const handle = orderMailHandler({ sender, sentLog: redisSentLog(redis) });

    const outcomes = await Promise.allSettled([handle(event, first!), handle(event, second!)]);
    await handle(event, { ...second!, deliveryCount: 2 });

    expect(sent).toHaveLength(1);
    expect(outcomes.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected']);
    expect([await pending(first!), await pending(second!)]).toEqual([0, 0]);
  });

  it('takes over at once a lease left by an earlier run of the same consumer', async () => {
    const userId = `user-${randomUUID()}`;
    const event = order(userId);
    const context = await delivered('a');
    await redis.set(markerKey(`mail:${event.orderId}`), 'sending:a:earlier-run', 'PX', 60_000);
    const sender = recordingSender();

    await orderMailHandler({ sender, sentLog })(event, context);

    expect(sender.sent).toHaveLength(1);
  });
});

describe('on payment-completed', () => {
  it('texts the customer once per order and records the SMS', async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();
    const payment = {
      type: 'payment-completed',
      orderId: `o-${randomUUID()}`,
      userId,
      productId: 'p',
      price: 5,
      paymentProcessId: 'pay-9',
    } as const;
    const handle = paymentSmsHandler({ sender, sentLog });

    await handle(payment, await delivered());
    await handle(payment, await delivered());

    expect(sender.sent).toEqual([
      {
        channel: 'sms',
        userId,
        text: expect.stringContaining('pay-9'),
        idempotencyKey: `sms:${payment.orderId}`,
      },
    ]);
    expect(await sentLog.list(userId)).toMatchObject([
      { channel: 'sms', event: 'payment-completed', orderId: payment.orderId },
    ]);
  });
});

describe("on a payment written by the tutorial's Java payment-service", () => {
  it('texts the customer once per entry and records the SMS without an orderId', async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();
    const context = await delivered();
    const payment = {
      type: 'payment-completed',
      userId,
      productId: 'p',
      price: 5,
      paymentProcessId: '0',
    } as const;

    await paymentSmsHandler({ sender, sentLog })(payment, context);
    await paymentSmsHandler({ sender, sentLog })(payment, { ...context, deliveryCount: 2 });

    expect(sender.sent).toEqual([
      {
        channel: 'sms',
        userId,
        text: 'Payment 0 of 5 completed.',
        idempotencyKey: `sms:${context.stream}/${context.id}`,
      },
    ]);
    expect(await sentLog.list(userId)).toEqual([
      { channel: 'sms', event: 'payment-completed', entryId: context.id, time: expect.any(String) },
    ]);
  });
});

describe('GET /notifications', () => {
  it("lists a user's notifications, oldest first", async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();
    const placed = order(userId);
    await orderMailHandler({ sender, sentLog })(placed, await delivered());
    await paymentSmsHandler({ sender, sentLog })(
      { ...placed, type: 'payment-completed', paymentProcessId: 'x' },
      await delivered(),
    );

    const response = await request(createApp({ sentLog, redis, logger }))
      .get('/notifications')
      .query({ userId });

    expect(response.status).toBe(200);
    expect(response.body.map((n: { channel: string }) => n.channel)).toEqual(['mail', 'sms']);
  });

  it('answers 400 naming userId when it is missing', async () => {
    const response = await request(createApp({ sentLog, redis, logger })).get('/notifications');

    expect(response.status).toBe(400);
    expect(response.body).toEqual({ error: expect.stringContaining('userId'), field: 'userId' });
  });
});

describe('GET /readyz', () => {
  it('is ready while Redis answers, and says why not when it does not', async () => {
    const unreachable = new Redis(await freePort(), { lazyConnect: true, maxRetriesPerRequest: 0 });
    unreachable.on('error', () => {});
    try {
      const ready = await request(createApp({ sentLog, redis, logger })).get('/readyz');
      const notReady = await request(createApp({ sentLog, redis: unreachable, logger })).get('/readyz');
      const health = await request(createApp({ sentLog, redis: unreachable, logger })).get('/healthz');

      expect([ready.status, ready.body]).toEqual([200, { status: 'ready' }]);
      expect([notReady.status, notReady.body]).toEqual([
        503,
        { status: 'not ready', reason: expect.any(String) },
      ]);
      expect(health.status).toBe(200);
    } finally {
      unreachable.disconnect();
    }
  });
});
