/**
 * Hop 1 of the bare chain (chain.ts): `POST /orders` → XADD `order-events`, with plain ioredis and
 * none of order-service's guarantees (no validation, no idempotency keys, no logs, no retries
 * bounded for the request path, no readiness). Express 5 with the same JSON parser and limit as
 * order-service, so that the chain rows compare the guarantees, not the framework. Listens on
 * `PORT`, writes to `REDIS_URL`; SIGTERM ends it at once.
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
