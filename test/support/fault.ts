import { randomUUID } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import { consumerEnv, parseEnv } from '../../packages/stream-kit/src/service.ts';
import { Redis } from 'ioredis';
import { startRedisServer, type RedisServer } from '../../scripts/redis-server.ts';
import { exitOf, spawnService, startService, type RunningService, type ServiceName } from './services.ts';
import { entryFields } from './streams.ts';
import { waitFor } from './wait.ts';

/*
 * The fault run: orders placed over HTTP while payment-service and notification-service, two
 * instances each, are killed with SIGKILL (or stopped with SIGTERM) and restarted at random, and
 * Redis (AOF, fsync always) is restarted once. Then every accepted order must have exactly one payment, one mail and one
 * SMS, nothing may be left pending, and the dead-letter streams must be empty.
 */

export interface FaultOptions {
  /** Orders to place. */
  orders: number;
  /** Requests in flight at once. @defaultValue 16 */
  concurrency?: number;
  /** Seed of the kill schedule, printed so a failing run can be replayed. @defaultValue random */
  seed?: number;
  /** Mean time between two kills, in ms. @defaultValue 700 */
  killEveryMs?: number;
  /** How long to wait, once the orders are in, for the system to settle. @defaultValue 120000 */
  settleTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface FaultReport {
  seed: number;
  ordersAccepted: number;
  /** Requests answered with something other than 202 (or not at all) and sent again with the same key. */
  retriedRequests: number;
  /** SIGKILLs of consumer instances. */
  kills: number;
  /** SIGTERMs of consumer instances: graceful stops in the middle of the work. */
  terms: number;
  redisRestarts: number;
  /** `payment-events` entries per accepted order: all must be 1. */
  payments: Histogram;
  mails: Histogram;
  sms: Histogram;
  /** Payments, mails or SMS for orders nobody placed. */
  strays: number;
  /**
   * Calls to the sender per (order, channel), from its log lines. More than one is allowed only
   * when a process was SIGKILLed between the provider's answer and the record, at most one per
   * send in flight at such a kill; none, only when a SIGKILL took the log line with it.
   */
  sends: Histogram;
  /** SIGKILLs of notification-service instances. */
  notificationKills: number;
  /**
   * The most sends one SIGKILL of a notification instance can catch between the provider's
   * answer and the record: its handlers running at once, over its two subscriptions.
   */
  sendsInFlightPerKill: number;
  /** SIGTERMs to running instances that did not end in exit code 0 within their own 15 s limit. */
  badStops: string[];
  pending: Record<string, number>;
  deadLetters: Record<string, number>;
  durationMs: number;
}

/** How many orders had 0, 1, 2... of something. */
export type Histogram = Record<number, number>;

const GROUPS = [
  ['order-events', 'payment-service-group'],
  ['order-events', 'notification-service-group'],
  ['payment-events', 'notification-service-group'],
] as const;
const USERS = 50;
/** SIGKILLs a run sees at least (and half as many SIGTERMs), however quickly its orders go through. */
const MIN_KILLS = 6;

/** A consumer instance that can be killed and started again. */
class Instance {
  private child: ChildProcess | undefined;
  private tail = '';
  kills = 0;
  /** Graceful stops that did not end with exit code 0 in time, as `exit <code>`. */
  readonly badStops: string[] = [];
  /** Whether it has started listening (and handles signals) since its last start. */
  private up = false;

  constructor(
    readonly service: ServiceName,
    /** A fixed consumer name (a restart picks up its own pending entries at once), or none (a new `hostname-pid`). */
    private readonly consumerName: string | undefined,
    private readonly env: Record<string, string>,
    /** Called with each JSON log line the instance writes. */
    private readonly onLog: (line: { msg?: string; idempotencyKey?: string }) => void = () => {},
  ) {}

