import { OrderEvents, PaymentEvents } from '@msa/stream-kit/events';
import { xaddArguments } from '@msa/stream-kit/lua';
import { Redis } from 'ioredis';
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { groupOf, startService, type RunningService } from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';

/*
 * A dead consumer's entries, at the shipped settings (CLAIM_IDLE_MS 60 s): two payment-service
 * instances share a burst of orders; one is SIGKILLed, or paused with SIGSTOP, while it holds
 * entries. Its liveness mark lapses within seconds, and the other takes its entries then, not
 * after the claim idle time; a paused one, resumed, lets go. Every order is paid once.
 */

const GROUP = groupOf('payment-service');
/** Orders in the burst: more than the two instances can take at one read, so both hold many. */
const BURST = 3_000;

let server: RedisServer;
let admin: Redis;
const started: RunningService[] = [];

beforeAll(async () => {
  server = await startRedisServer();
  admin = new Redis(server.url);
});
afterEach(async () => {
  await Promise.all(started.splice(0).map((service) => service.stop(5_000)));
  await admin.flushall();
});
afterAll(async () => {
  admin.disconnect();
  await server.stop();
});

async function instance(consumer: string): Promise<RunningService> {
  const service = await startService('payment-service', { REDIS_URL: server.url, CONSUMER_NAME: consumer });
  started.push(service);
  return service;
}

/** Adds `count` orders to order-events in one pipeline; resolves to their order IDs. */
async function burst(count: number): Promise<string[]> {
  const orderIds = Array.from({ length: count }, () => randomUUID());
  const pipeline = admin.pipeline();
  for (const orderId of orderIds) {
    const event = { type: 'order-created' as const, orderId, userId: 'u1', productId: 'p1', price: 1000 };
    pipeline.xadd(OrderEvents.name, ...xaddArguments(OrderEvents, event));
  }
  await pipeline.exec();
  return orderIds;
}

/** The entry IDs `consumer` holds (its pending entries). */
async function heldBy(consumer: string): Promise<string[]> {
  const rows = (await admin.xpending(OrderEvents.name, GROUP, '-', '+', 10_000, consumer)) as [string][];
  return rows.map(([id]) => id);
}

/** Payments per order ID, read from payment-events. */
async function paymentsPerOrder(): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const [, fields] of await admin.xrange(PaymentEvents.name, '-', '+')) {
    const orderId = fields[fields.indexOf('orderId') + 1]!;
    counts.set(orderId, (counts.get(orderId) ?? 0) + 1);
  }
  return counts;
}

/** Waits until `consumer` holds entries of the burst, and resolves to them. */
async function holding(consumer: string): Promise<string[]> {
  let held: string[] = [];
  await waitFor(async () => (held = await heldBy(consumer)).length > 0, {
    intervalMs: 2,
    timeoutMs: 30_000,
    what: `${consumer} to hold entries`,
  });
  return held;
}

/** Waits until none of `ids` is pending any more (handled and acked by someone); resolves to when. */
async function handled(ids: string[], timeoutMs: number): Promise<number> {
  await waitFor(
    async () => {
      const pending = (await admin.xpending(OrderEvents.name, GROUP, '-', '+', 10_000)) as [string][];
      const still = new Set(pending.map(([id]) => id));
      return ids.every((id) => !still.has(id));
    },
    { intervalMs: 50, timeoutMs, what: 'the entries to be handled' },
  );
  return Date.now();
}

describe('a payment-service instance that dies or stalls while it holds entries, at the shipped CLAIM_IDLE_MS (60 s)', () => {
  it('SIGKILLed: the other instance handles its entries within seconds of the kill, not after the claim idle time, and every order is paid once', async () => {
    const [doomed] = await Promise.all([instance('pay-doomed'), instance('pay-live')]);
    const orderIds = await burst(BURST);
    const held = await holding('pay-doomed');
    doomed.process.kill('SIGKILL');
    const killedAt = Date.now();

    // Half the claim idle time: without liveness marks they would wait all of it.
    const doneAt = await handled(held, 30_000);

    console.log(
      `${held.length} entries of the SIGKILLed instance handled ${doneAt - killedAt} ms after the kill`,
    );
    await waitFor(async () => (await admin.xlen(PaymentEvents.name)) >= BURST, { timeoutMs: 30_000 });
    const payments = await paymentsPerOrder();
    expect(orderIds.filter((id) => payments.get(id) !== 1)).toEqual([]);
    expect(payments.size).toBe(BURST);
  }, 90_000);

  it('paused with SIGSTOP: the other takes its entries; resumed, it lets go of them, and every order is paid once', async () => {
    const [paused, live] = await Promise.all([instance('pay-paused'), instance('pay-live')]);
    const orderIds = await burst(BURST);
    await holding('pay-paused');
    paused.process.kill('SIGSTOP');

    // Taken from it while it cannot answer: its mark lapsed.
    await waitFor(async () => (await heldBy('pay-paused')).length === 0, {
      timeoutMs: 30_000,
      what: 'the live instance to take the paused one’s entries',
    });
    await waitFor(async () => (await admin.xlen(PaymentEvents.name)) >= BURST, { timeoutMs: 30_000 });
    paused.process.kill('SIGCONT');

    // Resumed: it notices the gap and goes on with what is still its own, which is nothing.
    await waitFor(() => paused.output().includes('liveness mark lapsed'), {
      timeoutMs: 10_000,
      what: 'the resumed instance to notice its gap',
    });
    await burst(10);
    await waitFor(async () => (await admin.xlen(PaymentEvents.name)) >= BURST + 10, { timeoutMs: 30_000 });
    const [pending] = (await admin.xpending(OrderEvents.name, GROUP)) as [number];
    expect(pending).toBe(0);
    const payments = await paymentsPerOrder();
    expect(orderIds.filter((id) => payments.get(id) !== 1)).toEqual([]);
    expect(payments.size).toBe(BURST + 10);
    expect(live.output()).toContain('took over the entries of consumers that died');
  }, 120_000);
});
