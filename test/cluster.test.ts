import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Cluster } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { startRedisCluster, type RedisCluster } from '../harness/redis-cluster.ts';
import { startBoard, startService, type RunningBoard, type RunningService } from '../harness/services.ts';
import { fieldsFromReply } from '../harness/streams.ts';
import { waitFor } from '../harness/wait.ts';
import { consumersOf } from '../services.ts';

type Overview = { redisUp: boolean; streams: { name: string; groups: { name: string }[] }[] };

/*
 * The three services, the board and `pnpm dlq` as real processes with REDIS_CLUSTER=true, against
 * a real Redis Cluster of three masters (each with a replica) that this file starts: the whole
 * flow, the saga's decline and timeout, dead letters and their replay. Every script runs in one
 * hash slot or Redis refuses it (CROSSSLOT), so a script that touched two would fail here.
 */

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** Short enough for a test to wait out, long enough that a running payment-service always comes first. */
const PAYMENT_TIMEOUT_MS = 4_000;

let cluster: RedisCluster;
let redis: Cluster;
let env: { REDIS_URL: string; REDIS_CLUSTER: string };
let order: RunningService;
let payment: RunningService;
let notification: RunningService;

beforeAll(async () => {
  cluster = await startRedisCluster({ masters: 3, replicas: 1 });
  redis = new Cluster([{ host: '127.0.0.1', port: cluster.nodes[0]!.port }]);
  env = { REDIS_URL: cluster.url, REDIS_CLUSTER: 'true' };
  [order, payment, notification] = await Promise.all([
    startService('order-service', { ...env, PAYMENT_TIMEOUT_MS: String(PAYMENT_TIMEOUT_MS) }),
    startService('payment-service', env),
    startService('notification-service', env),
  ]);
}, 60_000);

afterAll(async () => {
  await Promise.all([order, payment, notification].map((service) => service?.stop()));
  redis?.disconnect();
  await cluster?.stop();
});

afterEach(() => {
  onTestFailed(() => {
    for (const service of [order, payment, notification])
      console.error(`--- ${service?.name} output ---\n${service?.output()}`);
  });
});

