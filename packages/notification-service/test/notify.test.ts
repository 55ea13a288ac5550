import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { NonRetryableError, RetryLaterError, type DeliveryContext } from '@msa/stream-kit';
import { livenessKey } from '@msa/stream-kit/lua';
import { authenticate, openRequestConnection, READ_ALL_SCOPE, signToken } from '@msa/stream-kit/service';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort } from '../../../harness/net.ts';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { waitFor } from '../../../harness/wait.ts';
import { createApp } from '../src/app.ts';
import { orderMailHandler, paymentSmsHandler } from '../src/notify.ts';
import type { Message, NotificationSender } from '../src/sender.ts';
import {
  markerKey,
  NotificationLeasedError,
  redisSentLog,
  sentLogKey,
  type SentLog,
} from '../src/sent-log.ts';

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

/** What `log` recorded as sent to `userId`, oldest first (the first page: tests send a few). */
async function sentTo(userId: string, log: SentLog = sentLog) {
  return (await log.list(userId)).notifications;
}

/** A sender standing in for a mail or SMS provider: it keeps what it was asked to send. */
function recordingSender(): NotificationSender & { sent: Message[] } {
  const sent: Message[] = [];
  return { sent, send: async (message) => void sent.push(message) };
}

/** An entry of a stream of its own, delivered to `consumer` as the subscription would. */
async function delivered(consumer = 'c1', on: Redis = redis): Promise<DeliveryContext> {
  const stream = `test-${randomUUID()}`;
  await on.xgroup('CREATE', stream, 'g', '$', 'MKSTREAM');
  const id = (await on.xadd(stream, '*', 'any', 'thing'))!;
  await on.xreadgroup('GROUP', 'g', consumer, 'STREAMS', stream, '>');
  return { id, stream, group: 'g', consumer, deliveryCount: 1, stillHeld: () => true };
}

