/**
 * Hop 1 of the bare chain (chain.ts): `POST /orders` → XADD `order-events`, with plain ioredis and
 * none of order-service's guarantees (no validation, no idempotency keys, no logs, no retries
 * bounded for the request path, no readiness). Express 5 with the same JSON parser and limit as
 * order-service, so that the chain rows compare the guarantees, not the framework. And the same
 * read model's work, bare: it reads `order-events` and `payment-events` in group
 * `order-service-group` and, per entry, writes the order's hash (its fields and `PENDING`, then
 * `PAID`), then XACKs each stream's batch, in one pipeline; no versions, history, checked moves or
 * timeouts. Listens on `PORT`, writes to `REDIS_URL`; SIGTERM ends it at once.
 */
import { randomUUID } from 'node:crypto';
import express from 'express';
import { Redis } from 'ioredis';

interface OrderBody {
  userId: string;
  productId: string;
  price: number;
}

const redis = new Redis(process.env.REDIS_URL!);
const app = express();
app.disable('x-powered-by');
app.post('/orders', express.json({ limit: '16kb' }), async (req, res) => {
  const { userId, productId, price } = req.body as OrderBody;
  const orderId = randomUUID();
  // The fields of order-service's `order-created` entry, in its order (a UUID orderId, the price as digits).
  // prettier-ignore
  await redis.xadd('order-events', '*', 'type', 'order-created', 'orderId', orderId, 'userId', userId, 'productId', productId, 'price', String(price));
  res.status(202).json({ orderId });
});
app.listen(Number(process.env.PORT), (err) => {
  if (err) throw err;
});

// The read model, bare. The groups are made by chain.ts before this starts.
const projection = new Redis(process.env.REDIS_URL!);
for (;;) {
  // prettier-ignore
  const reply = (await projection.xreadgroup(
    'GROUP', 'order-service-group', `bare-${process.pid}`, 'COUNT', 500, 'BLOCK', 1_000,
    'STREAMS', 'order-events', 'payment-events', '>', '>',
  )) as [string, [string, string[]][]][] | null;
  if (!reply) continue;
  const pipeline = projection.pipeline();
  for (const [stream, entries] of reply) {
    if (entries.length === 0) continue;
    for (const [, fields] of entries) {
      const field = (name: string) => fields[fields.indexOf(name) + 1]!;
      const key = `order-service:order:${field('orderId')}`;
      // prettier-ignore
      if (stream === 'order-events')
        pipeline.hset(key, 'orderId', field('orderId'), 'userId', field('userId'), 'productId', field('productId'),
          'price', field('price'), 'status', 'PENDING');
      else pipeline.hset(key, 'status', 'PAID');
    }
    pipeline.xack(stream, 'order-service-group', ...entries.map(([id]) => id));
  }
  await pipeline.exec();
}
