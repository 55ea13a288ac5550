/**
 * HTTP rows (section 5 of the issue): order-service's `POST /orders` under autocannon, beside a
 * bare Express 5 endpoint (`bare-express.ts`) that parses the same JSON and answers the same way
 * without touching Redis. Both are processes of their own, loaded alike: same body, same bearer
 * token (order-service verifies it, as in production; the bare endpoint ignores it), same
 * connections, the same time in all. A second order-service, on a Redis of its own, has its rate
 * limits on but too high ever to refuse: the limiter's cost, beside the first one's figure.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { Redis } from 'ioredis';
import { exitOf, startService, type RunningService } from '../../harness/services.ts';
import { freePort, waitForPort } from '../../harness/net.ts';
import { startRedisServer, type RedisServer } from '../../harness/redis-server.ts';
import { BENCH_AUTH_ENV, bearerOf } from './services-load.ts';
import { now, order, percentiles, type BenchOptions, type Row } from './support.ts';

const SECTION = '5. HTTP';
const BARE = 'bare Express 5 JSON POST (no Redis)';
const ORDERS = 'order-service POST /orders';
const LIMITED = 'order-service POST /orders, rate limits on (never reached)';
/** The limited order-service's RATE_LIMIT_PER_USER and RATE_LIMIT_PER_ADDRESS: counted, never over. */
const HIGH_LIMIT = 100_000_000;
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
 * `amount` POSTs of BODY over CONNECTIONS connections, each with `authorization`. A fixed amount,
 * not a duration: autocannon then waits for every answer, so that none is cut off in flight and
 * the answers can be counted against what the server wrote. Throws if any answer was not a 2xx or
 * any request failed.
 */