  start() {
    this.up = false;
    this.child = spawnService(this.service, {
      ...this.env,
      PORT: '0',
      ...(this.consumerName ? { CONSUMER_NAME: this.consumerName } : {}),
    });
    // Keep the pipes drained (a full pipe would stall the process) and the last lines for failures.
    this.child.stderr!.on(
      'data',
      (chunk: Buffer) => (this.tail = (this.tail + chunk.toString()).slice(-4_000)),
    );
    let partial = '';
    this.child.stdout!.on('data', (chunk: Buffer) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        this.tail = (this.tail + line + '\n').slice(-4_000);
        if (!line.startsWith('{')) continue;
        const entry = JSON.parse(line) as { msg?: string };
        if (entry.msg?.endsWith(' listening')) this.up = true;
        this.onLog(entry);
      }
    });
  }

  /** SIGKILL, or SIGTERM for a graceful stop (which acks what finished and leaves the rest pending). */
  async kill(signal: 'SIGKILL' | 'SIGTERM' = 'SIGKILL') {
    const child = this.child;
    if (!child) return;
    // A process still booting has no signal handlers yet: SIGTERM ends it like SIGKILL does, and
    // says nothing about its graceful stop.
    const graceful = signal === 'SIGTERM' && this.up;
    child.kill(signal);
    if (signal === 'SIGKILL') this.kills += 1;
    // The services give up on their own after 15 s; later than that is a hang.
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const code = await exitOf(child);
    clearTimeout(timer);
    if (graceful && code !== 0) this.badStops.push(`${this.service} exit ${code}`);
  }

  describe() {
    return `--- ${this.service} (${this.consumerName ?? 'pid name'}) ---\n${this.tail}`;
  }
}

export async function runFault(options: FaultOptions): Promise<FaultReport> {
  const log = options.log ?? (() => {});
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  const random = mulberry32(seed);
  const began = Date.now();
  log(`fault run: ${options.orders} orders, seed ${seed}`);

  const server: RedisServer = await startRedisServer({
    args: ['--appendonly', 'yes', '--appendfsync', 'always'],
  });
  const redis = new Redis(server.url, { maxRetriesPerRequest: null });
  redis.on('error', () => {});
  // At info, for the 'listening' and 'mail sent' lines the run watches.
  const env = { REDIS_URL: server.url, LOG_LEVEL: 'info', CLAIM_IDLE_MS: '1000' };
  let order: RunningService | undefined;
  // What the notification instances hand their sender (it logs each message at info): the real
  // sends, beside what the sent log recorded.
  const sends = new Map<string, number>();
  const countSend = ({ msg, idempotencyKey }: { msg?: string; idempotencyKey?: string }) => {
    if ((msg === 'mail sent' || msg === 'sms sent') && idempotencyKey)
      sends.set(idempotencyKey, (sends.get(idempotencyKey) ?? 0) + 1);
  };
  const instances = [
    new Instance('payment-service', 'payment-1', env),
    new Instance('payment-service', undefined, env),
    new Instance('notification-service', 'notification-1', env, countSend),
    new Instance('notification-service', undefined, env, countSend),
  ];
  let chaos = true;
  let kills = 0;
  let terms = 0;
  let redisRestarts = 0;
  try {
    order = await startService('order-service', { ...env, LOG_LEVEL: 'error' });
    for (const instance of instances) instance.start();

    const placing = placeOrders(order.url, options.orders, options.concurrency ?? 16);
    const killing = (async () => {
      const every = options.killEveryMs ?? 700;
      while (chaos) {
        await sleep(every * (0.5 + random()));
        if (!chaos) break;
        const victim = instances[Math.floor(random() * instances.length)]!;
        // Two in three are crashes, every third a graceful stop.
        if ((kills + terms) % 3 !== 2) {
          await victim.kill('SIGKILL');
          kills += 1;
        } else {
          await victim.kill('SIGTERM');
          terms += 1;
        }
        await sleep(random() * 300);
        victim.start();
      }
    })();
    // Redis goes down once, a third of the way in, while everything is busy.
    const restarting = (async () => {
      await waitFor(() => placing.accepted.size >= options.orders / 3, { timeoutMs: 600_000 });
      log('restarting redis');
      await server.restart(500);
      redisRestarts += 1;
    })();

    await Promise.all([placing.done, restarting]);
    // However quick the run, it has seen crashes and graceful stops before the faults end.
    await waitFor(() => kills >= MIN_KILLS && terms >= MIN_KILLS / 2, {
      timeoutMs: 600_000,
      intervalMs: 100,
    });
    chaos = false;
    await killing;
    log(
      `${placing.accepted.size} orders accepted (${placing.retried} requests retried), ${kills} kills, ${terms} stops; settling`,
    );

    const accepted = placing.accepted;
    const settled = async () => {
      const pending = await pendingCounts(redis);
      const payments = await redis.xlen('payment-events');
      const sent = await sentCount(redis);
      return (
        Object.values(pending).every((count) => count === 0) &&
        payments >= accepted.size &&
        sent >= 2 * accepted.size
      );
    };
    await waitFor(settled, {
      timeoutMs: options.settleTimeoutMs ?? 120_000,
      intervalMs: 250,
      what: 'the system to settle',
    }).catch(async (err: Error) => {
      throw new Error(
        `${err.message}\n${JSON.stringify(await pendingCounts(redis))}\n${instances.map((i) => i.describe()).join('\n')}`,
      );
    });
    // Late duplicates, if any, would show up now.
    await sleep(1_500);

    const payments = countBy(
      accepted,
      (await entryFields(redis, 'payment-events')).map((fields) => fields.orderId),
    );
    const notifications = await readSentLogs(redis);
    const mails = countBy(
      accepted,
      notifications.filter((n) => n.channel === 'mail').map((n) => n.orderId),
    );
    const sms = countBy(
      accepted,
      notifications.filter((n) => n.channel === 'sms').map((n) => n.orderId),
    );
    const sendCounts = [...accepted].flatMap((id) => [
      sends.get(`mail:${id}`) ?? 0,
      sends.get(`sms:${id}`) ?? 0,
    ]);
    const deadLetters: Record<string, number> = {};
    for (const stream of ['order-events:dlq', 'payment-events:dlq'])
      deadLetters[stream] = await redis.xlen(stream);
    return {
      seed,
      ordersAccepted: accepted.size,
      retriedRequests: placing.retried,
      kills,
      terms,
      redisRestarts,
      payments: payments.histogram,
      mails: mails.histogram,
      sms: sms.histogram,
      strays: payments.strays + mails.strays + sms.strays,
      sends: histogramOf(sendCounts),
      badStops: instances.flatMap((i) => i.badStops),
      notificationKills: instances.reduce(
        (sum, i) => sum + (i.service === 'notification-service' ? i.kills : 0),
        0,
      ),
      sendsInFlightPerKill: 2 * NOTIFICATION_CONCURRENCY,
      pending: await pendingCounts(redis),
      deadLetters,
      durationMs: Date.now() - began,
    };
  } finally {
    chaos = false;
    await Promise.all(instances.map((instance) => instance.kill()));
    await order?.stop(5_000);
    redis.disconnect();
    await server.stop();
  }
}

