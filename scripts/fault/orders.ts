import { randomUUID } from 'node:crypto';

/** Options of `placeOrders`. */
export interface OrderFlowOptions {
  /** Orders to place; `Infinity` places orders until `stop()`. */
  count: number;
  /** Requests in flight at once. @defaultValue 16 */
  concurrency?: number;
  /** How many users the orders are spread over, named `${userPrefix}-<n>`. @defaultValue 50 */
  users?: number;
  /** @defaultValue 'fault' */
  userPrefix?: string;
  /**
   * How many orders may have been started so far, asked before each: the fault run holds orders
   * back until its next Redis trouble has started. @defaultValue no limit
   */
  limit?: () => number;
  /** An order still not accepted this long after its first request fails the flow. @defaultValue 120000 */
  giveUpAfterMs?: number;
  /**
   * Every this many orders, one is priced above payment-service's default `PAYMENT_LIMIT`
   * (1,000,000): it is declined and cancelled. @defaultValue none
   */
  overLimitEvery?: number;
}

/** Orders being placed over HTTP, as `placeOrders` returns them. */
export interface OrderFlow {
  /** The `orderId` of each order answered with 202. */
  readonly accepted: Set<string>;
  /** Orders started so far (sent at least once). */
  readonly started: number;
  /** Requests answered with something other than 202 (or not at all) and sent again with the same key. */
  readonly retried: number;
  /** The users the orders go to (their sent-notification lists hold the mails and SMS). */
  readonly userIds: string[];
  /** Resolves once every order started was accepted; rejects if one was given up on. */
  readonly done: Promise<void>;
  /** Starts no more orders; those under way are still sent until accepted. Safe to call twice. */
  stop(): void;
}

/**
 * Places orders on order-service at `url`, `concurrency` at a time. Each has its own
 * Idempotency-Key and is sent again with it until it gets a 202 (after a 503, a timeout, a
 * dropped connection), as a careful client does: so no order is placed twice, and none is given
 * up on while Redis is in trouble.
 */
export function placeOrders(url: string, options: OrderFlowOptions): OrderFlow {
  const { count, concurrency = 16, users = 50, userPrefix = 'fault', giveUpAfterMs = 120_000 } = options;
  const accepted = new Set<string>();
  let retried = 0;
  let next = 0;
  let stopped = false;
  const mayStart = () => !stopped && next < count;

  async function worker() {
    for (;;) {
      while (mayStart() && options.limit && next >= options.limit()) await sleep(20);
      if (!mayStart()) return;
      const n = next++;
      const key = randomUUID();
      const body = JSON.stringify({
        userId: `${userPrefix}-${n % users}`,
        productId: `p-${n}`,
        price: options.overLimitEvery && n % options.overLimitEvery === 0 ? 2_000_000 : 10 + (n % 90),
      });
      const firstTry = Date.now();
      for (let attempt = 1; ; attempt += 1) {
        const response = await fetch(`${url}/orders`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'idempotency-key': key },
          body,
          signal: AbortSignal.timeout(10_000),
        }).catch(() => undefined);
        if (response?.status === 202) {
          accepted.add(((await response.json()) as { orderId: string }).orderId);
          break;
        }
        await response?.body?.cancel();
        retried += 1;
        if (Date.now() - firstTry > giveUpAfterMs)
          throw new Error(`order ${n} not accepted after ${attempt} attempts in ${giveUpAfterMs} ms`);
        await sleep(50 * Math.min(attempt, 10));
      }
    }
  }

  const done = Promise.all(Array.from({ length: concurrency }, worker)).then(() => {});
  return {
    accepted,
    get started() {
      return next;
    },
    get retried() {
      return retried;
    },
    userIds: Array.from({ length: users }, (_, n) => `${userPrefix}-${n}`),
    done,
    stop() {
      stopped = true;
    },
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
