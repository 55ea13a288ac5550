/**
 * Throughput rows (sections 1 to 3 of the issue): publish, consume + ack with a no-op handler,
 * and a payment-like consumer, each beside its baseline (redis-benchmark, a raw ioredis loop,
 * BullMQ) on the same private redis-server.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { createPublisher, type Publisher } from '@msa/stream-kit';
import { OrderEvents, PaymentEvents } from '@msa/stream-kit/events';
import { createMetrics, startTracing, type ServiceMetrics, type Tracing } from '@msa/stream-kit/service';
import { freePort } from '../../harness/net.ts';
import { startOtlpReceiver } from '../../harness/otlp.ts';
import type { RedisServer } from '../../harness/redis-server.ts';
import { exitOf, spawnService } from '../../harness/services.ts';
import { waitFor } from '../../harness/wait.ts';
import {
  consumeAll,
  countdown,
  fillOrders,
  fresh,
  median,
  order,
  timed,
  type BenchOptions,
  type Row,
} from './support.ts';

/** Entries per row; set by `throughputRows`, lowered while `warmed` warms a row up. */
let N = 0;

/** One or more rows measured by one run: name → rate. */
type Case = () => Promise<Record<string, number>>;
const one =
  (name: string, run: () => Promise<number>): Case =>
  async () => ({ [name]: await run() });

/**
 * Runs every case in turns, `turns` times over on N / turns entries each, after a warm-up on a
 * twentieth of N (V8 compiles each library's hot paths on its first run), and answers each row's
 * median rate. A neighbour busy for a while on this shared machine then spoils one turn of every
 * row alike, not the whole of one row.
 */
async function inTurns(cases: Case[], turns: number): Promise<Record<string, number>> {
  const full = N;
  const samples: Record<string, number[]> = {};
  try {
    N = Math.max(1_000, Math.round(full / 20));
    for (const run of cases) await run();
    N = Math.max(1_000, Math.round(full / turns));
    for (let turn = 0; turn < turns; turn += 1) {
      for (const run of cases) {
        for (const [name, rate] of Object.entries(await run())) (samples[name] ??= []).push(rate);
      }
    }
  } finally {
    N = full;
  }
  return Object.fromEntries(Object.entries(samples).map(([name, rates]) => [name, median(rates)]));
}

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

/** Times `publishAll` on a fresh stream, with a publisher of its own. */
async function publishing(
  url: string,
  count: number,
  publishAll: (publisher: Publisher, stream: typeof OrderEvents) => Promise<unknown>,
): Promise<number> {
  const publisher = createPublisher({ connection: url });
  const stream = { ...OrderEvents, name: fresh('publish') };
  try {
    return await timed(count, async () => void (await publishAll(publisher, stream)));
  } finally {
    await publisher.close();
  }
}

/** N orders, 500 at a time. */
function* batchesOf500() {
  for (let start = 0; start < N; start += 500) {
    yield Array.from({ length: Math.min(500, N - start) }, (_, i) => order(start + i));
  }
}

const publishOneByOne = (url: string) =>
  publishing(url, Math.min(N, 20_000), async (publisher, stream) => {
    for (let n = 0; n < Math.min(N, 20_000); n += 1) await publisher.publish(stream, order(n));
  });

/** 500 publishes in flight at a time: ioredis writes them back to back, as a pipeline would. */
const publishConcurrently = (url: string) =>
  publishing(url, N, async (publisher, stream) => {
    for (const batch of batchesOf500())
      await Promise.all(batch.map((event) => publisher.publish(stream, event)));
  });

const publishMany = (url: string) =>
  publishing(url, N, async (publisher, stream) => {
    for (const batch of batchesOf500()) await publisher.publishMany(stream, batch);
  });

/** A fresh stream of N orders, with group `g` at its start. */
async function filled(redis: Redis, what: string): Promise<string> {
  const stream = fresh(what);
  await fillOrders(redis, stream, N);
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
  return consumeAll(redis, { ...OrderEvents, name }, N, { connection: url, count });
}

/**
 * The same with metrics on, as the services run: every run timed and counted by `metrics` (one
 * for the whole bench, as a service has one). Scraped once before, not during: a scrape comes every
 * few seconds, and its cost is per scrape, not per entry (a row here lasts a fraction of a second).
 */