/**
 * Places `count` orders, `concurrency` at a time. Each has its own Idempotency-Key and is sent
 * again with it until it gets a 202, as a careful client does: so no order is placed twice, and
 * none is given up on.
 */
function placeOrders(url: string, count: number, concurrency: number) {
  const accepted = new Set<string>();
  const state = { accepted, retried: 0, done: Promise.resolve() };
  let next = 0;
  async function worker() {
    while (next < count) {
      const n = next++;
      const key = randomUUID();
      const body = JSON.stringify({
        userId: `fault-${n % USERS}`,
        productId: `p-${n}`,
        price: 10 + (n % 90),
      });
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
        state.retried += 1;
        if (attempt > 100) throw new Error(`order ${n} not accepted after ${attempt} attempts`);
        await sleep(50 * Math.min(attempt, 10));
      }
    }
  }
  state.done = Promise.all(Array.from({ length: concurrency }, worker)).then(() => {});
  return state;
}

async function pendingCounts(redis: Redis): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const [stream, group] of GROUPS) {
    const [count] = (await redis.xpending(stream, group).catch(() => [-1])) as [number];
    counts[`${stream}/${group}`] = count;
  }
  return counts;
}

async function sentCount(redis: Redis): Promise<number> {
  let total = 0;
  for (let user = 0; user < USERS; user += 1)
    total += await redis.llen(`notification-service:sent:fault-${user}`);
  return total;
}

