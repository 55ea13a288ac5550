/**
 * `pnpm bench [--quick]`: stream-kit's throughput beside baselines measured in the same run, on
 * the same private redis-server (these machines are shared and noisy: only ratios within one run
 * mean anything). Prints one table. Work in progress for the benchmark issue: publish and
 * consume rows, beside BullMQ, so far.
 */
import { execFile } from 'node:child_process';
import { cpus } from 'node:os';
import { promisify } from 'node:util';
import { parseArgs } from 'node:util';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { createPublisher, OrderEvents, subscribe, type EventOf } from '../packages/stream-kit/src/index.ts';
import { decode } from '../packages/stream-kit/src/stream.ts';
import { paymentHandler } from '../packages/payment-service/src/process-payment.ts';
import { openRequestConnection } from '../packages/stream-kit/src/connection.ts';
import { silentLogger } from '../packages/stream-kit/src/logger.ts';
import { startRedisServer } from './redis-server.ts';

const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false } } });
const N = values.quick ? 20_000 : 200_000;

interface Row {
  name: string;
  perSecond: number;
  /** The row this one is compared with. */
  baseline?: string;
}

const order = (n: number): EventOf<typeof OrderEvents> => ({
  type: 'order-created',
  orderId: `order-${n}`,
  userId: `user-${n % 100}`,
  productId: 'product-1',
  price: 1000,
});

