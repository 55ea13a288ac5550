import { PaymentEvents } from '@msa/stream-kit/events';
import type { RedisClient } from '@msa/stream-kit';
import type { Logger } from 'pino';
import { handledUntilMs, horizonOf } from '@msa/stream-kit';
import type { Orders } from './orders.ts';
import type { ReadModel } from './read-model.ts';

/** The most orders one pass cancels; a pass with a full batch is followed by another at once. */
const BATCH = 100;

export interface PaymentTimeoutsOptions {
  redis: RedisClient;
  orders: Orders;
  logger: Logger;
  /** The generation whose due orders to cancel (the one `orders` writes). */
  model: ReadModel;
  /** The longest wait between two looks at the due orders, in ms. @defaultValue 1000 */
  maxWaitMs?: number;
}

export interface PaymentTimeouts {
  /** Stops looking; resolves once the pass under way is over. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * Cancels each order still pending when its payment is due (`model.paymentDue`, a sorted set of
 * due times that the read model keeps: an order goes in when placed and out when it is paid or
 * cancelled). Driven by due times: it reads only the orders due by now, on Redis's clock (the due
 * times come from entry IDs, which Redis stamps), and sleeps until the next one is due, at most
 * `maxWaitMs`. Every instance of order-service runs one; the cancellation is one script that
 * checks the order is still pending, so each order is cancelled once, by whichever gets there first.
 *
 * An order is cancelled only once the read model has applied every payment that came before it was
 * due: its group on `payment-events` has read past the due time and holds no entry from before it
 * pending. An order-service that was down, or lags behind, applies the payments waiting for it
 * first, and never cancels an order that was paid in time.
 */
export function startPaymentTimeouts({
  redis,
  orders,
  logger,
  model,
  maxWaitMs = 1_000,
}: PaymentTimeoutsOptions): PaymentTimeouts {
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  let wake: (() => void) | undefined;

  async function pass(): Promise<number> {
    const [seconds, micros] = await redis.time();
    const now = Number(seconds) * 1_000 + Math.floor(Number(micros) / 1_000);
    const until = handledUntilMs(await horizonOf(redis, PaymentEvents.name, model.group), now);
    const due = await redis.zrangebyscore(model.paymentDue, '-inf', Math.min(now, until), 'LIMIT', 0, BATCH);
    await Promise.all(due.map((orderId) => orders.timeOut(orderId)));
    if (due.length === BATCH) return 0;
    // Held back by the projection: look again soon, it is moving.
    if (until < now) return Math.min(maxWaitMs, 100);
    const [, next] = await redis.zrange(model.paymentDue, 0, 0, 'WITHSCORES');
    return next === undefined ? maxWaitMs : Math.min(maxWaitMs, Math.max(0, Number(next) - now));
  }

  const sleep = (ms: number) =>
    new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, ms);
    });

  const running = (async () => {
    let failures = 0;
    while (!closed) {
      let waitMs: number;
      try {
        waitMs = await pass();
        failures = 0;
      } catch (err) {
        // Redis away or refusing writes: the orders stay due, and the next pass cancels them.
        failures += 1;
        if (failures === 1 || failures % 30 === 0)
          logger.warn({ err, failures }, 'cannot cancel the orders whose payment is due; trying again');
        waitMs = maxWaitMs;
      }
      if (!closed) await sleep(waitMs);
    }
  })();

  return {
    async close() {
      closed = true;
      clearTimeout(timer);
      wake?.();
      await running;
    },
  };
}
