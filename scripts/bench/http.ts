/**
 * HTTP rows (section 5 of the issue): order-service's `POST /orders` under autocannon, beside a
 * bare Express 5 endpoint (`bare-express.ts`) that parses the same JSON and answers the same way
 * without touching Redis. Both are processes of their own, loaded alike: same body, same
 * connections, the same time in all.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { Redis } from 'ioredis';
import { exitOf, startService, type RunningService } from '../../harness/services.ts';
import { freePort, waitForPort } from '../../harness/net.ts';
import type { RedisServer } from '../../harness/redis-server.ts';
import { now, order, percentiles, type BenchOptions, type Row } from './support.ts';

const SECTION = '5. HTTP';
const BARE = 'bare Express 5 JSON POST (no Redis)';
const ORDERS = 'order-service POST /orders';
const CONNECTIONS = 50;
/** The fewest requests in one run of autocannon: enough that its set-up and ending weigh little. */
const SMALLEST_RUN = CONNECTIONS * 20;

const { userId, productId, price } = order(1);
const BODY = JSON.stringify({ userId, productId, price });

/** What an endpoint answered, over one run of autocannon or several. */
interface Load {
  /** Requests answered, every one of them with a 2xx. */
  answered: number;
  /** From the first request sent to the last answer. */
  ms: number;
  /** autocannon's time for each request, in ms. */
  latencies: number[];
}

const perSecond = (load: Load) => load.answered / (load.ms / 1_000);

/** Runs under way, to be stopped if the other one of a pair fails. */
const running = new Set<autocannon.Instance>();

/**
 * `amount` POSTs of BODY over CONNECTIONS connections. A fixed amount, not a duration: autocannon
 * then waits for every answer, so that none is cut off in flight and the answers can be counted
 * against what the server wrote. Throws if any answer was not a 2xx or any request failed.
 */
function cannon(url: string, amount: number): Promise<Load> {
  return new Promise((resolve, reject) => {
    // autocannon's own histogram keeps whole milliseconds, one per run; these merge across runs.
    const latencies: number[] = [];
    // Its `duration` counts its own set-up and runs on to the sampling tick after the last answer:
    // the time here is from the first request sent to the last answer.
    let began: number | undefined;
    let last = 0;
    const instance = autocannon(
      {
        url: `${url}/orders`,
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: BODY,
        connections: CONNECTIONS,
        amount,
        // A run ends at the sampling tick after its last answer: by default up to a second idle.
        sampleInt: 100,
      },
      (err: unknown, result) => {
        running.delete(instance);
        if (err) return reject(err);
        const failed = result.non2xx + result.errors + result.mismatches;
        if (failed > 0) {
          const statuses = JSON.stringify(result.statusCodeStats ?? {});
          return reject(new Error(`${url}/orders: ${failed} requests failed (statuses ${statuses})`));
        }
        resolve({ answered: result['2xx'], ms: last - began!, latencies });
      },
    );
    running.add(instance);
    instance.on('response', (_client, status, _bytes, ms) => {
      last = now();
      began ??= last - ms;
      latencies.push(ms);
      // A broken endpoint fails fast (order-service answers 503 after its Redis timeout): stop here.
      if (status < 200 || status > 299) instance.stop();
    });
  });
}

/**
 * An endpoint measured in `rounds` runs that add up to about `seconds`: each is sized by the rate
 * of the run before, and makes up for the time the runs before it fell short of (the first is
 * sized by the warm-up, when the JIT was still cold).
 */
function endpoint(url: string, seconds: number, rounds: number) {
  const total: Load = { answered: 0, ms: 0, latencies: [] };
  let rate = 0;
  let left = rounds;
  return {
    total,
    /** `runs` small runs; resolves to the requests they made, which `total` does not count. */
    async warmUp(runs: number): Promise<number> {
      for (let run = 0; run < runs; run += 1) rate = perSecond(await cannon(url, SMALLEST_RUN));
      return runs * SMALLEST_RUN;
    },
    async round(): Promise<void> {
      const ms = (seconds * 1_000 - total.ms) / left;
      const load = await cannon(url, Math.max(SMALLEST_RUN, Math.round((rate * ms) / 1_000)));
      left -= 1;
      rate = perSecond(load);
      total.answered += load.answered;
      total.ms += load.ms;
      total.latencies = total.latencies.concat(load.latencies);
    },
  };
}

interface Bare {
  url: string;
  /** SIGTERM, then SIGKILL after 5 s. Safe to call twice. */
  stop(): Promise<void>;
}

