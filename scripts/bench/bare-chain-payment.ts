/**
 * Hop 2 of the bare chain (chain.ts): reads `order-events` in group `payment-service-group` and,
 * for each batch, XADDs one `payment-completed` entry per order and XACKs the batch, in one
 * pipeline. Plain ioredis, none of payment-service's guarantees (no schema check, no pay-once
 * record, no retries, dead letters or reclaim, no logs). The group is made by chain.ts before this
 * starts. Reads `REDIS_URL`; SIGTERM ends it at once.
 */
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';

const GROUP = 'payment-service-group';
const redis = new Redis(process.env.REDIS_URL!);

for (;;) {
  // The loop people write by hand, as in the latency rows' raw hop: COUNT 500 BLOCK 1000.
  // prettier-ignore
  const reply = (await redis.xreadgroup(
    'GROUP', GROUP, `bare-${process.pid}`, 'COUNT', 500, 'BLOCK', 1_000, 'STREAMS', 'order-events', '>',
  )) as [string, [string, string[]][]][] | null;
  const entries = reply?.[0]?.[1] ?? [];
  if (entries.length === 0) continue;
  const pipeline = redis.pipeline();
  for (const [, fields] of entries) {
    const field = (name: string) => fields[fields.indexOf(name) + 1]!;
    // The fields of payment-service's `payment-completed` entry, in its order.
    // prettier-ignore
    pipeline.xadd('payment-events', '*', 'type', 'payment-completed', 'orderId', field('orderId'),
      'userId', field('userId'), 'productId', field('productId'), 'price', field('price'),
      'paymentProcessId', randomUUID());
  }
  pipeline.xack('order-events', GROUP, ...entries.map(([id]) => id));
  await pipeline.exec();
}
