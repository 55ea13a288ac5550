import { randomUUID } from 'node:crypto';
import type { DeliveryContext } from '@msa/stream-kit';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { createApp } from '../src/app.ts';
import { orderMailHandler, paymentSmsHandler } from '../src/notify.ts';
import type { Message, NotificationSender } from '../src/sender.ts';
import { redisSentLog, type SentLog } from '../src/sent-log.ts';

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

const context = (id: string): DeliveryContext => ({ id, stream: 's', group: 'g', deliveryCount: 1 });

describe('on order-created', () => {
  it('mails the customer and records the mail', async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();

    await orderMailHandler({ sender, sentLog })(
      { type: 'order-created', orderId: 'o-1', userId, productId: 'p-1', price: 1000 },
      context('1-0'),
    );

    expect(sender.sent).toEqual([{ channel: 'mail', userId, text: expect.stringContaining('o-1') }]);
    expect(await sentLog.list(userId)).toEqual([
      { channel: 'mail', event: 'order-created', orderId: 'o-1', entryId: '1-0', time: expect.any(String) },
    ]);
  });

  it('records nothing when the sender fails, so the event is delivered again', async () => {
    const userId = `user-${randomUUID()}`;
    const failing: NotificationSender = { send: async () => Promise.reject(new Error('SMTP down')) };

    const handling = orderMailHandler({ sender: failing, sentLog })(
      { type: 'order-created', orderId: 'o-2', userId, productId: 'p', price: 1 },
      context('2-0'),
    );

    await expect(handling).rejects.toThrow('SMTP down');
    expect(await sentLog.list(userId)).toEqual([]);
  });
});

describe('on payment-completed', () => {
  it('texts the customer and records the SMS', async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();

    await paymentSmsHandler({ sender, sentLog })(
      {
        type: 'payment-completed',
        orderId: 'o-3',
        userId,
        productId: 'p',
        price: 5,
        paymentProcessId: 'pay-9',
      },
      context('3-0'),
    );

    expect(sender.sent).toEqual([{ channel: 'sms', userId, text: expect.stringContaining('pay-9') }]);
    expect(await sentLog.list(userId)).toMatchObject([
      { channel: 'sms', event: 'payment-completed', orderId: 'o-3' },
    ]);
  });
});

describe('GET /notifications', () => {
  it("lists a user's notifications, oldest first", async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();
    await orderMailHandler({ sender, sentLog })(
      { type: 'order-created', orderId: 'o-4', userId, productId: 'p', price: 1 },
      context('4-0'),
    );
    await paymentSmsHandler({ sender, sentLog })(
      { type: 'payment-completed', orderId: 'o-4', userId, productId: 'p', price: 1, paymentProcessId: 'x' },
      context('5-0'),
    );

    const response = await request(createApp({ sentLog, logger })).get('/notifications').query({ userId });

    expect(response.status).toBe(200);
    expect(response.body.map((n: { channel: string }) => n.channel)).toEqual(['mail', 'sms']);
  });

  it('answers 400 naming userId when it is missing', async () => {
    const response = await request(createApp({ sentLog, logger })).get('/notifications');

    expect(response.status).toBe(400);
    expect(response.body).toEqual({ error: expect.stringContaining('userId'), field: 'userId' });
  });
});

describe("on a payment written by the tutorial's Java payment-service", () => {
  it('texts the customer and records the SMS without an orderId', async () => {
    const userId = `user-${randomUUID()}`;
    const sender = recordingSender();

    await paymentSmsHandler({ sender, sentLog })(
      { type: 'payment-completed', userId, productId: 'p', price: 5, paymentProcessId: '0' },
      context('6-0'),
    );

    expect(sender.sent).toEqual([{ channel: 'sms', userId, text: 'Payment 0 of 5 completed.' }]);
    expect(await sentLog.list(userId)).toEqual([
      { channel: 'sms', event: 'payment-completed', entryId: '6-0', time: expect.any(String) },
    ]);
  });
});