async function placeOrder(body: object) {
  const response = await fetch(`${order.url}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  expect(response.status).toBe(202);
  return ((await response.json()) as { orderId: string }).orderId;
}

/** Each entry's fields, and its ID as `id`. */
async function entriesOf(stream: string): Promise<Record<string, string>[]> {
  return (await redis.xrange(stream, '-', '+')).map(([id, flat]) => ({ id, ...fieldsFromReply(flat) }));
}

async function eventsFor(orderId: string) {
  return (await entriesOf('payment-events')).filter((entry) => entry.orderId === orderId);
}

async function orderOf(orderId: string) {
  const response = await fetch(`${order.url}/orders/${orderId}`);
  return response.status === 200
    ? ((await response.json()) as { status: string; reason?: string })
    : undefined;
}

function untilStatus(orderId: string, status: string, timeoutMs = 15_000) {
  return waitFor(async () => (await orderOf(orderId))?.status === status && orderOf(orderId), {
    timeoutMs,
    what: `order ${orderId} ${status}`,
  });
}

type Sent = { channel: string; event: string; orderId: string };

async function notificationsOf(userId: string): Promise<Sent[]> {
  const response = await fetch(`${notification.url}/notifications?userId=${userId}`);
  expect(response.status).toBe(200);
  return ((await response.json()) as { notifications: Sent[] }).notifications;
}

function untilNotified(userId: string, orderId: string, count: number) {
  return waitFor(
    async () => {
      const sent = (await notificationsOf(userId)).filter((n) => n.orderId === orderId);
      return sent.length >= count && sent;
    },
    { timeoutMs: 15_000, what: `${count} notifications for order ${orderId}` },
  );
}

describe('on a Redis Cluster (REDIS_CLUSTER=true)', () => {
  it('spreads the streams and their dead letters over the masters, where the services read them', async () => {
    // Not a promise of the system, a check of the test: its keys do land on several masters.
    const masters = new Set(
      await Promise.all(
        ['order-events', 'payment-events', 'order-events:dlq', 'payment-events:dlq'].map((key) =>
          cluster.masterOf(key),
        ),
      ),
    );
    expect(masters.size).toBeGreaterThan(1);
  });

  it('pays an order placed over HTTP once, notifies it by mail and SMS, and shows it PAID', async () => {
    const orderId = await placeOrder({ userId: 'alice', productId: 'book-1', price: 1000 });

    await untilStatus(orderId, 'PAID');
    const sent = await untilNotified('alice', orderId, 2);
    expect(sent.map((n) => `${n.channel} ${n.event}`).sort()).toEqual([
      'mail order-created',
      'sms payment-completed',
    ]);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect((await eventsFor(orderId)).map((e) => e.type)).toEqual(['payment-completed']);
    // Each record lives in its stream's slot, with the hash tag of the stream's name.
    expect(await redis.hget(`payment-service:payment:{payment-events}:${orderId}`, 'state')).toBe('charged');
    expect(await redis.hget(`order-service:order:{order-events}:${orderId}`, 'status')).toBe('PAID');
  });

  it('declines an order above the limit and cancels it: payment-failed, CANCELLED (payment-declined), nothing charged', async () => {
    const orderId = await placeOrder({ userId: 'bob', productId: 'yacht', price: 5_000_000 });

    const cancelled = await untilStatus(orderId, 'CANCELLED');
    expect(cancelled).toMatchObject({ reason: 'payment-declined' });
    expect((await eventsFor(orderId)).map((e) => e.type)).toEqual(['payment-failed']);
    // The order's mail, the decline's SMS, and the cancellation's mail.
    const sent = await untilNotified('bob', orderId, 3);
    expect(sent.map((n) => `${n.channel} ${n.event}`).sort()).toEqual([
      'mail order-cancelled',
      'mail order-created',
      'sms payment-failed',
    ]);
  });

  it('cancels an order unpaid at its timeout, and never keeps a charge for it once payment-service is back', async () => {
    expect(await payment.stop()).toBe(0);
    const orderId = await placeOrder({ userId: 'carol', productId: 'late', price: 10 });

    const cancelled = await untilStatus(orderId, 'CANCELLED', PAYMENT_TIMEOUT_MS + 15_000);
    expect(cancelled).toMatchObject({ reason: 'payment-timeout' });
    payment = await startService('payment-service', env);

    // Either order of arrival: charged then refunded, or never charged.
    const record = await waitFor(
      async () => {
        const state = await redis.hget(`payment-service:payment:{payment-events}:${orderId}`, 'state');
        return (state === 'refunded' || state === 'cancelled') && state;
      },
      { timeoutMs: 15_000, what: 'the payment refunded or never charged' },
    );
    const types = (await eventsFor(orderId)).map((e) => e.type);
    expect(types).toEqual(record === 'refunded' ? ['payment-completed', 'payment-refunded'] : []);
    expect(await orderOf(orderId)).toMatchObject({ status: 'CANCELLED', reason: 'payment-timeout' });
  });

  it('dead-letters a malformed entry once per group, and `pnpm dlq replay` puts a fixed one back once, to be paid', async () => {
    const groups = consumersOf('order-events')
      .map(({ group }) => group)
      .sort();
    const poison = (await redis.xadd(
      'order-events',
      '*',
      'userId',
      'dan',
      'productId',
      'p',
      'price',
      'free',
    ))!;
    const letters = await waitFor(
      async () => {
        const mine = (await entriesOf('order-events:dlq')).filter((l) => l['dlq:id'] === poison);
        return mine.length === groups.length && mine;
      },
      { timeoutMs: 15_000, what: 'a dead letter per group' },
    );
    expect(letters.map((l) => l['dlq:group']).sort()).toEqual(groups);
    expect(letters[0]!['dlq:reason']).toMatch(/price/);
    // Every group acked it: nothing of it is left pending.
    for (const group of groups) {
      const pending = (await redis.xpending('order-events', group, '-', '+', 100)) as [string][];
      expect(pending.map(([id]) => id)).not.toContain(poison);
    }

    // A dead letter whose cause is fixed (an operator's edit; here written as a group would):
    // replayed twice, by two operators, it goes back once.
    const fixedId = '7-0';
    const meta = (group: string) => [
      'dlq:id',
      fixedId,
      'dlq:stream',
      'order-events',
      'dlq:group',
      group,
      'dlq:reason',
      'r',
    ];
    const fixed = ['userId', 'erin', 'productId', 'p-7', 'price', '70'];
    for (const group of groups) await redis.xadd('order-events:dlq', '*', ...fixed, ...meta(group));
    const dlq = (...args: string[]) =>
      run(process.execPath, ['--import', 'tsx', 'scripts/dlq.ts', ...args], {
        cwd: ROOT,
        env: { ...process.env, ...env },
      });
    const [first, second] = await Promise.all([
      dlq('replay', 'order-events', '--all'),
      dlq('replay', 'order-events', '--all'),
    ]);

    expect(first.stdout + second.stdout).toMatch(/replayed as order-events/);
    const putBack = (await entriesOf('order-events')).filter((e) => e.orderId === fixedId);
    expect(putBack).toHaveLength(1);
    await untilStatus(fixedId, 'PAID');
    expect((await eventsFor(fixedId)).map((e) => e.type)).toEqual(['payment-completed']);
    const left = (await entriesOf('order-events:dlq')).filter((l) => l['dlq:id'] === fixedId);
    expect(left).toEqual([]);
  });

  it("pages a user's notifications, kept in a log per stream's slot, one at a time, each once", async () => {
    const orderIds = [];
    for (let i = 0; i < 3; i += 1)
      orderIds.push(await placeOrder({ userId: 'fay', productId: `p${i}`, price: 5 }));
    for (const orderId of orderIds) await untilNotified('fay', orderId, 2);

    const paged: Sent[] = [];
    let cursor: string | null = null;
    do {
      const query = new URLSearchParams({ userId: 'fay', limit: '1', ...(cursor ? { cursor } : {}) });
      const response = await fetch(`${notification.url}/notifications?${query}`);
      expect(response.status).toBe(200);
      const page = (await response.json()) as { notifications: Sent[]; nextCursor: string | null };
      paged.push(...page.notifications);
      cursor = page.nextCursor;
    } while (cursor !== null && paged.length < 20);

    // Mail from order-events' slot, SMS from payment-events': both logs, every notification once.
    expect(paged.map((n) => `${n.channel} ${n.orderId}`).sort()).toEqual(
      orderIds.flatMap((id) => [`mail ${id}`, `sms ${id}`]).sort(),
    );
    expect(await redis.llen('notification-service:sent:{order-events}:fay')).toBe(3);
    expect(await redis.llen('notification-service:sent:{payment-events}:fay')).toBe(3);
  });

  it('shows the groups on the board, read through the cluster', async () => {
    let board: RunningBoard | undefined;
    try {
      board = await startBoard({ ...env, ORDER_SERVICE_URL: order.url, BOARD_METRICS: '' });
      const overview = await waitFor(
        async () => {
          const response = await fetch(`${board!.url}/api/overview`);
          if (response.status !== 200) return false;
          const read = (await response.json()) as Overview;
          return read.redisUp && read.streams.length > 0 && read;
        },
        { timeoutMs: 15_000, what: 'the board overview' },
      );
      const groups = overview.streams.flatMap((s) => s.groups.map((g) => `${s.name} ${g.name}`)).sort();
      expect(groups).toEqual(
        ['order-events', 'payment-events']
          .flatMap((stream) => consumersOf(stream).map(({ group }) => `${stream} ${group}`))
          .sort(),
      );
    } finally {
      await board?.stop();
    }
  });
});