async function startBare(): Promise<Bare> {
  const port = await freePort();
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', fileURLToPath(new URL('./bare-express.ts', import.meta.url))],
    {
      cwd: fileURLToPath(new URL('../..', import.meta.url)),
      env: { ...process.env, PORT: String(port), NODE_ENV: 'production' },
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  // If the bench dies first (an uncaught error, a signal), the endpoint must not hold its port.
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  child.once('exit', () => process.off('exit', kill));
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const exited = exitOf(child);
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  };
  const died = exited.then((code) => {
    throw new Error(`bare-express.ts exited with ${code}:\n${stderr}`);
  });
  died.catch(() => {});
  try {
    await Promise.race([waitForPort(port, 20_000), died]);
  } catch (err) {
    await stop();
    throw err;
  }
  return { url: `http://127.0.0.1:${port}`, stop };
}

const latencyRow = (name: string, load: Load, more: Partial<Row> = {}): Row => {
  const p = percentiles(load.latencies);
  return { section: SECTION, name, value: p.p99, unit: 'ms', percentiles: p, ...more };
};

export async function httpRows(server: RedisServer, options: BenchOptions): Promise<Row[]> {
  // The two endpoints take turns, a few seconds each, so that whatever else this shared machine is
  // doing weighs on both alike: only their ratio means anything.
  const rounds = options.quick ? 2 : 5;
  const seconds = options.quick ? 3.5 : 15;
  // Bounded retries: if Redis is gone, the XLEN below fails at once and says why.
  const redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
  redis.on('error', () => {});
  let bare: Bare | undefined;
  let service: RunningService | undefined;
  try {
    const [bareStart, serviceStart] = await Promise.allSettled([
      startBare(),
      // As deployed (docker-compose.yml, the Dockerfile): LOG_LEVEL info, the default, writes one
      // `order accepted` line per order, and that cost belongs to what a real order costs.
      startService('order-service', { REDIS_URL: server.url, LOG_LEVEL: 'info', NODE_ENV: 'production' }),
    ]);
    if (bareStart.status === 'fulfilled') bare = bareStart.value;
    if (serviceStart.status === 'fulfilled') service = serviceStart.value;
    if (bareStart.status === 'rejected') throw bareStart.reason;
    if (serviceStart.status === 'rejected') throw serviceStart.reason;

    const baseline = endpoint(bare!.url, seconds, rounds);
    const orders = endpoint(service!.url, seconds, rounds);
    const [last] = await redis.xrevrange('order-events', '+', '-', 'COUNT', 1);
    const before = last?.[0] ?? '0-0';
    // The JIT counts calls, not seconds: both servers' rates climb over their first few thousand
    // requests. Side by side, to save time: the warm-ups only warm and size the first round.
    const warmUpRuns = options.quick ? 3 : 10;
    let [, accepted] = await Promise.all([baseline.warmUp(warmUpRuns), orders.warmUp(warmUpRuns)]);
    for (let round = 0; round < rounds; round += 1) {
      await baseline.round();
      await orders.round();
    }
    accepted += orders.total.answered;
    // Every 202 says the order is in the stream: none may be missing, and none there twice. Only
    // order-created entries count: order-service cancels the orders nobody pays (no payment-service
    // runs here) once they time out, with an order-cancelled each.
    const written = await ordersCreatedAfter(redis, before);
    if (written !== accepted) {
      throw new Error(`order-service answered 202 to ${accepted} orders, but order-events got ${written}`);
    }

    const load = `${CONNECTIONS} connections, ${seconds} s in ${rounds} turns`;
    // A closed loop: each connection sends its next request once answered, so the wait in the
    // server's queue is part of every figure (connections ÷ rate, on average).
    const busy = `flat out, ${CONNECTIONS} connections`;
    return [
      {
        section: SECTION,
        name: BARE,
        value: perSecond(baseline.total),
        unit: 'per second',
        note: `${load}, alternating with order-service`,
      },
      {
        section: SECTION,
        name: ORDERS,
        value: perSecond(orders.total),
        unit: 'per second',
        vs: [{ baseline: BARE, target: 0.8 }],
        note: `${load}; LOG_LEVEL=info; all ${accepted} orders found in order-events`,
      },
      latencyRow(`${BARE}, latency`, baseline.total, { note: busy }),
      latencyRow(`${ORDERS}, latency`, orders.total, { vs: [{ baseline: `${BARE}, latency` }], note: busy }),
    ];
  } finally {
    for (const instance of running) instance.stop();
    await Promise.all([bare?.stop(), service?.stop()]);
    redis.disconnect();
  }
}

/** How many `order-created` entries `order-events` holds after the entry ID `after`. */
async function ordersCreatedAfter(redis: Redis, after: string): Promise<number> {
  let count = 0;
  for (let from = `(${after}`; ;) {
    const page = await redis.xrange('order-events', from, '+', 'COUNT', 10_000);
    for (const [, fields] of page) if (fields[fields.indexOf('type') + 1] === 'order-created') count += 1;
    if (page.length < 10_000) return count;
    from = `(${page.at(-1)![0]}`;
  }
}
