/**
 * Latency rows (section 4 of the issue): one hop through stream-kit beside a hand-written ioredis
 * loop, then the three services as real processes, end to end, at a fixed offered rate, and the
 * highest rate they sustain. Every load is an open loop: sends go out on a schedule, whatever
 * became of the earlier ones, as independent clients would send them.
 */
import { Agent, request as httpRequest } from 'node:http';
import { availableParallelism } from 'node:os';
import { Redis } from 'ioredis';
import { sentLogKey } from '@msa/notification-service';
import { paymentKey } from '@msa/payment-service';
import { createPublisher, subscribe } from '@msa/stream-kit';
import { OrderEvents } from '@msa/stream-kit/events';
import { startService, type RunningService } from '../../harness/services.ts';
import type { RedisServer } from '../../harness/redis-server.ts';
import { fresh, now, order, percentiles, type BenchOptions, type Row } from './support.ts';

const SECTION = '4. latency';
const RAW_HOP = 'ioredis blocking loop: XADD → XREADGROUP BLOCK';
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * Calls `send(n)` for n = 0, 1, … at `rate` a second for `seconds`, never waiting for an earlier
 * send to finish: each tick sends all that are due by then, so a late tick catches up in a burst.
 * Resolves to the rate achieved, under `rate` when this process could not keep up.
 */