async function streamKitConsumeWithMetrics(
  redis: Redis,
  url: string,
  metrics: ServiceMetrics,
): Promise<number> {
  const name = await filled(redis, 'stream-kit-consume-metrics');
  await metrics.registry.metrics();
  return consumeAll(redis, { ...OrderEvents, name }, N, { connection: url, count: 500, metrics });
}

/**
 * Count 500 with nothing and with metrics, in the order off, metrics, metrics, off within each
 * turn (a 3 % target between two rows of a fraction of a second each would otherwise measure the
 * neighbours), then twice with tracing: started for those two alone, as a service with
 * OTEL_EXPORTER_OTLP_ENDPOINT starts it, and closed after (its last spans sent), since its
 * AsyncLocalStorage context costs every promise of the process something and the other rows run
 * as services with tracing off do.
 */
async function observedAndNot(
  redis: Redis,
  url: string,
  metrics: ServiceMetrics,
  endpoint: string,
): Promise<Record<string, number>> {
  const rates: Record<string, number[]> = {
    [CONSUME_500]: [],
    [CONSUME_500_METRICS]: [],
    [CONSUME_500_TRACING]: [],
  };
  rates[CONSUME_500]!.push(await streamKitConsume(redis, url, 500));
  rates[CONSUME_500_METRICS]!.push(await streamKitConsumeWithMetrics(redis, url, metrics));
  rates[CONSUME_500_METRICS]!.push(await streamKitConsumeWithMetrics(redis, url, metrics));
  rates[CONSUME_500]!.push(await streamKitConsume(redis, url, 500));
  const tracing = startTracing('bench', { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint });
  try {
    for (let n = 0; n < 2; n += 1)
      rates[CONSUME_500_TRACING]!.push(await streamKitConsumeTraced(redis, url, tracing.tracer!));
  } finally {
    await tracing.close();
  }
  return Object.fromEntries(Object.entries(rates).map(([name, [a, b]]) => [name, (a! + b!) / 2]));
}

/**
 * The same with tracing on, as a service runs with OTEL_EXPORTER_OTLP_ENDPOINT set: a span per
 * entry, exported over OTLP/HTTP (to a receiver that drops them) in the SDK's default batches.
 */
async function streamKitConsumeTraced(
  redis: Redis,
  url: string,
  tracer: NonNullable<Tracing['tracer']>,
): Promise<number> {
  const name = await filled(redis, 'stream-kit-consume-tracing');
  return consumeAll(redis, { ...OrderEvents, name }, N, { connection: url, count: 500, tracer });
}

/**
 * The schema's share of a delivery: what the subscriber's decode does for each entry, through the
 * public stream definition: the stream's defaults under the entry's fields, then its schema.
 */
async function decodeOnly(): Promise<number> {
  const fields = { type: 'order-created', orderId: 'o-1', userId: 'u', productId: 'p', price: '1000' };
  const defaults = OrderEvents.defaults!;
  const count = N * 5;
  return timed(count, async () => {
    for (let n = 0; n < count; n += 1) {
      if (!OrderEvents.schema.safeParse(Object.assign({}, defaults('1-0'), fields)).success)
        throw new Error('bad');
    }
  });
}

/** The ms of Redis's clock in entry ID `<ms>-<seq>`. */
const idMs = (id: string) => Number(id.slice(0, id.indexOf('-')));

/**
 * A process draining a backlog of N `order-created` entries waiting on `order-events`, until every
 * order is paid (N `payment-events` entries) and none is pending. Timed on Redis's clock, from the
 * first payment's entry ID to the last's: the process's start (tsx compiling the TypeScript, a
 * second or more) is not part of draining, and the same script that adds the last payment acks its
 * order.
 */
