import type { Redis } from 'ioredis';
import { pino } from 'pino';
import { redisOrders } from '../src/orders.ts';
import { readModel } from '../src/read-model.ts';

/** The read model on `redis`, as main.ts makes it, for the tests that build the app. */
export const ordersOn = (redis: Redis) =>
  redisOrders({
    redis,
    logger: pino({ level: 'silent' }),
    paymentTimeoutMs: 30_000,
    model: readModel(1),
  });
