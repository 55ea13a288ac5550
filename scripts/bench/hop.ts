/**
 * Section 4, A: one hop through stream-kit beside a hand-written ioredis loop, in this process,
 * the two taking turns at the same offered rate.
 */
import { Redis } from 'ioredis';
import { createPublisher, subscribe } from '@msa/stream-kit';
import { OrderEvents } from '@msa/stream-kit/events';
import { fresh, now, offer, order, sleep } from './support.ts';

/** A producer and a consumer on one stream: `send(n)` appends order n; `seen(n, at)` reports its arrival. */
export interface HopPair {
  send(n: number): Promise<unknown>;
  close(): Promise<void>;
}
export type Seen = (n: number, at: number) => void;

const ORDER_PREFIX = 'order-'.length;

/** The loop people write by hand: XREADGROUP COUNT 500 BLOCK 1000, then one XACK per batch. */
export async function rawPair(url: string, seen: Seen): Promise<HopPair> {
  const stream = fresh('raw-hop');
  const producer = new Redis(url);
  const consumer = new Redis(url);
  await producer.xgroup('CREATE', stream, 'g', '$', 'MKSTREAM');
  let open = true;
  const reading = (async () => {
    while (open) {
      // prettier-ignore
      const reply = (await consumer.xreadgroup(
        'GROUP', 'g', 'c', 'COUNT', 500, 'BLOCK', 1_000, 'STREAMS', stream, '>',
      )) as [string, [string, string[]][]][] | null;
      const at = now();
      const entries = reply?.[0]?.[1] ?? [];
      for (const [, fields] of entries)
        seen(Number(fields[fields.indexOf('orderId') + 1]!.slice(ORDER_PREFIX)), at);
      if (entries.length > 0) await consumer.xack(stream, 'g', ...entries.map(([id]) => id));
    }
  })();
  return {
    send(n) {
      const { type, orderId, userId, productId, price } = order(n);
      // prettier-ignore
      return producer.xadd(stream, '*', 'type', type, 'orderId', orderId, 'userId', userId, 'productId', productId, 'price', String(price));
    },
    async close() {
      open = false;
      // Ends the blocked read now rather than when its BLOCK runs out.
      consumer.disconnect();
      await reading.catch(() => {});
      producer.disconnect();
    },
  };
}

/** stream-kit with its defaults: `publish()` on one side, a `subscribe()` handler on the other. */
export async function streamKitPair(url: string, seen: Seen): Promise<HopPair> {
  const stream = { ...OrderEvents, name: fresh('hop') };
  const publisher = createPublisher({ connection: url });
  const subscription = subscribe(
    'g',
    'c',
    stream,
    (event) => seen(Number(event.orderId.slice(ORDER_PREFIX)), now()),
    { connection: url },
  );
  return {
    send: (n) => publisher.publish(stream, order(n)),
    async close() {
      await subscription.close();
      await publisher.close();
    },
  };
}

/** Sends orders through one pair and keeps, per order, the ms from just before its send to its arrival. */
class HopMeter {
  private readonly sentAt: number[] = [];
  private readonly took: number[] = [];
  private arrived = 0;
  private failed: unknown;

  constructor(readonly pair: Promise<HopPair>) {}

  readonly seen: Seen = (n, at) => {
    const sentAt = this.sentAt[n];
    if (sentAt === undefined || this.took[n] !== undefined) return;
    this.took[n] = at - sentAt;
    this.arrived += 1;
  };

  /** Sends at `rate` for `seconds`, then waits for every order sent so far to arrive. */
  async round(rate: number, seconds: number) {
    const pair = await this.pair;
    const first = this.sentAt.length;
    await offer(rate, seconds, (i) => {
      this.sentAt[first + i] = now();
      pair.send(first + i).catch((err: unknown) => (this.failed ??= err));
    });
    const deadline = now() + 10_000;
    while (this.arrived < this.sentAt.length && !this.failed) {
      if (now() > deadline) throw new Error('latency: not every hop entry arrived within 10 s');
      await sleep(5);
    }
    if (this.failed) throw this.failed;
  }

  /** The latencies of the orders after the first `skip`. */
  samples(skip: number): number[] {
    return this.took.slice(skip);
  }
}

/**
 * The hop latencies of each pair, at `rate` for `seconds` each. The pairs take turns in short
 * rounds, after a warm-up round each (connections, JIT) that does not count: a noisy
 * neighbour on this shared machine then hits every pair alike, not the one that ran at the time.
 */
export async function hops(
  open: ((seen: Seen) => Promise<HopPair>)[],
  { rate, seconds, rounds, warmUp }: { rate: number; seconds: number; rounds: number; warmUp: number },
): Promise<number[][]> {
  const meters = open.map((pair) => {
    const meter: HopMeter = new HopMeter(pair((n, at) => meter.seen(n, at)));
    return meter;
  });
  try {
    for (const meter of meters) await meter.round(rate, warmUp);
    for (let round = 0; round < rounds; round += 1)
      for (const meter of meters) await meter.round(rate, seconds / rounds);
    return meters.map((meter) => meter.samples(Math.round(rate * warmUp)));
  } finally {
    const pairs = await Promise.allSettled(meters.map((meter) => meter.pair));
    await Promise.all(pairs.map((pair) => (pair.status === 'fulfilled' ? pair.value.close() : undefined)));
  }
}