/** Resolves `done` once `count()` has been called `n` times. */
function countdown(n: number) {
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

async function timed(count: number, work: () => Promise<void>): Promise<number> {
  const began = process.hrtime.bigint();
  await work();
  const seconds = Number(process.hrtime.bigint() - began) / 1e9;
  return count / seconds;
}

/** A fresh stream name per row, so rows never see each other's entries. */
let streams = 0;
const fresh = (what: string) => `bench:${what}:${(streams += 1)}`;

async function redisBenchmark(port: number): Promise<number> {
  const { stdout } = await promisify(execFile)('redis-benchmark', [
    '-p', String(port), '-n', String(N), '-P', '32', '-q',
    'XADD', fresh('redis-benchmark'), '*', 'type', 'order-created', 'orderId', 'o', 'userId', 'u', 'productId', 'p', 'price', '1000',
  ]); // prettier-ignore
  const match = /([\d.]+) requests per second/.exec(stdout.split('\r').at(-1) ?? stdout);
  if (!match) throw new Error(`cannot read redis-benchmark's output: ${stdout}`);
  return Number(match[1]);
}

async function rawPipelinedXadd(redis: Redis): Promise<number> {
  const stream = fresh('raw-xadd');
  return timed(N, async () => {
    for (let start = 0; start < N; start += 500) {
      const pipeline = redis.pipeline();
      for (let n = start; n < Math.min(start + 500, N); n += 1) {
        const { type, orderId, userId, productId, price } = order(n);
        // prettier-ignore
        pipeline.xadd(stream, '*', 'type', type, 'orderId', orderId, 'userId', userId, 'productId', productId, 'price', String(price));
      }
      await pipeline.exec();
    }
  });
}

async function publishOneByOne(url: string): Promise<number> {
  const publisher = createPublisher({ connection: url });
  const stream = { ...OrderEvents, name: fresh('publish') };
  const count = Math.min(N, 20_000);
  try {
    return await timed(count, async () => {
      for (let n = 0; n < count; n += 1) await publisher.publish(stream, order(n));
    });
  } finally {
    await publisher.close();
  }
}

/** 500 publishes in flight at a time: ioredis writes them back to back, as a pipeline would. */
async function publishConcurrently(url: string): Promise<number> {
  const publisher = createPublisher({ connection: url });
  const stream = { ...OrderEvents, name: fresh('publish-concurrent') };
  try {
    return await timed(N, async () => {
      for (let start = 0; start < N; start += 500) {
        const batch = [];
        for (let n = start; n < Math.min(start + 500, N); n += 1)
          batch.push(publisher.publish(stream, order(n)));
        await Promise.all(batch);
      }
    });
  } finally {
    await publisher.close();
  }
}

async function publishMany(url: string): Promise<number> {
  const publisher = createPublisher({ connection: url });
  const stream = { ...OrderEvents, name: fresh('publish-many') };
  try {
    return await timed(N, async () => {
      for (let start = 0; start < N; start += 500) {
        const batch = [];
        for (let n = start; n < Math.min(start + 500, N); n += 1) batch.push(order(n));
        await publisher.publishMany(stream, batch);
      }
    });
  } finally {
    await publisher.close();
  }
}

/** Appends N orders to `stream`, as the consume rows find them. */
async function fill(redis: Redis, stream: string): Promise<void> {
  for (let start = 0; start < N; start += 1_000) {
    const pipeline = redis.pipeline();
    for (let n = start; n < Math.min(start + 1_000, N); n += 1) {
      // prettier-ignore
      pipeline.xadd(stream, '*', 'type', 'order-created', 'orderId', `o-${n}`, 'userId', 'u', 'productId', 'p', 'price', '1000');
    }
    await pipeline.exec();
  }
}

/** A fresh stream of N orders, with group `g` at its start. */
async function filled(redis: Redis, what: string): Promise<string> {
  const stream = fresh(what);
  await fill(redis, stream);
  await redis.xgroup('CREATE', stream, 'g', '0');
  return stream;
}

/** The loop people write by hand: XREADGROUP COUNT 500, then one XACK for the whole batch. */
async function rawConsume(redis: Redis): Promise<number> {
  const stream = await filled(redis, 'raw-consume');
  return timed(N, async () => {
    for (let seen = 0; seen < N;) {
      // prettier-ignore
      const reply = (await redis.xreadgroup(
        'GROUP', 'g', 'c', 'COUNT', 500, 'BLOCK', 1_000, 'STREAMS', stream, '>',
      )) as [string, [string, string[]][]][] | null;
      const entries = reply?.[0]?.[1] ?? [];
      if (entries.length > 0) await redis.xack(stream, 'g', ...entries.map(([id]) => id));
      seen += entries.length;
    }
  });
}

async function streamKitConsume(redis: Redis, url: string, count: number): Promise<number> {
  const name = await filled(redis, `stream-kit-consume-${count}`);
  const stream = { ...OrderEvents, name };
  let subscription: { close(): Promise<void> } | undefined;
  const all = countdown(N);
  const rate = await timed(N, async () => {
    subscription = subscribe('g', 'c', stream, () => all.count(), { connection: url, count, blockMs: 1_000 });
    await all.done;
  });
  await subscription?.close();
  return rate;
}

/** The schema's share of a delivery: `decode` alone, as the subscriber calls it for each entry. */
async function decodeOnly(): Promise<number> {
  const fields = { type: 'order-created', orderId: 'o-1', userId: 'u', productId: 'p', price: '1000' };
  const count = N * 5;
  return timed(count, async () => {
    for (let n = 0; n < count; n += 1) if (!decode(OrderEvents, '1-0', fields).ok) throw new Error('bad');
  });
}

/**
 * payment-service's own handler on `order-events`: for each order, one Lua script writes the
 * payment record and the `payment-events` entry and acks the order.
 */
async function streamKitPayments(redis: Redis, url: string): Promise<number> {
  await redis.del('order-events', 'payment-events');
  await fill(redis, 'order-events');
  const connection = openRequestConnection(url, silentLogger, 'bench-payments');
  const pay = paymentHandler({ redis: connection, logger: silentLogger as never });
  let subscription: { close(): Promise<void> } | undefined;
  try {
    const all = countdown(N);
    return await timed(N, async () => {
      subscription = subscribe(
        'payment-service-group',
        'bench',
        OrderEvents,
        async (event, context) => {
          await pay(event, context);
          all.count();
        },
        { connection: url, count: 500, blockMs: 1_000 },
      );
      await all.done;
    });
  } finally {
    await subscription?.close();
    connection.disconnect();
  }
}

/** The same work BullMQ's way: a job per order, whose processor adds a job to a payments queue. */
async function bullmqPayments(port: number): Promise<number> {
  const connection = { host: '127.0.0.1', port, maxRetriesPerRequest: null };
  const orders = new Queue(fresh('bullmq-orders').replaceAll(':', '-'), { connection });
  const payments = new Queue(fresh('bullmq-payments').replaceAll(':', '-'), { connection });
  try {
    for (let start = 0; start < N; start += 500) {
      await orders.addBulk(
        Array.from({ length: Math.min(500, N - start) }, (_, i) => ({
          name: 'order-created',
          data: order(start + i),
          opts: { removeOnComplete: true },
        })),
      );
    }
    let worker: Worker | undefined;
    const all = countdown(N);
    const rate = await timed(N, async () => {
      worker = new Worker(
        orders.name,
        async (job) => {
          await payments.add('payment-completed', { ...job.data, paymentProcessId: job.id });
        },
        { connection, concurrency: 50 },
      );
      worker.on('completed', () => all.count());
      await all.done;
    });
    await worker?.close();
    return rate;
  } finally {
    await orders.close();
    await payments.close();
  }
}

/** BullMQ's way: `addBulk` the jobs, then a Worker (concurrency 50) with a no-op processor. */
async function bullmqConsume(port: number): Promise<{ add: number; consume: number }> {
  const connection = { host: '127.0.0.1', port, maxRetriesPerRequest: null };
  const name = fresh('bullmq').replaceAll(':', '-');
  const queue = new Queue(name, { connection });
  const jobs = Array.from({ length: N }, (_, n) => ({
    name: 'order-created',
    data: order(n),
    opts: { removeOnComplete: true },
  }));
  try {
    const add = await timed(N, async () => {
      for (let start = 0; start < N; start += 500) await queue.addBulk(jobs.slice(start, start + 500));
    });
    let worker: Worker | undefined;
    const all = countdown(N);
    const consume = await timed(N, async () => {
      worker = new Worker(name, async () => {}, { connection, concurrency: 50 });
      worker.on('completed', () => all.count());
      await all.done;
    });
    await worker?.close();
    return { add, consume };
  } finally {
    await queue.close();
  }
}

const server = await startRedisServer();
const redis = new Redis(server.url);
const rows: Row[] = [];
try {
  console.log(
    `pnpm bench${values.quick ? ' --quick' : ''}: ${N} entries per row, ${cpus().length} CPUs, Node ${process.version}`,
  );
  rows.push({ name: 'redis-benchmark XADD -P 32', perSecond: await redisBenchmark(server.port) });
  rows.push({ name: 'ioredis XADD, pipelines of 500', perSecond: await rawPipelinedXadd(redis) });
  rows.push({
    name: 'stream-kit publish, one at a time',
    perSecond: await publishOneByOne(server.url),
    baseline: 'ioredis XADD, pipelines of 500',
  });
  rows.push({
    name: 'stream-kit publish, 500 in flight',
    perSecond: await publishConcurrently(server.url),
    baseline: 'ioredis XADD, pipelines of 500',
  });
  rows.push({
    name: 'stream-kit publishMany, 500 a call',
    perSecond: await publishMany(server.url),
    baseline: 'ioredis XADD, pipelines of 500',
  });
  rows.push({ name: 'ioredis XREADGROUP COUNT 500 + XACK per batch', perSecond: await rawConsume(redis) });
  for (const count of [10, 500]) {
    rows.push({
      name: `stream-kit subscribe, no-op handler, count ${count}`,
      perSecond: await streamKitConsume(redis, server.url, count),
      baseline: 'ioredis XREADGROUP COUNT 500 + XACK per batch',
    });
  }
  rows.push({ name: 'stream-kit decode alone (zod, OrderEvents)', perSecond: await decodeOnly() });
  const bullmq = await bullmqConsume(server.port);
  rows.push({
    name: 'BullMQ addBulk, 500 a call',
    perSecond: bullmq.add,
    baseline: 'ioredis XADD, pipelines of 500',
  });
  rows.push({
    name: 'BullMQ Worker, no-op, concurrency 50',
    perSecond: bullmq.consume,
    baseline: 'ioredis XREADGROUP COUNT 500 + XACK per batch',
  });
  rows.push({
    name: 'BullMQ payment-like: a job that adds a job, concurrency 50',
    perSecond: await bullmqPayments(server.port),
  });
  rows.push({
    name: 'stream-kit payment-like: payment-service handler',
    perSecond: await streamKitPayments(redis, server.url),
    baseline: 'BullMQ payment-like: a job that adds a job, concurrency 50',
  });
  const width = Math.max(...rows.map((row) => row.name.length));
  console.log(`\n${'row'.padEnd(width)}  ${'per second'.padStart(12)}  vs baseline`);
  for (const row of rows) {
    const base = rows.find((other) => other.name === row.baseline);
    const ratio = base
      ? `${((100 * row.perSecond) / base.perSecond).toFixed(0)}% of "${base.name}"`
      : '(baseline)';
    console.log(
      `${row.name.padEnd(width)}  ${Math.round(row.perSecond).toLocaleString('en').padStart(12)}  ${ratio}`,
    );
  }
} finally {
  redis.disconnect();
  await server.stop();
}
