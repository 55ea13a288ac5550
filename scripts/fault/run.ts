import type { ChildProcess } from 'node:child_process';
import { consumerEnv, parseEnv } from '../../packages/stream-kit/src/service.ts';
import { Redis } from 'ioredis';
import { startRedisServer, type RedisServer } from '../../harness/redis-server.ts';
import { placeOrders } from './orders.ts';
import {
  caughtUp,
  histogramOf,
  outcomeOf,
  pendingCounts,
  quiescent,
  sentCount,
  type Histogram,
} from './outcome.ts';
import {
  describeStall,
  endOutOfMemory,
  info,
  startOutOfMemory,
  stallRedis,
  TROUBLE_SERVER_ARGS,
  writeRefusal,
  type Stall,
} from './redis-trouble.ts';
import {
  exitOf,
  spawnService,
  startService,
  type RunningService,
  type ServiceName,
} from '../../harness/services.ts';
import { waitFor } from '../../harness/wait.ts';

export type { Histogram } from './outcome.ts';

/*
 * The fault run: orders placed over HTTP while payment-service and notification-service, two
 * instances each, are killed with SIGKILL (or stopped with SIGTERM) and restarted at random, and
 * Redis (AOF, fsync always) is in trouble: it runs out of memory for 20-30 s on a backlog of
 * orders, stalls (DEBUG SLEEP), pauses its clients' writes, then all their commands, and is
 * restarted once (see `troubleSchedule`). Then every accepted order must have exactly one payment,
 * one mail and one SMS, nothing may be left pending, and the dead-letter streams must be empty.
 */

export interface FaultOptions {
  /** Orders to place. */
  orders: number;
  /** Requests in flight at once. @defaultValue 16 */
  concurrency?: number;
  /** Seed of the kill and trouble schedules, printed so a failing run can be replayed. @defaultValue random */
  seed?: number;
  /** Mean time between two kills, in ms. @defaultValue 700 */
  killEveryMs?: number;
  /**
   * The consumers' `CLAIM_IDLE_MS`: how long the entries of a crashed instance wait before another
   * takes them over. `undefined` leaves it unset: the services' shipped default (60 s), what
   * users run. 1000 makes a quick run. @defaultValue undefined
   */
  claimIdleMs?: number;
  /**
   * Whether Redis runs out of memory and stalls (see `troubleSchedule`) besides its one restart.
   * @defaultValue true
   */
  redisTrouble?: boolean;
  /**
   * How long to wait, once the orders are in, for the system to settle: entries a SIGKILL left
   * under a name that never comes back wait `claimIdleMs`, plus up to 30 s for the next reclaim
   * pass. @defaultValue 120 s plus twice the claim time: 240 s at the default 60 s
   */
  settleTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface FaultReport {
  seed: number;
  /** The consumers' `CLAIM_IDLE_MS`; undefined: the services' default. */
  claimIdleMs: number | undefined;
  ordersAccepted: number;
  /** Requests answered with something other than 202 (or not at all) and sent again with the same key. */
  retriedRequests: number;
  /** SIGKILLs of consumer instances. */
  kills: number;
  /** SIGTERMs of consumer instances: graceful stops in the middle of the work. */
  terms: number;
  redisRestarts: number;
  /** Whether the run had Redis trouble besides its restart. */
  redisTrouble: boolean;
  /** Out-of-memory windows in which Redis was seen refusing a write. */
  oomWindows: number;
  /** Stalls: DEBUG SLEEP and CLIENT PAUSE (WRITE, ALL). */
  stalls: number;
  /** What the Redis trouble was, one line per event, with when it began (restart included). */
  trouble: string[];
  /** Trouble that did not happen as planned: a window in which Redis took writes, a failed AOF rewrite. */
  troubleFailures: string[];
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
  /** Why entries were dead-lettered, if some were (see `Outcome.deadLetterReasons`). */
  deadLetterReasons: string[];
  durationMs: number;
}

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
  /** When it started listening, since its last start. */
  private upAt: number | undefined;
  /** Held with SIGSTOP (see `hold`): a process started meanwhile is stopped too. */
  private held = false;

  constructor(
    readonly service: ServiceName,
    /** A fixed consumer name (a restart picks up its own pending entries at once), or none (a new `hostname-pid`). */
    readonly consumerName: string | undefined,
    private readonly env: Record<string, string>,
    /** Called with each JSON log line the instance writes. */
    private readonly onLog: (line: { msg?: string; idempotencyKey?: string }) => void = () => {},
  ) {}