async function offer(rate: number, seconds: number, send: (n: number) => void): Promise<number> {
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

// ---------------------------------------------------------------------------------------------
// A: one hop, in process

/** A producer and a consumer on one stream: `send(n)` appends order n; `seen(n, at)` reports its arrival. */
interface HopPair {
  send(n: number): Promise<unknown>;
  close(): Promise<void>;
}
type Seen = (n: number, at: number) => void;

const ORDER_PREFIX = 'order-'.length;

/** The loop people write by hand: XREADGROUP COUNT 500 BLOCK 1000, then one XACK per batch. */
async function rawPair(url: string, seen: Seen): Promise<HopPair> {
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
async function streamKitPair(url: string, seen: Seen): Promise<HopPair> {
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
async function hops(
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

// ---------------------------------------------------------------------------------------------
// B and C: the three services, end to end

const SENT_KEY = sentLogKey('');
const PAYMENT_KEY = paymentKey('');

/**
 * One run of orders at a rate. Each order has a user of its own, `<tag>:<n>`, so that a write to
 * the user's sent log tells which order it was for.
 */
class Load {
  readonly sentAt: Float64Array;
  readonly acceptedAt: Float64Array;
  readonly orderIds: (string | undefined)[];
  /** When each of the order's two notifications was recorded, in the order they were. */
  readonly recordedAt: number[][];
  responses = 0;
  /** Orders with both notifications recorded. */
  completed = 0;
  readonly errors: string[] = [];

  constructor(
    readonly tag: string,
    readonly total: number,
  ) {
    this.sentAt = new Float64Array(total);
    this.acceptedAt = new Float64Array(total).fill(NaN);
    this.orderIds = new Array<string | undefined>(total);
    this.recordedAt = Array.from({ length: total }, () => []);
  }

  recorded(n: number, at: number) {
    const stamps = this.recordedAt[n];
    if (!stamps) return;
    stamps.push(at);
    if (stamps.length === 2) this.completed += 1;
  }
}

/**
 * The moment each payment record and each sent-log entry is written, as Redis announces it to a
 * connection subscribed to their keyspace notifications (hash and list commands only, so Redis
 * publishes nothing else). Keyspace events fire inside the services' Lua scripts, as each
 * command runs: the payment record is written in the same script that publishes the payment.
 */
class Probe {
  readonly paidAt = new Map<string, number>();
  private readonly loads = new Map<string, Load>();

  private constructor(private readonly redis: Redis) {
    redis.on('pmessage', (_pattern: string, channel: string) => {
      const at = now();
      const key = channel.slice(channel.indexOf(':') + 1);
      if (key.startsWith(PAYMENT_KEY)) {
        this.paidAt.set(key.slice(PAYMENT_KEY.length), at);
      } else if (key.startsWith(SENT_KEY)) {
        const user = key.slice(SENT_KEY.length);
        const colon = user.lastIndexOf(':');
        this.loads.get(user.slice(0, colon))?.recorded(Number(user.slice(colon + 1)), at);
      }
    });
  }

  static async open(admin: Redis, url: string): Promise<Probe> {
    await admin.config('SET', 'notify-keyspace-events', 'Khl');
    const redis = new Redis(url);
    await redis.psubscribe(`__keyspace@0__:${PAYMENT_KEY}*`, `__keyspace@0__:${SENT_KEY}*`);
    return new Probe(redis);
  }

  watch(load: Load) {
    this.loads.set(load.tag, load);
  }

  close() {
    this.redis.disconnect();
  }
}

interface Services {
  /** POST /orders; `at` is when the answer's head arrived. */
  post(body: string): Promise<{ status: number; at: number; text: string }>;
  all: RunningService[];
  /** Stops every service and drops the client's connections. */
  stop(): Promise<void>;
}

/**
 * POST `url` on keep-alive connections: node:http, not fetch. At 2,000 orders/s Node 20's fetch
 * (undici) took more than a core of this 2-core machine, starving the services it measures, and
 * failed some requests with "other side closed"; node:http took a quarter of a core. A request
 * sent on a kept-alive socket just as the server closed it for idleness fails with ECONNRESET
 * before the server read it: it is sent again once, on a new socket, as Node's docs advise
 * (`request.reusedSocket`).
 */
function poster(url: string, agent: Agent): Services['post'] {
  const post = (body: string, retried: boolean): ReturnType<Services['post']> =>
    new Promise((resolve, reject) => {
      const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
      const request = httpRequest(url, { method: 'POST', agent, headers }, (response) => {
        const at = now();
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, at, text }));
        response.on('error', reject);
      });
      request.on('error', (err: NodeJS.ErrnoException) => {
        if (!retried && request.reusedSocket && err.code === 'ECONNRESET') resolve(post(body, true));
        else reject(err);
      });
      request.end(body);
    });
  return (body) => post(body, false);
}

async function startServices(url: string): Promise<Services> {
  // LOG_LEVEL info, as startService sets it: the services' own default, so each order is logged
  // as it would be in production.
  const started = await Promise.allSettled(
    (['order-service', 'payment-service', 'notification-service'] as const).map((name) =>
      startService(name, { REDIS_URL: url, LOG_LEVEL: 'info' }),
    ),
  );
  const all = started.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const failed = started.find((result) => result.status === 'rejected');
  if (failed) {
    await Promise.all(all.map((service) => service.stop(2_000)));
    throw failed.reason;
  }
  const agent = new Agent({ keepAlive: true });
  return {
    post: poster(`${all[0]!.url}/orders`, agent),
    all,
    async stop() {
      agent.destroy();
      await Promise.all(all.map((service) => service.stop(5_000)));
    },
  };
}

/** Throws if one of the services has exited: waiting on would only time out. */
function checkAlive(services: Services) {
  for (const service of services.all) {
    const { exitCode, signalCode } = service.process;
    if (exitCode !== null || signalCode !== null)
      throw new Error(
        `${service.name} exited (${exitCode ?? signalCode}):\n${service.output().slice(-3_000)}`,
      );
  }
}

/** Waits up to `ms` for every order of `load` to be answered and notified twice; resolves to whether they were. */
async function settle(load: Load, services: Services, ms: number): Promise<boolean> {
  const deadline = now() + ms;
  for (;;) {
    if (load.responses === load.total && load.completed === load.total) return true;
    if (now() > deadline) return false;
    checkAlive(services);
    await sleep(10);
  }
}

interface LoadResult {
  load: Load;
  achieved: number;
  /** Whether every order was answered, paid and notified twice within the drain time. */
  drained: boolean;
  /** Per order, ms from just before its request: NaN where it did not happen. */
  accepted: number[];
  paid: number[];
  sms: number[];
  /** What did not happen for some orders, if anything. */
  missing: string[];
}

/**
 * Places `rate × seconds` orders over HTTP, then waits up to `drainMs` after the last send for
 * every one of them to be answered, paid and notified by mail and SMS.
 */
async function runLoad(
  admin: Redis,
  probe: Probe,
  services: Services,
  { tag, rate, seconds, drainMs }: { tag: string; rate: number; seconds: number; drainMs: number },
): Promise<LoadResult> {
  const load = new Load(tag, Math.round(rate * seconds));
  probe.watch(load);
  const fail = (n: number, why: string) => {
    load.responses += 1;
    if (load.errors.length < 3) load.errors.push(`order ${n}: ${why}`);
  };
  const achieved = await offer(rate, seconds, (n) => {
    const body = JSON.stringify({ userId: `${tag}:${n}`, productId: 'product-1', price: 1000 });
    load.sentAt[n] = now();
    services.post(body).then(
      ({ status, at, text }) => {
        if (status !== 202) return fail(n, `HTTP ${status} ${text}`);
        load.orderIds[n] = (JSON.parse(text) as { orderId: string }).orderId;
        load.acceptedAt[n] = at;
        load.responses += 1;
      },
      (err: unknown) => fail(n, (err as Error).message),
    );
  });
  await settle(load, services, drainMs);
  return { ...(await outcome(admin, probe, load)), achieved };
}

/** Reads the sent logs to tell the SMS from the mail, and joins the stamps per order. */
async function outcome(admin: Redis, probe: Probe, load: Load): Promise<Omit<LoadResult, 'achieved'>> {
  const lists: string[][] = [];
  for (let start = 0; start < load.total; start += 1_000) {
    const pipeline = admin.pipeline();
    for (let n = start; n < Math.min(start + 1_000, load.total); n += 1)
      pipeline.lrange(`${SENT_KEY}${load.tag}:${n}`, 0, -1);
    for (const [err, items] of (await pipeline.exec())!) {
      if (err) throw err;
      lists.push(items as string[]);
    }
  }
  const accepted: number[] = [];
  const paid: number[] = [];
  const sms: number[] = [];
  const counts = {
    unanswered: 0,
    unpaid: 0,
    'without mail': 0,
    'without SMS': 0,
    'notified more than twice': 0,
  };
  for (let n = 0; n < load.total; n += 1) {
    const t0 = load.sentAt[n]!;
    const orderId = load.orderIds[n];
    const paidAt = orderId === undefined ? undefined : probe.paidAt.get(orderId);
    const channels = lists[n]!.map((item) => (JSON.parse(item) as { channel: string }).channel);
    const smsAt = load.recordedAt[n]![channels.indexOf('sms')];
    accepted.push(load.acceptedAt[n]! - t0);
    paid.push(paidAt === undefined ? NaN : paidAt - t0);
    sms.push(smsAt === undefined ? NaN : smsAt - t0);
    if (orderId === undefined) counts.unanswered += 1;
    if (paidAt === undefined) counts.unpaid += 1;
    if (!channels.includes('mail')) counts['without mail'] += 1;
    if (smsAt === undefined) counts['without SMS'] += 1;
    if (channels.length > 2) counts['notified more than twice'] += 1;
  }
  const missing = Object.entries(counts)
    .filter(([, count]) => count > 0)
    .map(([what, count]) => `${count} of ${load.total} orders ${what}`);
  const drained = missing.length === 0 && load.errors.length === 0;
  return { load, drained, accepted, paid, sms, missing: [...missing, ...load.errors] };
}

const valid = (samples: number[]) => samples.filter((value) => !Number.isNaN(value));

/** Whether a step of the rate ladder held, and if not, why. */
function judge(step: LoadResult, rate: number, drainMs: number): string | undefined {
  if (step.load.errors.length > 0) return `requests failed (${step.load.errors[0]})`;
  if (step.achieved < 0.95 * rate)
    return `the load generator achieved only ${Math.round(step.achieved)}/s of the ${rate}/s offered`;
  const quarter = Math.floor(step.sms.length / 4);
  const first = percentiles(valid(step.sms.slice(0, quarter))).p50;
  const lastQuarter = valid(step.sms.slice(-quarter));
  const last = percentiles(lastQuarter).p50;
  if (lastQuarter.length >= quarter / 2 && !(last <= 2 * first + 10))
    return `lag grew (order → SMS p50 ${first.toFixed(0)} ms in the first quarter, ${last.toFixed(0)} ms in the last)`;
  if (!step.drained)
    return `not drained ${drainMs / 1_000} s after the last send: ${step.missing.join(', ')}`;
  return undefined;
}

export async function latencyRows(server: RedisServer, { quick }: BenchOptions): Promise<Row[]> {
  const rows: Row[] = [];
  const latencyRow = (name: string, samples: number[], more: Partial<Row>) => {
    const figures = percentiles(samples);
    rows.push({ section: SECTION, name, value: figures.p99, unit: 'ms', percentiles: figures, ...more });
  };

  // A: one hop, both at the same rate for the same time.
  const hopLoad = { rate: 1_000, seconds: quick ? 3 : 10, rounds: quick ? 6 : 20, warmUp: 0.5 };
  const [raw, streamKit] = await hops(
    [(seen) => rawPair(server.url, seen), (seen) => streamKitPair(server.url, seen)],
    hopLoad,
  );
  const turn = hopLoad.seconds / hopLoad.rounds;
  const offered = `${hopLoad.rate.toLocaleString('en')}/s for ${hopLoad.seconds} s, open loop`;
  const hopNote = `${offered}, in turns of ${turn} s with the other row`;
  latencyRow(RAW_HOP, raw!, { note: hopNote });
  latencyRow('stream-kit publish → subscribe handler', streamKit!, {
    note: `${hopNote}; subscribe() defaults (count 10)`,
    vs: [{ baseline: RAW_HOP, target: 1.5 }],
  });

  // B and C: the services, started once for both.
  const admin = new Redis(server.url);
  let probe: Probe | undefined;
  let services: Services | undefined;
  try {
    probe = await Probe.open(admin, server.url);
    services = await startServices(server.url);

    const rate = 200;
    const seconds = quick ? 3 : 15;
    const b = await runLoad(admin, probe, services, { tag: 'fixed', rate, seconds, drainMs: 10_000 });
    if (!b.drained) throw new Error(`latency: orders lost at ${rate}/s: ${b.missing.join(', ')}`);
    // The first half second opens connections and warms the services' JIT.
    const skip = rate / 2;
    const note = `${rate}/s offered over HTTP for ${seconds} s (the first 0.5 s not counted), open loop; three services as processes`;
    latencyRow('services: order → 202 accepted', b.accepted.slice(skip), { note });
    latencyRow('services: order → payment published', b.paid.slice(skip), { note });
    latencyRow('services: order → SMS recorded (whole chain)', b.sms.slice(skip), { note });

    // C: the rate ladder, up to the first step that does not hold.
    const ladder = quick
      ? [1_000, 2_000, 4_000]
      : [250, 500, 1_000, 1_500, 2_000, 3_000, 4_000, 6_000, 8_000];
    const stepSeconds = quick ? 2 : 8;
    const drainMs = quick ? 1_000 : 2_000;
    let sustained = 0;
    let held = '';
    let failure = `every step held, up to ${ladder.at(-1)}/s (the highest tried)`;
    const heldOnSecondRun: number[] = [];
    for (const step of ladder) {
      let why: string | undefined;
      let sms: number[] = [];
      let runs = 0;
      // A step that fails runs once more (full run only) if the services catch up quickly: on a
      // shared machine a neighbour's burst can spoil one step, and leaves no lasting backlog.
      for (let attempt = 1; attempt <= (quick ? 1 : 2); attempt += 1) {
        const result = await runLoad(admin, probe, services, {
          tag: `rate-${step}-${attempt}`,
          rate: step,
          seconds: stepSeconds,
          drainMs,
        });
        why = judge(result, step, drainMs);
        sms = result.sms;
        runs = attempt;
        if (!why || quick || !(await settle(result.load, services, 3_000))) break;
      }
      if (why) {
        failure = `${step}/s failed${runs > 1 ? ' twice' : ''}: ${why}`;
        break;
      }
      if (runs > 1) heldOnSecondRun.push(step);
      sustained = step;
      held = `order → SMS p50 ${percentiles(sms).p50.toFixed(1)} ms at ${step}/s`;
    }
    rows.push({
      section: SECTION,
      name: 'services: highest sustained rate (order → SMS)',
      value: sustained,
      unit: 'per second',
      note:
        `steps of ${stepSeconds} s (${ladder.join(', ')}/s); ${held ? `${held}; ` : ''}${failure}; ` +
        (heldOnSecondRun.length ? `held only on a second run: ${heldOnSecondRun.join(', ')}/s; ` : '') +
        `the load generator runs in this process, on the same ${availableParallelism()} cores as the three services and Redis`,
    });
    return rows;
  } finally {
    await services?.stop();
    probe?.close();
    admin.disconnect();
  }
}