async function pending({ stream, group }: DeliveryContext, on: Redis = redis) {
  const [count] = (await on.xpending(stream, group)) as [number];
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
    expect(await sentTo(userId)).toEqual([
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
    expect(await sentTo(userId)).toEqual([]);
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
      expect(await sentTo(userId, log)).toHaveLength(1);
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
    expect(await sentTo(userId)).toHaveLength(1);
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

  it.each([
    ['is dead (its liveness mark lapsed): the mail is sent at once', 'dead', 1],
    ['is alive: the mail waits for it', 'alive', 0],
  ] as const)("takes over another consumer's live lease when that consumer %s", async (_, state, sends) => {
    const userId = `user-${randomUUID()}`;
    const event = order(userId);
    const context = await delivered('b');
    await redis.set(markerKey(`mail:${event.orderId}`), 'sending:a:1', 'PX', 60_000);
    const [seconds] = await redis.time();
    const deadline = (Number(seconds) + (state === 'dead' ? -60 : 60)) * 1000;
    // 'a' holds the lease; 'b', this consumer, is alive and has been for long: it may judge.
    await redis.hset(
      livenessKey(context.stream, context.group),
      'a',
      `${deadline} 0`,
      'b',
      `${(Number(seconds) + 60) * 1000} 0`,
    );
    const sender = recordingSender();

    const handling = orderMailHandler({ sender, sentLog })(event, context);

    if (sends === 1) await handling;
    else await expect(handling).rejects.toThrow(/being sent by another consumer/);
    expect(sender.sent).toHaveLength(sends);
  });

  it('sends nothing, and gives the lease back, when the consumer may no longer hold the entry (it was paused long enough to be taken for dead)', async () => {
    const userId = `user-${randomUUID()}`;
    const event = order(userId);
    const context = await delivered('b');
    const sender = recordingSender();

    const handling = orderMailHandler({ sender, sentLog })(event, { ...context, stillHeld: () => false });

    await expect(handling).rejects.toBeInstanceOf(RetryLaterError);
    expect(sender.sent).toEqual([]);
    expect(await redis.get(markerKey(`mail:${event.orderId}`))).toBeNull();
    expect(await pending(context)).toBe(1);
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

describe('the lease on a notification, at the lease the service uses by default (30 s)', () => {
  // A Redis of its own: these tests pause it, which would stall every other suite on the shared one.
  let server: RedisServer;
  /** Looks on, and pauses Redis. */
  let admin: Redis;
  /** The service's connection, as main.ts opens it: a command fails after 2 s without an answer. */
  let serviceRedis: Redis;
  let log: SentLog;
  const LEASE_MS = 30_000;

  beforeAll(async () => {
    server = await startRedisServer();
    admin = new Redis(server.url);
    serviceRedis = openRequestConnection(server.url, logger, 'notification-service');
    log = redisSentLog(serviceRedis, { leaseMs: LEASE_MS });
  });
  afterAll(async () => {
    serviceRedis?.disconnect();
    admin?.disconnect();
    await server?.stop();
  });

  /** The handler's sends, the mail it was asked for, the marker of that mail, and its delivery. */
  async function mailFor(consumer = 'c1') {
    const userId = `user-${randomUUID()}`;
    const event = order(userId);
    return {
      userId,
      event,
      marker: markerKey(`mail:${event.orderId}`),
      context: await delivered(consumer, admin),
    };
  }

  /** Milliseconds `run` took. */
  async function timed(run: () => unknown): Promise<number> {
    const start = Date.now();
    await run();
    return Date.now() - start;
  }

  it('sends at once, and once, after a claim that timed out in the client but ran in Redis', async () => {
    const { userId, event, marker, context } = await mailFor();
    const sender = recordingSender();
    const handle = orderMailHandler({ sender, sentLog: log });
    // Once EVALSHA has been answered on this connection, a paused one runs when Redis goes on.
    await orderMailHandler({ sender: recordingSender(), sentLog: log })(
      order('warm-up'),
      await delivered('c1', admin),
    );

    // Redis stalls longer than the connection's 2 s command timeout; the claim waits in Redis.
    await admin.call('CLIENT', 'PAUSE', '2500', 'WRITE');
    await expect(handle(event, context)).rejects.toThrow(/timed out/i);
    // It ran once Redis went on: a lease under this consumer's name, with a token never learned.
    const lease = await waitFor(async () => (await admin.get(marker)) ?? undefined, {
      what: 'the late claim',
    });
    const ms = await timed(() => handle(event, { ...context, deliveryCount: 2 }));

    expect(lease).toMatch(/^sending:c1:/);
    expect(ms).toBeLessThan(1_000);
    expect(sender.sent).toHaveLength(1);
    expect(await sentTo(userId, log)).toHaveLength(1);
    expect(await admin.get(marker)).toBe('sent');
    expect(await pending(context, admin)).toBe(0);
  });

  it('sends at once, and once, after a failed send whose release failed too', async () => {
    const { userId, event, marker, context } = await mailFor();
    const own = openRequestConnection(server.url, logger, 'notification-service');
    try {
      const ownLog = redisSentLog(own, { leaseMs: LEASE_MS });
      const sent: Message[] = [];
      let failures = 1;
      // The provider fails, and the connection is lost with it: the release cannot reach Redis.
      const sender: NotificationSender = {
        send: async (message) => {
          if (failures-- > 0) {
            own.disconnect();
            throw new Error('SMTP down');
          }
          sent.push(message);
        },
      };
      const handle = orderMailHandler({ sender, sentLog: ownLog });

      await expect(handle(event, context)).rejects.toThrow('SMTP down');
      const lease = await admin.get(marker);
      await own.connect();
      const ms = await timed(() => handle(event, { ...context, deliveryCount: 2 }));

      expect(lease).toMatch(/^sending:c1:/);
      expect(ms).toBeLessThan(1_000);
      expect(sent).toHaveLength(1);
      expect(await sentTo(userId, ownLog)).toHaveLength(1);
      expect(await pending(context, admin)).toBe(0);
    } finally {
      own.disconnect();
    }
  });

  it.each([
    ['another consumer', 'sending:c2:5f0c3a52-3d7e-4f4e-9d55-2b8d6f1a0c11'],
    ['a consumer whose name starts with this one', 'sending:c1:x:5f0c3a52-3d7e-4f4e-9d55-2b8d6f1a0c11'],
  ])('waits (RetryLaterError, not a failure) while %s holds the lease', async (_name, otherLease) => {
    const { userId, event, marker, context } = await mailFor('c1');
    await admin.set(marker, otherLease, 'PX', LEASE_MS);
    const sender = recordingSender();

    const handling = orderMailHandler({ sender, sentLog: log })(event, context);

    await expect(handling).rejects.toBeInstanceOf(RetryLaterError);
    await expect(handling).rejects.toBeInstanceOf(NotificationLeasedError);
    await expect(handling).rejects.toMatchObject({ name: 'NotificationLeasedError' });
    await expect(handling).rejects.toThrow(/being sent by another consumer/);
    expect(sender.sent).toEqual([]);
    expect(await admin.get(marker)).toBe(otherLease);
    expect(await sentTo(userId, log)).toEqual([]);
    expect(await pending(context, admin)).toBe(1);
  });

  it('sends once when two handlers of one process get the same notification at once; the other waits', async () => {
    const { userId, event, context } = await mailFor();
    const second = await delivered('c1', admin);
    const sent: Message[] = [];
    // A provider slow enough that the two handlers overlap.
    const sender: NotificationSender = {
      send: async (message) => {
        await new Promise((resolve) => setTimeout(resolve, 50));
        sent.push(message);
      },
    };
    const handle = orderMailHandler({ sender, sentLog: log });

    const outcomes = await Promise.allSettled([handle(event, context), handle(event, second)]);

    expect(outcomes[0]).toEqual({ status: 'fulfilled', value: undefined });
    expect(outcomes[1]).toMatchObject({ status: 'rejected', reason: expect.any(NotificationLeasedError) });
    expect(String((outcomes[1] as PromiseRejectedResult).reason)).toMatch(/another handler of this process/);
    expect(sent).toHaveLength(1);
    expect(await sentTo(userId, log)).toHaveLength(1);
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
    expect(await sentTo(userId)).toMatchObject([
      { channel: 'sms', event: 'payment-completed', orderId: payment.orderId },
    ]);
  });
});

describe("on the saga's later steps: a cancellation, a declined payment, a refund", () => {
  const orderId = () => `o-${randomUUID()}`;
  it.each([
    [
      'mails a cancelled order once',
      orderMailHandler,
      (userId: string, id: string) =>
        ({ type: 'order-cancelled', orderId: id, userId, reason: 'payment-timeout' }) as const,
      'mail',
      'mail-cancelled',
      'was cancelled: the payment did not go through in time.',
    ],
    [
      'texts a declined payment once',
      paymentSmsHandler,
      (userId: string, id: string) =>
        ({ type: 'payment-failed', orderId: id, userId, reason: 'limit-exceeded' }) as const,
      'sms',
      'sms-declined',
      'was declined (limit-exceeded).',
    ],
    [
      'texts a refund once',
      paymentSmsHandler,
      (userId: string, id: string) =>
        ({ type: 'payment-refunded', orderId: id, userId, paymentProcessId: 'pay-7', price: 5 }) as const,
      'sms',
      'sms-refunded',
      'was refunded.',
    ],
  ] as const)(
    '%s, keyed apart from the mail and SMS of its order',
    async (_name, handler, eventOf, channel, prefix, ending) => {
      const userId = `user-${randomUUID()}`;
      const sender = recordingSender();
      const id = orderId();
      const event = eventOf(userId, id);
      const handle = handler({ sender, sentLog }) as (e: typeof event, c: DeliveryContext) => Promise<void>;
      // The order's own mail or SMS went out before: a later step is a notification of its own.
      await sentLog.sendOnce(
        {
          key: `${channel}:${id}`,
          userId,
          context: await delivered(),
          notification: {
            channel,
            event: 'earlier',
            orderId: id,
            entryId: '1-0',
            time: new Date().toISOString(),
          },
        },
        async () => {},
      );

      await handle(event, await delivered());
      await handle(event, await delivered());

      expect(sender.sent).toEqual([
        {
          channel,
          userId,
          text: expect.stringMatching(new RegExp(`order ${id} .*${ending.replace(/[().]/g, '\\$&')}$`)),
          idempotencyKey: `${prefix}:${id}`,
        },
      ]);
      expect(await sentTo(userId)).toMatchObject([
        { channel, event: 'earlier', orderId: id },
        { channel, event: event.type, orderId: id },
      ]);
    },
  );
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
    expect(await sentTo(userId)).toEqual([
      { channel: 'sms', event: 'payment-completed', entryId: context.id, time: expect.any(String) },
    ]);
  });
});

describe('on an event type without a handler', () => {
  it.each([
    ['the mail handler', 'order-shipped', orderMailHandler],
    ['the SMS handler', 'payment-disputed', paymentSmsHandler],
  ] as const)(
    '%s throws NonRetryableError, so the subscription dead-letters it, and sends, records and acks nothing',
    async (_name, type, handler) => {
      const userId = `user-${randomUUID()}`;
      const sender = recordingSender();
      const context = await delivered();
      // What a schema with a new type would let through to a handler built without its case.
      const forged = { ...order(userId), type };

      const handling = handler({ sender, sentLog })(forged as never, context);

      await expect(handling).rejects.toBeInstanceOf(NonRetryableError);
      await expect(handling).rejects.toThrow(`no handler for event type "${type}"`);
      expect(sender.sent).toEqual([]);
      expect(await sentTo(userId)).toEqual([]);
      expect(
        await redis.exists(markerKey(`mail:${forged.orderId}`), markerKey(`sms:${forged.orderId}`)),
      ).toBe(0);
      expect(await pending(context)).toBe(1);
    },
  );
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

    const response = await request(createApp({ sentLog, redis, logger, instance: 'test' }))
      .get('/notifications')
      .query({ userId });

    expect(response.status).toBe(200);
    expect(response.body.notifications.map((n: { channel: string }) => n.channel)).toEqual(['mail', 'sms']);
    expect(response.body.nextCursor).toBeNull();
  });

  describe('with auth on (AUTH_SECRET)', () => {
    const SECRET = 'notification-service-test-secret-0123456789';
    const app = () =>
      createApp({
        sentLog,
        redis,
        logger,
        instance: 'test',
        authenticate: authenticate({ AUTH_SECRET: SECRET }, 'notification-service'),
      });
    const bearer = async (userId: string, scopes: string[] = []) =>
      `Bearer ${await signToken(SECRET, { userId, scopes })}`;
    /** A new user with one mail sent. */
    async function userWithMail(): Promise<string> {
      const userId = `user-${randomUUID()}`;
      await orderMailHandler({ sender: recordingSender(), sentLog })(order(userId), await delivered());
      return userId;
    }

    it("lists the token's user's notifications, with or without their userId in the query", async () => {
      const userId = await userWithMail();

      for (const query of [{}, { userId }]) {
        const response = await request(app())
          .get('/notifications')
          .query(query)
          .set('authorization', await bearer(userId));
        expect(response.status).toBe(200);
        expect(response.body.notifications).toHaveLength(1);
      }
    });

    it("answers 404 for another user's notifications, whether any were sent or not", async () => {
      const userId = await userWithMail();

      for (const asked of [userId, `user-${randomUUID()}`]) {
        const response = await request(app())
          .get('/notifications')
          .query({ userId: asked })
          .set('authorization', await bearer('someone-else'));
        expect([response.status, response.body]).toEqual([
          404,
          { error: `no notifications of user ${asked} to show`, field: 'userId' },
        ]);
      }
    });

    it("lists another user's notifications to a support token (scope orders:read-all)", async () => {
      const userId = await userWithMail();

      const response = await request(app())
        .get('/notifications')
        .query({ userId })
        .set('authorization', await bearer('support-1', [READ_ALL_SCOPE]));

      expect([response.status, response.body.notifications.length]).toEqual([200, 1]);
    });

    it('answers 401 with WWW-Authenticate and its reason, without a valid token', async () => {
      const missing = await request(app()).get('/notifications');
      const expired = await request(app())
        .get('/notifications')
        .set('authorization', `Bearer ${await signToken(SECRET, { userId: 'u1', ttlS: -120 })}`);

      expect([missing.status, missing.headers['www-authenticate']]).toEqual([
        401,
        'Bearer realm="notification-service"',
      ]);
      expect(expired.status).toBe(401);
      expect(expired.headers['www-authenticate']).toBe(
        'Bearer realm="notification-service", error="invalid_token", error_description="the token has expired"',
      );
    });
  });

  describe('in pages', () => {
    const app = () => createApp({ sentLog, redis, logger, instance: 'test' });

    /** `count` notifications recorded for a new user, as the sent log writes them; returns the user. */
    async function userWith(count: number): Promise<string> {
      const userId = `user-${randomUUID()}`;
      const records = Array.from({ length: count }, (_, i) =>
        JSON.stringify({
          channel: 'mail',
          event: 'order-created',
          orderId: `o-${i}`,
          entryId: `${i}-0`,
          time: '',
        }),
      );
      for (let at = 0; at < records.length; at += 500) {
        await redis.rpush(sentLogKey(userId), ...records.slice(at, at + 500));
      }
      return userId;
    }

    it('gives each of 250 notifications exactly once, in order, 100 at a time', async () => {
      const userId = await userWith(250);
      const pages: string[][] = [];
      let cursor: string | undefined;

      do {
        const response = await request(app())
          .get('/notifications')
          .query({ userId, limit: '100', ...(cursor === undefined ? {} : { cursor }) });
        expect(response.status).toBe(200);
        pages.push(response.body.notifications.map((n: { orderId: string }) => n.orderId));
        cursor = response.body.nextCursor ?? undefined;
      } while (cursor !== undefined && pages.length < 10);

      expect(pages.map((page) => page.length)).toEqual([100, 100, 50]);
      expect(pages.flat()).toEqual(Array.from({ length: 250 }, (_, i) => `o-${i}`));
    });

    it('gives 100 unless told, and at most 1000', async () => {
      const userId = await userWith(1_001);

      const byDefault = await request(app()).get('/notifications').query({ userId });
      const most = await request(app()).get('/notifications').query({ userId, limit: '1000' });
      const rest = await request(app())
        .get('/notifications')
        .query({ userId, limit: '1000', cursor: most.body.nextCursor });

      expect([byDefault.status, byDefault.body.notifications.length]).toEqual([200, 100]);
      expect(byDefault.body.nextCursor).toEqual(expect.any(String));
      expect([most.status, most.body.notifications.length]).toEqual([200, 1_000]);
      expect([rest.status, rest.body.notifications.length, rest.body.nextCursor]).toEqual([200, 1, null]);
      expect(rest.body.notifications[0].orderId).toBe('o-1000');
    });

    it('answers an empty page for a user with no notifications', async () => {
      const response = await request(app())
        .get('/notifications')
        .query({ userId: `user-${randomUUID()}` });

      expect([response.status, response.body]).toEqual([200, { notifications: [], nextCursor: null }]);
    });

    it.each(['0', '1001', '-1', '1.5', 'ten', '', '1e2'])(
      'answers 400 naming limit for limit=%j',
      async (limit) => {
        const response = await request(app()).get('/notifications').query({ userId: 'u1', limit });

        expect(response.status).toBe(400);
        expect(response.body).toEqual({
          error: 'limit must be a whole number from 1 to 1000',
          field: 'limit',
        });
      },
    );

    it.each([
      ['not base64url', '!!!'],
      ['something else encoded', Buffer.from('i-5').toString('base64url')],
      ['an index spelt another way', Buffer.from('i007').toString('base64url')],
      ['empty', ''],
    ])('answers 400 naming cursor for a cursor that is %s', async (_name, cursor) => {
      const response = await request(app()).get('/notifications').query({ userId: 'u1', cursor });

      expect(response.status).toBe(400);
      expect(response.body).toEqual({
        error: 'cursor must be a nextCursor from an earlier answer',
        field: 'cursor',
      });
    });
  });

  it('answers 400 naming userId when it is missing', async () => {
    const response = await request(createApp({ sentLog, redis, logger, instance: 'test' })).get(
      '/notifications',
    );

    expect(response.status).toBe(400);
    expect(response.body).toEqual({ error: expect.stringContaining('userId'), field: 'userId' });
  });

  it.each([
    ['a lone surrogate, percent-encoded', 'alice%ED%A0%80'],
    ['bytes that are not UTF-8', 'alice%FF'],
  ])('answers 400 naming userId when it has %s, instead of reading U+FFFD', async (_name, userId) => {
    const response = await request(createApp({ sentLog, redis, logger, instance: 'test' })).get(
      `/notifications?userId=${userId}`,
    );

    expect(response.status).toBe(400);
    expect(response.body).toEqual({
      error: expect.stringMatching(/^userId must be valid Unicode/),
      field: 'userId',
    });
  });
});

describe('GET /notifications while Redis cannot be reached', () => {
  it('answers 503, logs the failure as an err object and the request as its access line, both with its requestId', async () => {
    const unreachable = openRequestConnection(`redis://127.0.0.1:${await freePort()}`, logger);
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    try {
      const app = createApp({
        sentLog: redisSentLog(unreachable),
        redis: unreachable,
        logger: pino(sink),
        instance: 'test',
      });

      const response = await request(app).get('/notifications').query({ userId: 'u1' });

      expect([response.status, response.body]).toEqual([
        503,
        { error: 'notifications cannot be read right now, try again later' },
      ]);
      const requestId = response.headers['x-request-id'];
      expect(requestId).toEqual(expect.any(String));
      expect(lines).toEqual([
        expect.objectContaining({
          level: 40,
          requestId,
          err: expect.objectContaining({ type: 'UnavailableError', stack: expect.any(String) }),
        }),
        expect.objectContaining({
          level: 30,
          msg: 'request',
          method: 'GET',
          route: '/notifications',
          status: 503,
          requestId,
        }),
      ]);
    } finally {
      unreachable.disconnect();
    }
  });
});

describe('GET /readyz', () => {
  it('is ready while Redis answers, and says why not when it does not', async () => {
    const unreachable = new Redis(await freePort(), { lazyConnect: true, maxRetriesPerRequest: 0 });
    unreachable.on('error', () => {});
    try {
      const ready = await request(createApp({ sentLog, redis, logger, instance: 'test' })).get('/readyz');
      const notReady = await request(
        createApp({ sentLog, redis: unreachable, logger, instance: 'test' }),
      ).get('/readyz');
      const health = await request(createApp({ sentLog, redis: unreachable, logger, instance: 'test' })).get(
        '/healthz',
      );

      expect([ready.status, ready.body]).toEqual([200, { status: 'ready' }]);
      expect([notReady.status, notReady.body]).toEqual([
        503,
        { status: 'not ready', reason: expect.any(String) },
      ]);
      expect([health.status, health.body]).toEqual([200, { status: 'ok', instance: 'test' }]);
    } finally {
      unreachable.disconnect();
    }
  });
});

describe('records of notifications handled side by side (one record call per tick, stream and group)', () => {
  // A Redis of its own: these tests count its script calls.
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

  /** `count` entries of one stream, delivered to one consumer of one group. */
  async function deliveredTogether(count: number): Promise<DeliveryContext[]> {
    const stream = `test-${randomUUID()}`;
    await own.xgroup('CREATE', stream, 'g', '$', 'MKSTREAM');
    const contexts: DeliveryContext[] = [];
    for (let n = 0; n < count; n += 1) {
      const id = (await own.xadd(stream, '*', 'any', 'thing'))!;
      contexts.push({ id, stream, group: 'g', consumer: 'c1', deliveryCount: 1, stillHeld: () => true });
    }
    await own.xreadgroup('GROUP', 'g', 'c1', 'STREAMS', stream, '>');
    return contexts;
  }

  /**
   * A provider that answers once it has been asked for `count` messages, all of them at once: the
   * handlers then reach the record step in the same tick, however their claims were answered.
   */
  function answeringTogether(count: number): NotificationSender & { sent: Message[] } {
    const sent: Message[] = [];
    let all!: () => void;
    const asked = new Promise<void>((resolve) => (all = resolve));
    return {
      sent,
      send: async (message) => {
        sent.push(message);
        if (sent.length === count) all();
        await asked;
      },
    };
  }

  const pendingIds = async ({ stream, group }: DeliveryContext) =>
    ((await own.xpending(stream, group, '-', '+', 100)) as [string][]).map(([id]) => id);
  const scriptCalls = async () => {
    const stats = await own.info('commandstats');
    return Number(/^cmdstat_evalsha:calls=(\d+)/m.exec(stats)?.[1] ?? 0);
  };

  it('records and acks them all, in fewer record calls than notifications', async () => {
    const contexts = await deliveredTogether(6);
    const events = contexts.map(() => order(`user-${randomUUID()}`));
    const log = redisSentLog(own);
    const sender = answeringTogether(6);
    const handle = orderMailHandler({ sender, sentLog: log });
    // Defines the scripts on the connection, so that no call below goes as EVAL.
    await orderMailHandler({ sender: recordingSender(), sentLog: log })(
      order('warm-up'),
      (await deliveredTogether(1))[0]!,
    );
    const before = await scriptCalls();

    await Promise.all(events.map((event, i) => handle(event, contexts[i]!)));

    // One claim per notification (the claim is not batched), then one record call for all.
    expect((await scriptCalls()) - before).toBe(contexts.length + 1);
    expect(sender.sent).toHaveLength(6);
    for (const event of events) expect(await sentTo(event.userId, log)).toHaveLength(1);
    expect(await pendingIds(contexts[0]!)).toEqual([]);
  });

  it('records and acks the others when one record fails, which fails alone with its own Redis error, stays pending and is only recorded on its retry', async () => {
    const contexts = await deliveredTogether(3);
    const events = contexts.map(() => order(`user-${randomUUID()}`));
    // The second user's log key holds a string: RPUSH answers WRONGTYPE for that record alone.
    await own.set(sentLogKey(events[1]!.userId), 'not a list');
    const log = redisSentLog(own);
    const sender = answeringTogether(3);
    const handle = orderMailHandler({ sender, sentLog: log });

    const outcomes = await Promise.allSettled(events.map((event, i) => handle(event, contexts[i]!)));

    expect(outcomes.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    const reason = (outcomes[1] as PromiseRejectedResult).reason as Error;
    expect(reason).toBeInstanceOf(Error);
    expect(reason.message).toMatch(/^WRONGTYPE /);
    expect(await sentTo(events[0]!.userId, log)).toHaveLength(1);
    expect(await sentTo(events[2]!.userId, log)).toHaveLength(1);
    expect(await own.get(markerKey(`mail:${events[1]!.orderId}`))).not.toBe('sent');
    expect(await pendingIds(contexts[0]!)).toEqual([contexts[1]!.id]);

    await own.del(sentLogKey(events[1]!.userId));
    await handle(events[1]!, { ...contexts[1]!, deliveryCount: 2 });

    expect(sender.sent).toHaveLength(3);
    expect(await sentTo(events[1]!.userId, log)).toHaveLength(1);
    expect(await pendingIds(contexts[0]!)).toEqual([]);
  });

  it('records them one at a time when the record call for all of them fails', async () => {
    const contexts = await deliveredTogether(3);
    const events = contexts.map(() => order(`user-${randomUUID()}`));
    const connection = new Redis(server.url);
    try {
      const log = redisSentLog(connection);
      const scripts = connection as unknown as { completeOnce: (...args: unknown[]) => Promise<unknown> };
      const complete = scripts.completeOnce.bind(connection);
      const calls: number[] = [];
      // A call for more than one record fails as a whole (a stand-in for, say, a script error
      // outside the pcalls); a call for one goes through.
      scripts.completeOnce = (keys, ...args) => {
        calls.push((Number(keys) - 1) / 2);
        return Number(keys) > 3
          ? Promise.reject(new Error('ERR something broke the batch'))
          : complete(keys, ...args);
      };
      const sender = answeringTogether(3);

      await Promise.all(
        events.map((event, i) => orderMailHandler({ sender, sentLog: log })(event, contexts[i]!)),
      );

      expect(calls).toEqual([3, 1, 1, 1]);
      expect(sender.sent).toHaveLength(3);
      for (const event of events) expect(await sentTo(event.userId, log)).toHaveLength(1);
      expect(await pendingIds(contexts[0]!)).toEqual([]);
    } finally {
      connection.disconnect();
    }
  });
});
