/* What every `pnpm bench` module shares: the row it reports, and small timing helpers. */
import type { Redis } from 'ioredis';
import { subscribe, type SubscribeOptions } from '@msa/stream-kit';
import type { OrderCreated, OrderEvents } from '@msa/stream-kit/events';

/** What a row's figure measures; it decides which way is better. */
export type Unit = 'per second' | 'ms' | 'MB';

/** One line of the table. */
export interface Row {
  /** The table's section, e.g. `1. publish`. */
  section: string;
  name: string;
  /** The figure: a rate, a latency (the p99 of `percentiles` when given), a size. */
  value: number;
  unit: Unit;
  /** Latency rows: p50, p99 and p99.9 in ms, as the chart draws them. */
  percentiles?: Percentiles;
  /** The rows this one is compared with, all measured in the same run. */
  vs?: Comparison[];
  /** A word on what the figure means, printed beside it. */
  note?: string;
}

export interface Comparison {
  /** The `name` of the other row. */
  baseline: string;
  /**
   * The ratio `value / baseline.value` the issue asks for: at least this for rates, at most this
   * for latencies and sizes.
   */
  target?: number;
}

export interface Percentiles {
  p50: number;
  p99: number;
  p999: number;
}

/** The nearest-rank percentiles of `samples` (ms). */
export function percentiles(samples: readonly number[]): Percentiles {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)] ?? NaN;
  return { p50: at(0.5), p99: at(0.99), p999: at(0.999) };
}

/** `--quick`: every module sizes its work so that the whole run takes under a minute. */
export interface BenchOptions {
  quick: boolean;
}

export const order = (n: number): OrderCreated => ({
  type: 'order-created',
  orderId: `order-${n}`,
  userId: `user-${n % 100}`,
  productId: 'product-1',
  price: 1000,
});

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

/** Resolves `done` once `count()` has been called `n` times. */
export function countdown(n: number) {
  let left = n;
  let done!: () => void;
  const finished = new Promise<void>((resolve) => (done = resolve));
  return {
    count() {
      left -= 1;
      if (left === 0) done();
    },
    done: finished,
  };
}

/** Runs `work` and answers `count` per second of it. */
export async function timed(count: number, work: () => Promise<void>): Promise<number> {
  const began = process.hrtime.bigint();
  await work();
  const seconds = Number(process.hrtime.bigint() - began) / 1e9;
  return count / seconds;
}

/** Milliseconds since an arbitrary origin, with sub-ms precision. */
export const now = () => Number(process.hrtime.bigint()) / 1e6;

let streams = 0;
/** A fresh stream name per row, so rows never see each other's entries. */
export const fresh = (what: string) => `bench:${what}:${(streams += 1)}`;

/** Appends `count` orders inside Redis, 10,000 per script call: a million in seconds. */
const FILL = `
for i = 1, tonumber(ARGV[1]) do
  redis.call('XADD', KEYS[1], '*', 'type', 'order-created', 'orderId', ARGV[2] .. ':' .. (ARGV[3] + i),
    'userId', 'u', 'productId', 'p', 'price', '1000')
end
`;

/**
 * Appends `count` orders to `stream`, as the consume rows find them; `tag` keeps their IDs unique
 * (payment-service pays an order ID once).
 */
export async function fillOrders(redis: Redis, stream: string, count: number, tag = fresh('orders')) {
  for (let done = 0; done < count; done += 10_000) {
    await redis.eval(FILL, 1, stream, Math.min(10_000, count - done), tag, done);
  }
}

/**
 * stream-kit's rate of consuming `count` entries waiting in `stream` for group `g` with a no-op
 * handler, until every one is acked (the close() at the end sends and awaits the last XACK).
 * Throws if any is left pending.
 */
export async function consumeAll(
  redis: Redis,
  stream: typeof OrderEvents,
  count: number,
  options: Omit<SubscribeOptions, 'blockMs'>,
): Promise<number> {
  const all = countdown(count);
  const rate = await timed(count, async () => {
    const subscription = subscribe('g', 'c', stream, () => all.count(), { ...options, blockMs: 1_000 });
    await all.done;
    await subscription.close();
  });
  const [pending] = (await redis.xpending(stream.name, 'g')) as [number];
  if (pending !== 0) throw new Error(`${pending} entries of ${stream.name} left pending`);
  return rate;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Calls `send(n)` for n = 0, 1, … at `rate` a second for `seconds`, never waiting for an earlier
 * send to finish: each tick sends all that are due by then, so a late tick catches up in a burst.
 * Resolves to the rate achieved, under `rate` when this process could not keep up.
 */
export async function offer(rate: number, seconds: number, send: (n: number) => void): Promise<number> {
  const total = Math.round(rate * seconds);
  const began = now();
  for (let sent = 0; sent < total;) {
    const due = Math.min(total, Math.floor(((now() - began) * rate) / 1_000) + 1);
    while (sent < due) send(sent++);
    // A 1 ms timer, not a busy loop: the services and Redis need the other core.
    if (sent < total) await sleep(1);
  }
  return total / Math.max(seconds, (now() - began) / 1_000);
}
