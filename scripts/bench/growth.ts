/**
 * Section 6: cost as work grows. Consume throughput with 1k, 100k and 1M entries already in the
 * stream (handled earlier: the group starts after them), and the consumer's heap as it handles
 * a million entries. Neither may grow with the stream.
 */
import v8 from 'node:v8';
import vm from 'node:vm';
import { Redis } from 'ioredis';
import { subscribe } from '@msa/stream-kit';
import { OrderEvents } from '@msa/stream-kit/events';
import type { RedisServer } from '../../harness/redis-server.ts';
import { consumeAll, countdown, fillOrders, fresh, median, type BenchOptions, type Row } from './support.ts';

const SECTION = '6. cost as work grows';

/** A stream holding `before` entries that its group `g` has passed already. */
async function streamWith(redis: Redis, before: number) {
  const stream = { ...OrderEvents, name: fresh(`growth-${before}`), retention: 'keep-all' as const };
  await fillOrders(redis, stream.name, before);
  await redis.xgroup('CREATE', stream.name, 'g', '$', 'MKSTREAM');
  return stream;
}

/** stream-kit's rate of consuming `count` new entries of `stream` (count 500, no-op handler). */
async function consumeNew(redis: Redis, url: string, stream: typeof OrderEvents, count: number) {
  await fillOrders(redis, stream.name, count);
  return consumeAll(redis, stream, count, { connection: url, count: 500 });
}

/** The heap in MB after a full collection, so that only what is still referenced counts. */
function heapAfterGc(): number {
  v8.setFlagsFromString('--expose-gc');
  (vm.runInNewContext('gc') as () => void)();
  return process.memoryUsage().heapUsed / 2 ** 20;
}

/** One subscription handles `total` entries; the heap is read a tenth of the way in and at the end. */
async function heapOverRun(redis: Redis, url: string, total: number) {
  const stream = { ...OrderEvents, name: fresh('growth-heap'), retention: 'keep-all' as const };
  await redis.xgroup('CREATE', stream.name, 'g', '$', 'MKSTREAM');
  await fillOrders(redis, stream.name, total);
  const tenth = countdown(total / 10);
  const all = countdown(total);
  const subscription = subscribe(
    'g',
    'c',
    stream,
    () => {
      tenth.count();
      all.count();
    },
    // The default count: ten times the loop steps of a batch of 100, each of which must leave nothing behind.
    { connection: url, blockMs: 1_000 },
  );
  try {
    await tenth.done;
    const early = heapAfterGc();
    await all.done;
    return { early, late: heapAfterGc() };
  } finally {
    await subscription.close();
    await redis.del(stream.name);
  }
}

export async function growthRows(server: RedisServer, options: BenchOptions): Promise<Row[]> {
  const redis = new Redis(server.url);
  const count = options.quick ? 10_000 : 50_000;
  const sizes = options.quick ? [1_000, 100_000] : [1_000, 100_000, 1_000_000];
  const label = (size: number) =>
    `consume ${count.toLocaleString('en')} with ${size.toLocaleString('en')} before`;
  try {
    const streams = await Promise.all(sizes.map((size) => streamWith(redis, size)));
    // Unmeasured: V8 compiles the consumer's hot paths on its first runs. Then the sizes take
    // turns, so that a busy neighbour spoils a turn of each rather than one size.
    await consumeNew(redis, server.url, streams[0]!, count);
    const rates: number[][] = sizes.map(() => []);
    for (let turn = 0; turn < (options.quick ? 2 : 3); turn += 1) {
      for (const [i, stream] of streams.entries())
        rates[i]!.push(await consumeNew(redis, server.url, stream, count));
    }
    await redis.del(...streams.map((stream) => stream.name));
    const rows: Row[] = sizes.map((size, i) => ({
      section: SECTION,
      name: label(size),
      value: median(rates[i]!),
      unit: 'per second',
      ...(i === 0 ? {} : { vs: [{ baseline: label(sizes[0]!), target: 0.8 }] }),
    }));
    const total = options.quick ? 100_000 : 1_000_000;
    const heap = await heapOverRun(redis, server.url, total);
    const early = `consumer heap after ${(total / 10).toLocaleString('en')} entries`;
    rows.push(
      {
        section: SECTION,
        name: early,
        value: heap.early,
        unit: 'MB',
        note: 'whole bench process, after a GC',
      },
      {
        section: SECTION,
        name: `consumer heap after ${total.toLocaleString('en')} entries`,
        value: heap.late,
        unit: 'MB',
        vs: [{ baseline: early, target: 1.1 }],
      },
    );
    return rows;
  } finally {
    redis.disconnect();
  }
}