async function drains(redis: Redis, what: string, start: () => Promise<ChildProcess>): Promise<number> {
  await redis.del(OrderEvents.name, PaymentEvents.name);
  await fillOrders(redis, OrderEvents.name, N);
  const child = await start();
  let tail = '';
  const keep = (chunk: Buffer) => void (tail = (tail + chunk.toString()).slice(-4_000));
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}:\n${tail}`);
        if ((await redis.xlen(PaymentEvents.name)) < N) return false;
        const [pending] = (await redis.xpending(OrderEvents.name, 'payment-service-group')) as [number];
        return pending === 0;
      },
      { timeoutMs: 600_000, intervalMs: 10, what: `${what} to pay ${N} orders` },
    );
  } finally {
    const exited = exitOf(child);
    child.kill('SIGTERM');
    await exited;
  }
  const [first] = await redis.xrange(PaymentEvents.name, '-', '+', 'COUNT', 1);
  const [last] = await redis.xrevrange(PaymentEvents.name, '+', '-', 'COUNT', 1);
  if ((await redis.xlen(PaymentEvents.name)) !== N) throw new Error(`${what} paid an order twice`);
  return N / (Math.max(1, idMs(last![0]) - idMs(first![0])) / 1_000);
}

/**
 * payment-service as shipped: a real process (`node --import tsx src/main.ts`, as `pnpm start`
 * runs it) with its default settings. LOG_LEVEL stays info, as shipped: a line per payment, read
 * here and dropped.
 */
const paymentServiceDrains = async (redis: Redis, url: string) => {
  const port = String(await freePort());
  return drains(redis, 'payment-service', async () =>
    spawnService('payment-service', { REDIS_URL: url, PORT: port }),
  );
};

/**
 * The floor of that design: `bare-payment.ts`, the same exactly-once Lua work per order and
 * nothing else, as a process started the same way.
 */
const bareExactlyOnceDrains = (redis: Redis, url: string) =>
  drains(redis, 'bare-payment.ts', async () => {
    await redis.xgroup('CREATE', OrderEvents.name, 'payment-service-group', '0');
    return spawn(process.execPath, ['--import', 'tsx', 'scripts/bench/bare-payment.ts'], {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      env: { ...process.env, REDIS_URL: url },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
  });

/**
 * The same work BullMQ's way, set up for speed: a job per order (removed once completed or
 * failed), whose processor adds a job to a payments queue, at `concurrency`.
 */
async function bullmqPayments(port: number, concurrency: number): Promise<number> {
  const connection = { host: '127.0.0.1', port, maxRetriesPerRequest: null };
  const orders = new Queue(fresh('bullmq-orders').replaceAll(':', '-'), { connection });
  const payments = new Queue(fresh('bullmq-payments').replaceAll(':', '-'), { connection });
  try {
    for (let start = 0; start < N; start += 500) {
      await orders.addBulk(
        Array.from({ length: Math.min(500, N - start) }, (_, i) => ({
          name: 'order-created',
          data: order(start + i),
          opts: { removeOnComplete: true, removeOnFail: true },
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
        { connection, concurrency },
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

const REDIS_BENCHMARK = 'redis-benchmark XADD -P 32';
const RAW_XADD = 'ioredis XADD, pipelines of 500';
const ONE_BY_ONE = 'stream-kit publish, one at a time';
const IN_FLIGHT = 'stream-kit publish, 500 in flight';
const PUBLISH_MANY = 'stream-kit publishMany, 500 a call';
const BULLMQ_ADD = 'BullMQ addBulk, 500 a call';
const RAW_CONSUME = 'ioredis XREADGROUP COUNT 500 + one XACK per batch';
const BULLMQ_WORKER = 'BullMQ Worker, no-op, concurrency 50';
const CONSUME_10 = 'stream-kit subscribe, count 10 (the default)';
const CONSUME_500 = 'stream-kit subscribe, count 500';
const CONSUME_500_METRICS = 'stream-kit subscribe, count 500, metrics on';
const CONSUME_500_TRACING = 'stream-kit subscribe, count 500, tracing on';
const DECODE = 'stream-kit decode alone (zod, OrderEvents)';
/** The concurrencies BullMQ's payment row tries; the row reports the best. */
const BULLMQ_CONCURRENCIES = [50, 200, 1_000];
const bullmqPaymentsAt = (concurrency: number) => `BullMQ payments at concurrency ${concurrency}`;
const PAYMENTS = 'payment-service as shipped: a process, defaults, draining a backlog';
const BARE_PAYMENTS = 'bare ioredis loop, the same exactly-once Lua work per order, nothing else';

export async function throughputRows(server: RedisServer, options: BenchOptions): Promise<Row[]> {
  N = options.quick ? 10_000 : 200_000;
  const redis = new Redis(server.url);
  const metrics = createMetrics({ redis });
  // Where the tracing rows send their spans.
  const sink = await startOtlpReceiver({ keep: false });
  try {
    const rate = await inTurns(
      [
        one(RAW_XADD, () => rawPipelinedXadd(redis)),
        one(ONE_BY_ONE, () => publishOneByOne(server.url)),
        one(IN_FLIGHT, () => publishConcurrently(server.url)),
        one(PUBLISH_MANY, () => publishMany(server.url)),
        async () => {
          const { add, consume } = await bullmqConsume(server.port);
          return { [BULLMQ_ADD]: add, [BULLMQ_WORKER]: consume };
        },
        one(RAW_CONSUME, () => rawConsume(redis)),
        one(CONSUME_10, () => streamKitConsume(redis, server.url, 10)),
        () => observedAndNot(redis, server.url, metrics, sink.endpoint),
        ...BULLMQ_CONCURRENCIES.map((concurrency) =>
          one(bullmqPaymentsAt(concurrency), () => bullmqPayments(server.port, concurrency)),
        ),
        one(PAYMENTS, () => paymentServiceDrains(redis, server.url)),
        one(BARE_PAYMENTS, () => bareExactlyOnceDrains(redis, server.url)),
        one(DECODE, () => decodeOnly()),
      ],
      options.quick ? 2 : 5,
    );
    const row = (section: string, name: string, more: Partial<Row> = {}): Row => ({
      section,
      name,
      value: rate[name]!,
      unit: 'per second',
      ...more,
    });
    const publish = '1. publish';
    const consume = '2. consume + ack, no-op handler';
    const payments = '3. payment-like consumer';
    const [bestConcurrency] = BULLMQ_CONCURRENCIES.map((c) => [c, rate[bullmqPaymentsAt(c)]!] as const).sort(
      ([, a], [, b]) => b - a,
    )[0]!;
    const bullmqBest: Row = {
      section: payments,
      name: `BullMQ: a job that adds a job, removeOnComplete, best of concurrency ${BULLMQ_CONCURRENCIES.join('/')}: ${bestConcurrency}`,
      value: rate[bullmqPaymentsAt(bestConcurrency)]!,
      unit: 'per second',
      note: BULLMQ_CONCURRENCIES.map((c) => `${c}: ${Math.round(rate[bullmqPaymentsAt(c)]!)}/s`).join(', '),
    };
    return [
      {
        section: publish,
        name: REDIS_BENCHMARK,
        value: await redisBenchmark(server.port),
        unit: 'per second',
      },
      row(publish, RAW_XADD),
      row(publish, ONE_BY_ONE, { vs: [{ baseline: RAW_XADD }] }),
      row(publish, IN_FLIGHT, { vs: [{ baseline: RAW_XADD }] }),
      row(publish, PUBLISH_MANY, { vs: [{ baseline: RAW_XADD, target: 0.8 }] }),
      row(publish, BULLMQ_ADD, { vs: [{ baseline: RAW_XADD }] }),
      row(consume, RAW_CONSUME),
      row(consume, BULLMQ_WORKER, { vs: [{ baseline: RAW_CONSUME }] }),
      row(consume, CONSUME_10, { vs: [{ baseline: RAW_CONSUME }] }),
      row(consume, CONSUME_500, {
        vs: [
          { baseline: RAW_CONSUME, target: 0.7 },
          { baseline: BULLMQ_WORKER, target: 5 },
        ],
      }),
      row(consume, CONSUME_500_METRICS, {
        vs: [{ baseline: CONSUME_500, target: 0.97 }],
        note: 'each run timed and counted (createMetrics)',
      }),
      row(consume, CONSUME_500_TRACING, {
        vs: [{ baseline: CONSUME_500 }],
        note: 'a span per entry, exported over OTLP/HTTP (startTracing)',
      }),
      row(consume, DECODE, { note: 'the schema alone, without Redis' }),
      bullmqBest,
      row(payments, BARE_PAYMENTS, {
        vs: [{ baseline: bullmqBest.name }],
        note: 'the floor of the design below: no stream-kit, no schema, no isolation, no logs',
      }),
      row(payments, PAYMENTS, {
        vs: [{ baseline: bullmqBest.name, target: 4 }, { baseline: BARE_PAYMENTS }],
        note: "first to last payment, on Redis's clock: the process's start is left out",
      }),
    ];
  } finally {
    redis.disconnect();
    await sink.close();
  }
}