  start() {
    this.up = false;
    this.upAt = undefined;
    this.child = spawnService(this.service, {
      ...this.env,
      PORT: '0',
      ...(this.consumerName ? { CONSUMER_NAME: this.consumerName } : {}),
    });
    if (this.held) this.child.kill('SIGSTOP');
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
        if (entry.msg?.endsWith(' listening')) {
          this.up = true;
          this.upAt = Date.now();
        }
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

  /** Whether it has been listening (its subscriptions started) for `ms` at least. */
  upFor(ms: number): boolean {
    return this.upAt !== undefined && Date.now() - this.upAt >= ms;
  }

  /** Stops the process where it is (SIGSTOP), a stalled consumer: its entries wait, read or not. */
  hold() {
    this.held = true;
    this.child?.kill('SIGSTOP');
  }

  /** Lets a held process go on (SIGCONT). */
  release() {
    this.held = false;
    this.child?.kill('SIGCONT');
  }

  describe() {
    return `--- ${this.service} (${this.consumerName ?? 'pid name'}) ---\n${this.tail}`;
  }
}

export async function runFault(options: FaultOptions): Promise<FaultReport> {
  const log = options.log ?? (() => {});
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  // Two generators, so that the kill schedule and the trouble schedule each replay from the seed
  // whatever order the two loops draw in.
  const random = mulberry32(seed);
  const redisTrouble = options.redisTrouble ?? true;
  const concurrency = options.concurrency ?? 16;
  const schedule = troubleSchedule(mulberry32(seed ^ 0x5eed), options.orders, redisTrouble);
  const began = Date.now();
  const claim =
    options.claimIdleMs === undefined ? 'the default CLAIM_IDLE_MS' : `CLAIM_IDLE_MS ${options.claimIdleMs}`;
  log(`fault run: ${options.orders} orders, seed ${seed}, ${claim}`);

  const server: RedisServer = await startRedisServer({
    args: ['--appendonly', 'yes', '--appendfsync', 'always', ...TROUBLE_SERVER_ARGS],
  });
  // The run's admin connection: trouble and bookkeeping. It waits through the restart, and never
  // writes while Redis is out of memory.
  const redis = new Redis(server.url, { maxRetriesPerRequest: null });
  redis.on('error', () => {});
  // At info, for the 'listening' and 'mail sent' lines the run watches.
  const env: { REDIS_URL: string } & Record<string, string> = {
    REDIS_URL: server.url,
    LOG_LEVEL: 'info',
    ...(options.claimIdleMs === undefined ? {} : { CLAIM_IDLE_MS: String(options.claimIdleMs) }),
  };
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
  const counts = { redisRestarts: 0, oomWindows: 0, stalls: 0 };
  const trouble: string[] = [];
  const troubleFailures: string[] = [];
  // While the consumers are held the kill loop waits; holding waits for a kill under way. During
  // an out-of-memory window the spared instances are not killed.
  const holding = { value: false, killing: false, spared: new Set<Instance>() };
  try {
    order = await startService('order-service', { ...env, LOG_LEVEL: 'error' });
    for (const instance of instances) instance.start();

    // Orders are held back before each trouble until it has started, so each one meets orders
    // still coming in, however fast they go.
    let troubleStarted = 0;
    const margin = Math.max(2 * concurrency, Math.ceil(options.orders / 10));
    // While the consumers are readied for a trouble, orders wait (`paused`); the backlog they
    // are held for is then allowed on top (`extra`).
    const gate = { paused: undefined as number | undefined, extra: 0 };
    const placing = placeOrders(order.url, {
      count: options.orders,
      concurrency,
      limit: () => gate.paused ?? (schedule[troubleStarted]?.afterOrders ?? Infinity) + margin + gate.extra,
    });
    const killing = (async () => {
      const every = options.killEveryMs ?? 700;
      while (chaos) {
        await sleep(every * (0.5 + random()));
        if (!chaos) break;
        // Held instances wait for the out-of-memory window, not for a signal.
        if (holding.value) continue;
        holding.killing = true;
        const victims = instances.filter((instance) => !holding.spared.has(instance));
        const victim = victims[Math.floor(random() * victims.length)]!;
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
        holding.killing = false;
      }
    })();
    // One trouble at a time, in the schedule's order, each once enough orders are in.
    const troubling = (async () => {
      for (const { afterOrders, what } of schedule) {
        await waitFor(() => !chaos || placing.accepted.size >= afterOrders, {
          timeoutMs: 3_600_000,
          intervalMs: 50,
        });
        if (!chaos) return;
        troubleStarted += 1;
        const when = `${seconds(Date.now() - began)} s, ${placing.accepted.size} orders in`;
        log(`${when}: ${what.kind === 'stall' ? describeStall(what.stall) : what.kind}`);
        const line = await cause(what, {
          redis,
          server,
          counts,
          failures: troubleFailures,
          consumers: {
            async hold() {
              holding.value = true;
              gate.paused = placing.started;
              // A graceful stop under way must not be frozen half-way, and the trouble should meet
              // consumers at work, not ones still starting.
              await waitFor(() => !holding.killing, { timeoutMs: 60_000, intervalMs: 20 });
              await waitFor(() => instances.every((instance) => instance.upFor(1_000)), {
                timeoutMs: 30_000,
                intervalMs: 20,
              }).catch(() => {});
              for (const instance of instances) instance.hold();
              const from = placing.accepted.size;
              const backlog = Math.floor(margin / 2);
              gate.extra += backlog;
              gate.paused = undefined;
              await waitFor(() => placing.accepted.size >= from + backlog, { timeoutMs: 15_000 }).catch(
                () => {},
              );
              return placing.accepted.size - from;
            },
            release() {
              for (const instance of instances) instance.release();
              holding.value = false;
            },
            spare(which) {
              holding.spared = new Set(
                instances.filter(
                  (i) => which !== undefined && (i.consumerName !== undefined) === (which === 'fixed'),
                ),
              );
            },
          },
        });
        trouble.push(`${when}: ${line}`);
        log(`  ${line}`);
      }
    })();

    await Promise.all([placing.done, troubling]);
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
    const settleTimeoutMs =
      options.settleTimeoutMs ?? 120_000 + 2 * (options.claimIdleMs ?? DEFAULT_CLAIM_IDLE_MS);
    // Caught up, or settled short of it (something dead-lettered or lost): the report says which.
    let progressAt = Date.now();
    const settled = async () => {
      if (Date.now() - progressAt >= 10_000) {
        progressAt = Date.now();
        const [pending, payments, sent] = [
          await pendingCounts(redis),
          await redis.xlen('payment-events'),
          await sentCount(redis, placing.userIds),
        ];
        log(`  ${payments} payments, ${sent} notifications, pending ${JSON.stringify(pending)}`);
      }
      return (await caughtUp(redis, placing)) || quiescent(redis);
    };
    await waitFor(settled, {
      timeoutMs: settleTimeoutMs,
      intervalMs: 250,
      what: 'the system to settle',
    }).catch(async (err: Error) => {
      const outcome = await outcomeOf(redis, placing);
      throw new Error(
        `${err.message}\n${JSON.stringify(outcome)}\n${instances.map((i) => i.describe()).join('\n')}`,
      );
    });
    // Late duplicates, if any, would show up now.
    await sleep(1_500);

    const outcome = await outcomeOf(redis, placing);
    const sendCounts = [...accepted].flatMap((id) => [
      sends.get(`mail:${id}`) ?? 0,
      sends.get(`sms:${id}`) ?? 0,
    ]);
    return {
      seed,
      claimIdleMs: options.claimIdleMs,
      ordersAccepted: accepted.size,
      retriedRequests: placing.retried,
      kills,
      terms,
      ...counts,
      redisTrouble,
      trouble,
      troubleFailures,
      payments: outcome.payments,
      mails: outcome.mails,
      sms: outcome.sms,
      strays: outcome.strays,
      sends: histogramOf(sendCounts),
      badStops: instances.flatMap((i) => i.badStops),
      notificationKills: instances.reduce(
        (sum, i) => sum + (i.service === 'notification-service' ? i.kills : 0),
        0,
      ),
      sendsInFlightPerKill: 2 * SERVICE_DEFAULTS.CONCURRENCY,
      pending: outcome.pending,
      deadLetters: outcome.deadLetters,
      deadLetterReasons: outcome.deadLetterReasons,
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

/** One kind of Redis trouble. */
export type Trouble =
  | { kind: 'restart' }
  | {
      kind: 'out of memory';
      holdMs: number;
      /** The instances (of both services) not killed during the window: under a fixed name, or a pid name. */
      spared: 'fixed' | 'pid';
    }
  | { kind: 'stall'; stall: Stall };

/**
 * The run's Redis trouble, drawn from its seed: without `redisTrouble`, the one restart a third of
 * the way in. With it, in a random order: an out-of-memory window held 20-30 s, a `DEBUG SLEEP`
 * of 2-3 s, `CLIENT PAUSE 3000 WRITE`, `CLIENT PAUSE 3000 ALL`, and the restart, always after the
 * out-of-memory window (Redis must come back from its AOF after one); each once 5-85% of the orders
 * are in, one at a time. The run holds orders back until the next trouble has started, so each
 * meets orders still coming in. Each but the restart also meets consumers at work: they are held
 * (SIGSTOP) until a backlog of orders waits for them, and let go into it just before. During the
 * out-of-memory window one instance of each service lives through it (those under a fixed
 * consumer name, or those under a pid name), while the other goes on being killed: a consumer that
 * was killed and restarted in the window and one that kept working are both put to the test.
 */
export function troubleSchedule(
  random: () => number,
  orders: number,
  redisTrouble: boolean,
): { afterOrders: number; what: Trouble }[] {
  if (!redisTrouble) return [{ afterOrders: Math.ceil(orders / 3), what: { kind: 'restart' } }];
  const troubles: Trouble[] = [
    {
      kind: 'out of memory',
      holdMs: Math.round(20_000 + random() * 10_000),
      spared: random() < 0.5 ? 'fixed' : 'pid',
    },
    { kind: 'stall', stall: { kind: 'debug-sleep', ms: Math.round(2_000 + random() * 1_000) } },
    { kind: 'stall', stall: { kind: 'pause', mode: 'WRITE', ms: 3_000 } },
    { kind: 'stall', stall: { kind: 'pause', mode: 'ALL', ms: 3_000 } },
  ];
  for (let i = troubles.length - 1; i > 0; i -= 1) {
    const j = Math.floor(random() * (i + 1));
    [troubles[i], troubles[j]] = [troubles[j]!, troubles[i]!];
  }
  const oom = troubles.findIndex((t) => t.kind === 'out of memory');
  troubles.splice(oom + 1 + Math.floor(random() * (troubles.length - oom)), 0, { kind: 'restart' });
  const marks = troubles.map(() => 0.05 + random() * 0.8).sort((a, b) => a - b);
  return troubles.map((what, i) => ({ afterOrders: Math.floor(marks[i]! * orders), what }));
}

/** Causes `what` and resolves, once it is over, to a line saying how it went. */
async function cause(
  what: Trouble,
  {
    redis,
    server,
    counts,
    failures,
    consumers,
  }: {
    redis: Redis;
    server: RedisServer;
    counts: { redisRestarts: number; oomWindows: number; stalls: number };
    failures: string[];
    consumers: {
      /** Holds the consumer instances (SIGSTOP) until orders wait for them; resolves to how many do. */
      hold(): Promise<number>;
      release(): void;
      /** Spares the instances under a fixed name, or a pid name, from kills; undefined: none. */
      spare(which: 'fixed' | 'pid' | undefined): void;
    };
  },
): Promise<string> {
  switch (what.kind) {
    case 'restart':
      await server.restart(500);
      counts.redisRestarts += 1;
      return 'Redis restarted (down 0.5 s), back from its AOF';
    case 'stall': {
      const backlog = await consumers.hold();
      consumers.release();
      // Into the backlog: handlers are under way when Redis stops answering.
      await sleep(100);
      await stallRedis(redis, what.stall);
      counts.stalls += 1;
      return `${describeStall(what.stall)} on a backlog of ${backlog} orders: over`;
    }
    case 'out of memory': {
      consumers.spare(what.spared);
      const backlog = await consumers.hold();
      let window;
      try {
        window = await startOutOfMemory(redis);
      } catch (err) {
        consumers.spare(undefined);
        consumers.release();
        failures.push(`out of memory: ${(err as Error).message}`);
        return `out of memory: did not happen (${(err as Error).message})`;
      }
      counts.oomWindows += 1;
      consumers.release();
      await sleep(what.holdMs);
      consumers.spare(undefined);
      // Memory moves: say whether the window still held at its end.
      const stillRefused = (await writeRefusal(redis)) !== undefined;
      await endOutOfMemory(redis);
      const rewrite = await rewriteAof(redis);
      if (rewrite !== 'ok') failures.push(`AOF rewrite after the out-of-memory window: ${rewrite}`);
      return [
        `out of memory for ${seconds(what.holdMs)} s on a backlog of ${backlog} orders, the instances under a ${what.spared} name spared from kills: maxmemory ${megabytes(window.maxmemory)} under ${megabytes(window.counted)} used`,
        `SET refused at the start ("${window.refusal}") and ${stillRefused ? 'still at the end' : 'taken again at the end (memory fell)'}`,
        `then maxmemory 0 and an AOF rewrite: ${rewrite}`,
      ].join('; ');
    }
  }
}

/** BGREWRITEAOF, waited for: `ok` or what went wrong. */
async function rewriteAof(redis: Redis): Promise<string> {
  try {
    await redis.bgrewriteaof();
  } catch (err) {
    // One started by Redis itself does as well.
    if (!/already in progress/.test((err as Error).message)) return (err as Error).message;
  }
  const done = await waitFor(
    async () => {
      const persistence = await info(redis, 'persistence');
      const idle = persistence.aof_rewrite_in_progress === '0' && persistence.aof_rewrite_scheduled === '0';
      return idle && persistence;
    },
    { timeoutMs: 60_000, intervalMs: 100, what: 'the AOF rewrite' },
  ).catch((err: Error) => err);
  return done instanceof Error ? done.message : (done.aof_last_bgrewrite_status ?? 'unknown');
}

/** A small seeded generator, so a run's schedules can be replayed from its seed. */
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

/**
 * The services' defaults: `CONCURRENCY`, which the fault run keeps (what ships is what is
 * tested), and `CLAIM_IDLE_MS`, which it keeps unless told otherwise.
 */
const SERVICE_DEFAULTS = parseEnv(consumerEnv(0), {});
const DEFAULT_CLAIM_IDLE_MS = SERVICE_DEFAULTS.CLAIM_IDLE_MS;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const seconds = (ms: number) => (ms / 1000).toFixed(1);
const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;
const megabytes = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(2)} MB`;

/**
 * What is wrong with a run, as sentences; empty when every accepted order was paid, mailed and
 * texted exactly once, each notification reached the sender (twice only where a SIGKILL hit the
 * window the Guarantees leave open), nothing is pending, no entry was dead-lettered, and the Redis
 * trouble happened as planned (with `redisTrouble`, an out-of-memory window that refused writes
 * and three stalls).
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
  problems.push(...report.troubleFailures);
  if (report.redisTrouble && report.oomWindows === 0) problems.push('no out-of-memory window refused writes');
  if (report.redisTrouble && report.stalls < 3) problems.push(`${report.stalls} stalls, not 3`);
  return problems;
}

/** The report as a few lines of text. */
export function formatReport(report: FaultReport): string {
  const show = (h: Histogram) =>
    Object.entries(h)
      .map(([times, orders]) => `${orders} orders x${times}`)
      .join(', ');
  const claim =
    report.claimIdleMs === undefined
      ? `CLAIM_IDLE_MS the services' default (${DEFAULT_CLAIM_IDLE_MS})`
      : `CLAIM_IDLE_MS ${report.claimIdleMs}`;
  return [
    `seed ${report.seed}, ${(report.durationMs / 1000).toFixed(1)} s, ${claim}`,
    `orders accepted: ${report.ordersAccepted} (${report.retriedRequests} requests retried with their Idempotency-Key)`,
    `faults: ${report.kills} SIGKILLs and ${report.terms} SIGTERMs of consumer instances, ${report.redisRestarts} Redis restart`,
    report.redisTrouble
      ? `redis trouble: ${plural(report.oomWindows, 'out-of-memory window')}, ${plural(report.stalls, 'stall')}`
      : 'redis trouble: none but the restart (--no-redis-trouble)',
    ...report.trouble.map((line) => `  at ${line}`),
    `payments per order: ${show(report.payments)}`,
    `mails per order:    ${show(report.mails)}`,
    `SMS per order:      ${show(report.sms)}`,
    `sender calls per (order, channel): ${show(report.sends).replaceAll('orders', 'notifications')} (${report.notificationKills} notification-service SIGKILLs)`,
    `strays: ${report.strays}; pending: ${JSON.stringify(report.pending)}; dead letters: ${JSON.stringify(report.deadLetters)}`,
    ...report.deadLetterReasons.slice(0, 10).map((reason) => `  dead-lettered: ${reason}`),
    ...(report.deadLetterReasons.length > 10
      ? [`  ... and ${report.deadLetterReasons.length - 10} more reasons`]
      : []),
  ].join('\n');
}
