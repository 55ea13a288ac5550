import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { freePort } from '../harness/net.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { exitOf, spawnService, startService, type RunningService } from '../harness/services.ts';
import { entryFields } from '../harness/streams.ts';
import { waitFor } from '../harness/wait.ts';
import { consumersOf, streams } from '../services.ts';

/*
 * The three services as real processes, on free ports, against their own redis-server: an order
 * placed over HTTP must reach payment and both notifications.
 */

let redisServer: RedisServer;
let redis: Redis;
let order: RunningService;
let payment: RunningService;
let notification: RunningService;

beforeAll(async () => {
  redisServer = await startRedisServer();
  redis = new Redis(redisServer.url);
  const env = { REDIS_URL: redisServer.url };
  [order, payment, notification] = await Promise.all([
    startService('order-service', env),
    startService('payment-service', env),
    startService('notification-service', env),
  ]);
});

afterAll(async () => {
  await Promise.all([order, payment, notification].map((service) => service?.stop()));
  redis?.disconnect();
  await redisServer?.stop();
});

afterEach(() => {
  onTestFailed(() => {
    for (const service of [order, payment, notification]) {
      console.error(`--- ${service?.name} output ---\n${service?.output()}`);
    }
  });
});

type Notification = { channel: string; event: string; orderId: string; entryId: string; time: string };

/** Every notification sent to `userId`, oldest first, page after page. */
async function notificationsOf(userId: string): Promise<Notification[]> {
  const all: Notification[] = [];
  let cursor: string | null = null;
  do {
    const query = new URLSearchParams({ userId, ...(cursor === null ? {} : { cursor }) });
    const response = await fetch(`${notification.url}/notifications?${query}`);
    expect(response.status).toBe(200);
    const page = (await response.json()) as { notifications: Notification[]; nextCursor: string | null };
    all.push(...page.notifications);
    cursor = page.nextCursor;
  } while (cursor !== null);
  return all;
}

async function paymentsFor(orderId: string) {
  return (await entryFields(redis, 'payment-events')).filter((entry) => entry.orderId === orderId);
}

/** Both notifications for `orderId`, once both exist. */
function bothNotifications(userId: string, orderId: string) {
  return waitFor(
    async () => {
      const sent = (await notificationsOf(userId)).filter((n) => n.orderId === orderId);
      return sent.length >= 2 && sent;
    },
    { timeoutMs: 15_000, what: `mail and SMS for order ${orderId}` },
  );
}