async function readSentLogs(redis: Redis): Promise<{ channel: string; orderId?: string }[]> {
  const all: { channel: string; orderId?: string }[] = [];
  for (let user = 0; user < USERS; user += 1) {
    const items = await redis.lrange(`notification-service:sent:fault-${user}`, 0, -1);
    all.push(...items.map((item) => JSON.parse(item) as { channel: string; orderId?: string }));
  }
  return all;
}

/** For each accepted order, how many of `orderIds` name it; and how many name no accepted order. */
function countBy(accepted: Set<string>, orderIds: (string | undefined)[]) {
  const perOrder = new Map<string, number>([...accepted].map((id) => [id, 0]));
  let strays = 0;
  for (const id of orderIds) {
    if (id !== undefined && perOrder.has(id)) perOrder.set(id, perOrder.get(id)! + 1);
    else strays += 1;
  }
  return { histogram: histogramOf(perOrder.values()), strays };
}

function histogramOf(counts: Iterable<number>): Histogram {
  const histogram: Histogram = {};
  for (const count of counts) histogram[count] = (histogram[count] ?? 0) + 1;
  return histogram;
}

/** A small seeded generator, so a run's kill schedule can be replayed from its seed. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** The services' default `CONCURRENCY`, which the fault run keeps: what ships is what is tested. */
const NOTIFICATION_CONCURRENCY = parseEnv(consumerEnv(0), {}).CONCURRENCY;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * What is wrong with a run, as sentences; empty when every accepted order was paid, mailed and
 * texted exactly once, each notification reached the sender (twice only where a SIGKILL hit the
 * window the Guarantees leave open), nothing is pending and no entry was dead-lettered.
 */
export function problemsOf(report: FaultReport): string[] {
  const problems: string[] = [];
  const onlyOnce = (histogram: Histogram) => Object.keys(histogram).join() === '1';
  for (const what of ['payments', 'mails', 'sms'] as const) {
    if (!onlyOnce(report[what])) problems.push(`${what} per order: ${JSON.stringify(report[what])}`);
  }
  if (report.badStops.length > 0) problems.push(`graceful stops that failed: ${report.badStops.join(', ')}`);
  if (report.strays > 0) problems.push(`${report.strays} effects for orders nobody placed`);
  // The sends are counted from the sender's log lines, which pino writes asynchronously: a SIGKILL
  // can take the last few with it. So a notification recorded as sent but not seen in the log is
  // allowed for each send in flight at a SIGKILL of a notification instance, no more; so is a repeat.
  const allowed = report.notificationKills * report.sendsInFlightPerKill;
  if ((report.sends[0] ?? 0) > allowed)
    problems.push(`${report.sends[0]} notifications never seen reaching the sender`);
  const extra = Object.entries(report.sends).reduce(
    (sum, [times, n]) => sum + Math.max(0, Number(times) - 1) * n,
    0,
  );
  if (extra > allowed)
    problems.push(
      `${extra} repeated sends, more than the ${report.notificationKills} SIGKILLs could cause (${allowed})`,
    );
  for (const [where, count] of Object.entries(report.pending))
    if (count !== 0) problems.push(`${count} pending in ${where}`);
  for (const [stream, count] of Object.entries(report.deadLetters))
    if (count !== 0) problems.push(`${count} in ${stream}`);
  return problems;
}

/** The report as a few lines of text. */
export function formatReport(report: FaultReport): string {
  const show = (h: Histogram) =>
    Object.entries(h)
      .map(([times, orders]) => `${orders} orders x${times}`)
      .join(', ');
  return [
    `seed ${report.seed}, ${(report.durationMs / 1000).toFixed(1)} s`,
    `orders accepted: ${report.ordersAccepted} (${report.retriedRequests} requests retried with their Idempotency-Key)`,
    `faults: ${report.kills} SIGKILLs and ${report.terms} SIGTERMs of consumer instances, ${report.redisRestarts} Redis restart`,
    `payments per order: ${show(report.payments)}`,
    `mails per order:    ${show(report.mails)}`,
    `SMS per order:      ${show(report.sms)}`,
    `sender calls per (order, channel): ${show(report.sends).replaceAll('orders', 'notifications')} (${report.notificationKills} notification-service SIGKILLs)`,
    `strays: ${report.strays}; pending: ${JSON.stringify(report.pending)}; dead letters: ${JSON.stringify(report.deadLetters)}`,
  ].join('\n');
}