function cannon(url: string, authorization: string, amount: number): Promise<Load> {
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
        headers: { 'content-type': 'application/json', authorization },
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
function endpoint(url: string, authorization: string, seconds: number, rounds: number) {
  const total: Load = { answered: 0, ms: 0, latencies: [] };
  let rate = 0;
  let left = rounds;
  return {
    total,
    /** `runs` small runs; resolves to the requests they made, which `total` does not count. */
    async warmUp(runs: number): Promise<number> {
      for (let run = 0; run < runs; run += 1)
        rate = perSecond(await cannon(url, authorization, SMALLEST_RUN));
      return runs * SMALLEST_RUN;
    },
    async round(): Promise<void> {
      const ms = (seconds * 1_000 - total.ms) / left;
      const amount = Math.max(SMALLEST_RUN, Math.round((rate * ms) / 1_000));
      const load = await cannon(url, authorization, amount);
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
  // The endpoints take turns, a few seconds each, so that whatever else this shared machine is
  // doing weighs on all alike: only their ratios mean anything.
  const rounds = options.quick ? 2 : 5;
  const seconds = options.quick ? 3.5 : 15;
  // The rate-limited order-service has a Redis of its own, as the other one has: each projects its
  // own orders alone, as one order-service would.
  const limitedServer = await startRedisServer();
  // Bounded retries: if Redis is gone, the XLEN below fails at once and says why.
  const redises = [server, limitedServer].map((each) => {
    const redis = new Redis(each.url, { maxRetriesPerRequest: 1 });
    redis.on('error', () => {});
    return redis;
  });
  let bare: Bare | undefined;
  let service: RunningService | undefined;
  let limited: RunningService | undefined;
  try {
    // As deployed (docker-compose.yml, the Dockerfile): LOG_LEVEL info, the default, writes one
    // `order accepted` line per order, and that cost belongs to what a real order costs. With
    // NODE_ENV=production it starts only with auth: the bench's secret, and a token on every
    // request. The rate limits given, as the defaults would refuse most of thousands of orders a
    // second from one address: 0 (off), or HIGH_LIMIT (counted, never over).
    const asDeployed = (redisUrl: string, limit: number) =>
      startService('order-service', {
        REDIS_URL: redisUrl,
        LOG_LEVEL: 'info',
        NODE_ENV: 'production',
        ...BENCH_AUTH_ENV,
        RATE_LIMIT_PER_USER: String(limit),
        RATE_LIMIT_PER_ADDRESS: String(limit),
      });
    const [bareStart, serviceStart, limitedStart] = await Promise.allSettled([
      startBare(),
      asDeployed(server.url, 0),
      asDeployed(limitedServer.url, HIGH_LIMIT),
    ]);
    if (bareStart.status === 'fulfilled') bare = bareStart.value;
    if (serviceStart.status === 'fulfilled') service = serviceStart.value;
    if (limitedStart.status === 'fulfilled') limited = limitedStart.value;
    for (const start of [bareStart, serviceStart, limitedStart])
      if (start.status === 'rejected') throw start.reason;

    // One user's token for every request, the body's user: the bare endpoint gets it too, so
    // that all three read requests of the same size.
    const authorization = await bearerOf(userId);
    const baseline = endpoint(bare!.url, authorization, seconds, rounds);
    const orders = endpoint(service!.url, authorization, seconds, rounds);
    const limitedOrders = endpoint(limited!.url, authorization, seconds, rounds);
    const before = await Promise.all(
      redises.map(
        async (redis) => (await redis.xrevrange('order-events', '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0',
      ),
    );
    // The JIT counts calls, not seconds: the servers' rates climb over their first few thousand
    // requests. Side by side, to save time: the warm-ups only warm and size the first round.
    const warmUpRuns = options.quick ? 3 : 10;
    const [, warmedUp, warmedUpLimited] = await Promise.all(
      [baseline, orders, limitedOrders].map((each) => each.warmUp(warmUpRuns)),
    );
    for (let round = 0; round < rounds; round += 1) {
      await baseline.round();
      await orders.round();
      await limitedOrders.round();
    }
    const accepted = warmedUp! + orders.total.answered;
    const acceptedLimited = warmedUpLimited! + limitedOrders.total.answered;
    // Every 202 says the order is in the stream: none may be missing, and none there twice. Only
    // order-created entries count: order-service cancels the orders nobody pays (no payment-service
    // runs here) once they time out, with an order-cancelled each.
    const written = await Promise.all(redises.map((redis, i) => ordersCreatedAfter(redis, before[i]!)));
    if (written[0] !== accepted)
      throw new Error(`${ORDERS} answered 202 to ${accepted} orders, but order-events got ${written[0]}`);
    if (written[1] !== acceptedLimited)
      throw new Error(
        `${LIMITED} answered 202 to ${acceptedLimited} orders, but order-events got ${written[1]}`,
      );

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
        note: `${load}, alternating with both order-services; the same bearer token sent, not read`,
      },
      {
        section: SECTION,
        name: ORDERS,
        value: perSecond(orders.total),
        unit: 'per second',
        vs: [{ baseline: BARE, target: 0.8 }],
        note:
          `${load}; LOG_LEVEL=info; NODE_ENV=production, an HS256 JWT on each request (AUTH_SECRET; one token, verified, then remembered for 10 s); ` +
          `rate limits off; all ${accepted} orders found in order-events`,
      },
      {
        section: SECTION,
        name: LIMITED,
        value: perSecond(limitedOrders.total),
        unit: 'per second',
        vs: [{ baseline: ORDERS }, { baseline: BARE }],
        note:
          `as "${ORDERS}", but RATE_LIMIT_PER_USER and RATE_LIMIT_PER_ADDRESS ${HIGH_LIMIT.toLocaleString('en')} ` +
          `per 60 s: each order counted for its user and its address in Redis, none refused; on a Redis ` +
          `of its own; all ${acceptedLimited} orders found in order-events`,
      },
      latencyRow(`${BARE}, latency`, baseline.total, { note: busy }),
      latencyRow(`${ORDERS}, latency`, orders.total, { vs: [{ baseline: `${BARE}, latency` }], note: busy }),
    ];
  } finally {
    for (const instance of running) instance.stop();
    await Promise.all([bare?.stop(), service?.stop(), limited?.stop()]);
    for (const redis of redises) redis.disconnect();
    await limitedServer.stop();
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