async function placeOrder(body: object) {
  const response = await fetch(`${order.url}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(response.status).toBe(202);
  return ((await response.json()) as { orderId: string }).orderId;
}

describe('the running services', () => {
  /** Each stream of the catalogue with the names of its groups, sorted. */
  const groupsByStream = () =>
    Promise.all(
      streams.map(async (stream) => {
        const infos = (await redis.xinfo('GROUPS', stream.name).catch(() => [])) as unknown[][];
        return [stream.name, infos.map((info) => String(info[1])).sort()];
      }),
    );

  it('read each stream as the groups the registry (services.ts) names, and no other', async () => {
    const expected = streams.map((stream) => [
      stream.name,
      consumersOf(stream.name)
        .map(({ group }) => group)
        .sort(),
    ]);

    // Each subscription creates its group as it starts, which may be just after /healthz answers.
    await waitFor(async () => JSON.stringify(await groupsByStream()) === JSON.stringify(expected), {
      timeoutMs: 10_000,
      what: 'the groups the registry names',
    }).catch(() => {});

    expect(await groupsByStream()).toEqual(expected);
  });
});

describe('an order placed over HTTP', () => {
  it('is paid once and notified by mail and SMS', async () => {
    const orderId = await placeOrder({ userId: 'alice', productId: 'book-1', price: 1000 });

    const [paymentEntry] = await waitFor(
      async () => {
        const found = await paymentsFor(orderId);
        return found.length > 0 && found;
      },
      { timeoutMs: 15_000, what: 'the payment event' },
    );
    expect(paymentEntry).toMatchObject({
      type: 'payment-completed',
      orderId,
      userId: 'alice',
      productId: 'book-1',
      price: '1000',
      paymentProcessId: expect.stringMatching(/^[0-9a-f-]{36}$/),
    });

    const sent = await bothNotifications('alice', orderId);
    expect(
      sent
        .map(({ channel, event }) => ({ channel, event }))
        .sort((a, b) => a.channel.localeCompare(b.channel)),
    ).toEqual([
      { channel: 'mail', event: 'order-created' },
      { channel: 'sms', event: 'payment-completed' },
    ]);
    // Time for a duplicate, had there been one, to show up.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await paymentsFor(orderId)).toHaveLength(1);
    expect((await notificationsOf('alice')).filter((n) => n.orderId === orderId)).toHaveLength(2);
  });

  it('gives each payment its own paymentProcessId', async () => {
    const orderIds = await Promise.all(
      [1, 2, 3].map((n) => placeOrder({ userId: 'bob', productId: `p${n}`, price: n * 10 })),
    );

    const ids = await waitFor(
      async () => {
        const payments = (await Promise.all(orderIds.map(paymentsFor))).flat();
        return payments.length === 3 && payments.map((p) => p.paymentProcessId);
      },
      { timeoutMs: 15_000, what: 'three payments' },
    );
    expect(new Set(ids).size).toBe(3);
  });
});

describe("an order written the Java tutorial's way (three fields, no type, no orderId)", () => {
  it('flows through, with its entry ID as the order id', async () => {
    const entryId = (await redis.xadd(
      'order-events',
      '*',
      'userId',
      'carol',
      'productId',
      'p-7',
      'price',
      '5000',
    ))!;

    const sent = await bothNotifications('carol', entryId);
    expect(sent.map((n) => n.channel).sort()).toEqual(['mail', 'sms']);
    expect(await paymentsFor(entryId)).toEqual([
      expect.objectContaining({ userId: 'carol', productId: 'p-7', price: '5000' }),
    ]);
  });

  it('flows through from the tutorial GET /order endpoint', async () => {
    const response = await fetch(`${order.url}/order?userId=dave&productId=p-1&price=300`);
    expect(await response.text()).toBe('ok');

    const sent = await waitFor(
      async () => {
        const found = await notificationsOf('dave');
        return found.length >= 2 && found;
      },
      { timeoutMs: 15_000, what: "dave's notifications" },
    );
    expect(sent.map((n) => n.channel).sort()).toEqual(['mail', 'sms']);
  });
});

describe('malformed order entries', () => {
  /** Entries of every wrong shape, each with what its dead letter's reason must name. */
  const wrongShapes: [what: string, fields: (string | Buffer)[], reason: RegExp][] = [
    ['a price that is no number', ['userId', 'erin', 'productId', 'p', 'price', 'free'], /price/],
    ['a negative price', ['userId', 'erin', 'productId', 'p', 'price', '-5'], /price/],
    ['a missing userId', ['productId', 'p', 'price', '10'], /userId/],
    ['a blank productId', ['userId', 'erin', 'productId', '   ', 'price', '10'], /productId/],
    ['a huge userId', ['userId', 'x'.repeat(1_000_000), 'productId', 'p', 'price', '10'], /userId/],
    [
      'an unknown event type',
      ['type', 'order-teleported', 'userId', 'erin', 'productId', 'p', 'price', '1'],
      /type/,
    ],
    ['no fields that mean anything', ['hello', 'world'], /userId/],
    ['invalid UTF-8', ['userId', Buffer.from([0xc3, 0x28]), 'productId', 'p', 'price', '10'], /UTF-8/],
  ];

  it('go to the dead-letter stream, once per group and with their reason, while the orders around them flow', async () => {
    // Every group that reads order-events: payment-service, notification-service, order-service.
    const groups = consumersOf('order-events')
      .map(({ group }) => group)
      .sort();
    const before = await placeOrder({ userId: 'erin', productId: 'before', price: 1 });
    const poisonIds: string[] = [];
    for (const [, fields] of wrongShapes) poisonIds.push((await redis.xadd('order-events', '*', ...fields))!);
    const after = await placeOrder({ userId: 'erin', productId: 'after', price: 2 });

    await bothNotifications('erin', before);
    await bothNotifications('erin', after);
    const letters = await waitFor(
      async () => {
        const mine = (await entryFields(redis, 'order-events:dlq')).filter((f) =>
          poisonIds.includes(f['dlq:id']!),
        );
        return mine.length === groups.length * poisonIds.length && mine;
      },
      { what: 'a dead letter per group per malformed entry' },
    );
    for (const [i, [what, , reason]] of wrongShapes.entries()) {
      const forEntry = letters.filter((letter) => letter['dlq:id'] === poisonIds[i]);
      expect(forEntry.map((l) => l['dlq:group']).sort(), what).toEqual(groups);
      expect(forEntry[0]?.['dlq:reason'], what).toMatch(reason);
    }
    expect(await paymentsFor(before)).toHaveLength(1);
    expect(await paymentsFor(after)).toHaveLength(1);
  });
});

describe('when payment-service is down', () => {
  it('pays the orders placed meanwhile once it is back', async () => {
    expect(await payment.stop()).toBe(0);
    const orderId = await placeOrder({ userId: 'frank', productId: 'p', price: 42 });

    payment = await startService('payment-service', { REDIS_URL: redisServer.url });

    await bothNotifications('frank', orderId);
    expect(await paymentsFor(orderId)).toHaveLength(1);
  });
});

describe('when Redis is unreachable', () => {
  it('the services start, report not ready, refuse orders with a quick 503, and recover once Redis is up', async () => {
    const port = await freePort();
    const env = { REDIS_URL: `redis://127.0.0.1:${port}` };
    const services = await Promise.all([
      startService('order-service', env),
      startService('payment-service', env),
      startService('notification-service', env),
    ]);
    let late: RedisServer | undefined;
    try {
      for (const service of services) {
        expect((await fetch(`${service.url}/healthz`)).status, service.name).toBe(200);
        expect((await fetch(`${service.url}/readyz`)).status, service.name).toBe(503);
      }
      const began = Date.now();
      // Its XADD waits in the client's queue and may still go out if Redis is back within the
      // reconnect delay: a 503 means "not known to be placed". Another user keeps it apart.
      const refused = await fetch(`${services[0].url}/orders`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ userId: 'gina-refused', productId: 'p', price: 3 }),
      });
      expect(refused.status).toBe(503);
      expect(await refused.json()).toEqual({ error: expect.any(String) });
      expect(Date.now() - began).toBeLessThan(5_000);

      late = await startRedisServer({ port });

      for (const service of services) {
        await waitFor(async () => (await fetch(`${service.url}/readyz`)).status === 200, {
          what: `${service.name} ready`,
          timeoutMs: 15_000,
        });
      }
      const response = await fetch(`${services[0].url}/orders`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ userId: 'gina', productId: 'p', price: 3 }),
      });
      expect(response.status).toBe(202);
      const { orderId } = (await response.json()) as { orderId: string };
      const local = new Redis(late.url);
      try {
        await waitFor(
          async () =>
            (await entryFields(local, 'payment-events')).some((entry) => entry.orderId === orderId) &&
            (await local.lrange('notification-service:sent:gina', 0, -1)).filter((item) =>
              item.includes(orderId),
            ).length === 2,
          { what: 'payment and notifications after recovery', timeoutMs: 15_000 },
        );
      } finally {
        local.disconnect();
      }
    } finally {
      await Promise.all(services.map((service) => service.stop()));
      await late?.stop();
    }
  });
});

describe('each service', () => {
  it('refuses to start on a bad environment variable, naming it', async () => {
    const child = spawnService('payment-service', { REDIS_URL: 'http://nope', PORT: 'eighty' });
    let stderr = '';
    child.stderr!.on('data', (chunk) => (stderr += chunk));

    const code = await exitOf(child);

    expect(code).toBe(1);
    expect(stderr).toMatch(/PORT/);
    expect(stderr).toMatch(/REDIS_URL/);
  });

  it('stops with exit code 0 on SIGTERM while keep-alive clients keep sending orders, losing none it accepted', async () => {
    const accepted: string[] = [];
    let sending = true;
    const client = async () => {
      while (sending) {
        try {
          const response = await fetch(`${order.url}/orders`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ userId: 'hana', productId: 'p', price: 1 }),
          });
          if (response.status === 202)
            accepted.push(((await response.json()) as { orderId: string }).orderId);
          else await response.body?.cancel();
        } catch {
          return; // the service has stopped accepting connections
        }
      }
    };
    const clients = Array.from({ length: 8 }, client);
    await waitFor(() => accepted.length >= 50, { what: 'orders flowing' });

    const began = Date.now();
    const code = await order.stop();
    sending = false;
    await Promise.all(clients);

    expect(code).toBe(0);
    expect(Date.now() - began).toBeLessThan(10_000);
    const published = new Set((await entryFields(redis, 'order-events')).map((fields) => fields.orderId));
    expect(accepted.filter((orderId) => !published.has(orderId))).toEqual([]);
  });

  it('stops with exit code 0 on SIGTERM even while Redis is down, without waiting for it', async () => {
    redis.disconnect();
    await redisServer.stop();
    await new Promise((resolve) => setTimeout(resolve, 500));

    const began = Date.now();
    const codes = await Promise.all([payment, notification].map((service) => service.stop()));

    expect(codes).toEqual([0, 0]);
    expect(Date.now() - began).toBeLessThan(10_000);
  });
});
