import { PaymentEvents } from '@msa/stream-kit/events';
import type { RedisClient } from '@msa/stream-kit';
import { Cluster, Redis } from 'ioredis';
import { mulberry32 } from '../../harness/random.ts';
import { startRedisCluster } from '../../harness/redis-cluster.ts';
import { startRedisServer } from '../../harness/redis-server.ts';
import { groupOf, startService, type RunningService } from '../../harness/services.ts';
import { deferred, waitFor } from '../../harness/wait.ts';
import { DEFAULT_CONCURRENCY as NOTIFICATION_CONCURRENCY } from '@msa/notification-service';
import { DEFAULT_PAYMENT_TIMEOUT_MS } from '@msa/order-service';
import { DEFAULT_CLAIM_IDLE_MS, Instance, PAUSE_MS } from './instance.ts';
import { placeOrders } from './orders.ts';
import {
  CONSUMER_GROUPS,
  histogramOf,
  orderStates,
  outcomeOf,
  sentNotifications,
  pendingCounts,
  quiescent,
  sentCount,
} from './outcome.ts';
import { describeStall, TROUBLE_SERVER_ARGS } from './redis-trouble.ts';
import type { FaultReport } from './report.ts';
import { TakeoverWatch, takeoversOf, type Naming } from './takeover.ts';
import { cause, troubleSchedule } from './trouble-schedule.ts';

/*
 * The fault run: orders placed over HTTP while payment-service and notification-service, two
 * instances each, are killed with SIGKILL (or stopped with SIGTERM) and restarted, or paused
 * (SIGSTOP, then SIGCONT a few seconds later), at random, and
 * Redis (AOF, fsync always) is in trouble: it runs out of memory for 20-30 s on a backlog of
 * orders, stalls (DEBUG SLEEP), pauses its clients' writes, then all their commands, and is
 * restarted once (see `troubleSchedule`). Then every accepted order must have exactly one payment,
 * one mail and one SMS, nothing may be left pending, and the dead-letter streams must be empty.
 * Beside that, it measures how long the entries each SIGKILL left behind take to be handled.
 */

export interface FaultOptions {
  /** Orders to place. */
  orders: number;
  /** Requests in flight at once. @defaultValue 16 */
  concurrency?: number;
  /** Seed of the kill and trouble schedules, printed so a failing run can be replayed. @defaultValue random */
  seed?: number;
  /**
   * Mean time between two kills (SIGKILL or SIGTERM), in ms, not counting the restart; pauses
   * come on top, about one fault in four (a pause every `4 * killEveryMs`). @defaultValue 700
   */
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
  /**
   * Run on a Redis Cluster of three masters with a replica each (AOF, fsync always), the services
   * with `REDIS_CLUSTER=true`; the restart restarts the master of order-events. Not with
   * `redisTrouble`: its stalls and out-of-memory window act on one server. @defaultValue false
   */
  cluster?: boolean;
  /**
   * On a cluster: order-service's DURABLE_REPLICAS, how many replicas hold an order before its
   * 202. 0 counts the orders a failover loses. @defaultValue 1
   */
  durableReplicas?: number;
  log?: (line: string) => void;
}

/** One order in this many is priced above payment-service's default limit (see `placeOrders`). */
const OVER_LIMIT_EVERY = 20;
/** SIGKILLs a run sees at least (and half as many SIGTERMs), however quickly its orders go through. */
const MIN_KILLS = 6;

export async function runFault(options: FaultOptions): Promise<FaultReport> {
  const log = options.log ?? (() => {});
  const seed = options.seed ?? Math.floor(Math.random() * 2 ** 31);
  // A generator per schedule (kills, pauses, trouble), so that each replays from the seed whatever
  // order the loops draw in, and a seed from before the pauses replays its kills.
  const random = mulberry32(seed);
  const pauseRandom = mulberry32(seed ^ 0x9a05e);
  const cluster = options.cluster ?? false;
  const redisTrouble = options.redisTrouble ?? !cluster;
  if (cluster && redisTrouble)
    throw new Error('a cluster run has no stalls or out-of-memory window: pass redisTrouble false');
  const concurrency = options.concurrency ?? 16;
  const schedule = troubleSchedule(
    mulberry32(seed ^ 0x5eed),
    options.orders,
    redisTrouble,
    DEFAULT_PAYMENT_TIMEOUT_MS,
    cluster,
  );
  const durableReplicas = cluster ? (options.durableReplicas ?? 1) : 0;
  const began = Date.now();
  const claim =
    options.claimIdleMs === undefined ? 'the default CLAIM_IDLE_MS' : `CLAIM_IDLE_MS ${options.claimIdleMs}`;
  log(`fault run: ${options.orders} orders, seed ${seed}, ${claim}${cluster ? ', on a Redis Cluster' : ''}`);

  const persistence = ['--appendonly', 'yes', '--appendfsync', 'always'];
  const server = cluster
    ? await clusterServer(persistence)
    : await startRedisServer({ args: [...persistence, ...TROUBLE_SERVER_ARGS] }).then((one) =>
        Object.assign(one, { name: 'Redis' }),
      );
  // The run's admin connection: trouble and bookkeeping. It waits through the restart, and never
  // writes while Redis is out of memory.
  const connect = (): RedisClient =>
    cluster
      ? new Cluster([{ host: '127.0.0.1', port: server.port }], {
          redisOptions: { maxRetriesPerRequest: null },
        })
      : new Redis(server.url, { maxRetriesPerRequest: null });
  const redis = connect();
  redis.on('error', () => {});
  // At info, for the 'listening' and 'mail sent' lines the run watches.
  const env: { REDIS_URL: string } & Record<string, string> = {
    REDIS_URL: server.url,
    ...(cluster ? { REDIS_CLUSTER: 'true', DURABLE_REPLICAS: String(durableReplicas) } : {}),
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
  const counts = { redisRestarts: 0, oomWindows: 0, stalls: 0, outages: 0, failovers: 0 };
  const trouble: string[] = [];
  const troubleFailures: string[] = [];
  // While the consumers are held the kill loop waits; holding waits for a kill under way. During
  // an out-of-memory window the spared instances are not killed (nor paused).
  const holding = { value: false, killing: false, spared: new Set<Instance>() };
  // The pauses under way, each its timer and the promise of its end.
  const paused = new Map<NodeJS.Timeout, Promise<void>>();
  const pauseFor = (instance: Instance, ms: number) => {
    const resume = instance.pause();
    const ended = deferred();
    const timer = setTimeout(() => {
      paused.delete(timer);
      resume();
      ended.resolve();
    }, ms);
    paused.set(timer, ended.promise);
  };
  // Its own connection: polling every 100 ms must not queue behind the trouble's commands.
  const watchRedis = connect();
  watchRedis.on('error', () => {});
  const watch = new TakeoverWatch(watchRedis);
  const killsBy: Record<Naming, number> = { fixed: 0, perStart: 0 };
  // When each Redis trouble began and ended: no entry can be acked in some of it, whatever the takeover.
  const troubleSpans: [number, number][] = [];
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
      // One in twenty above the payment limit: declined and cancelled, the saga's other way.
      overLimitEvery: OVER_LIMIT_EVERY,
    });
    watch.start();
    const every = options.killEveryMs ?? 700;
    // The instance being killed and restarted, which is not paused meanwhile.
    let killingNow: Instance | undefined;
    const killing = (async () => {
      while (chaos) {
        await sleep(every * (0.5 + random()));
        if (!chaos) break;
        // Held instances wait for the out-of-memory window, not for a signal.
        if (holding.value) continue;
        holding.killing = true;
        const victims = instances.filter((instance) => !holding.spared.has(instance));
        const victim = victims[Math.floor(random() * victims.length)]!;
        killingNow = victim;
        // Two in three are crashes, every third a graceful stop.
        if ((kills + terms) % 3 !== 2) {
          const consumer = victim.consumer;
          const killedAt = Date.now();
          await victim.kill('SIGKILL');
          // Before the restart, which under a fixed name takes the same entries back.
          const naming = victim.consumerName === undefined ? 'perStart' : 'fixed';
          const groups = CONSUMER_GROUPS.filter(([, group]) => group === groupOf(victim.service));
          if (consumer !== undefined) await watch.killed(victim.service, consumer, naming, groups, killedAt);
          killsBy[naming] += 1;
          kills += 1;
        } else {
          await victim.kill('SIGTERM');
          terms += 1;
        }
        await sleep(random() * 300);
        victim.start();
        killingNow = undefined;
        holding.killing = false;
      }
    })();
    // Pauses, a loop of their own beside the kills, which keep their pace and their draws: about
    // one fault in four (a kill takes `every` plus its restart, ~0.2 s).
    const pausing = (async () => {
      while (chaos) {
        await sleep(4 * every * (0.5 + pauseRandom()));
        if (!chaos) break;
        if (holding.value) continue;
        const running = instances.filter((i) => !holding.spared.has(i) && !i.paused && i !== killingNow);
        if (running.length === 0) continue;
        const ms = Math.round(PAUSE_MS.min + pauseRandom() * (PAUSE_MS.max - PAUSE_MS.min));
        pauseFor(running[Math.floor(pauseRandom() * running.length)]!, ms);
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
        const from = Date.now();
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
            async paymentOutage(ms) {
              const payments = instances.filter((i) => i.service === 'payment-service');
              // Left alone by the kills and pauses, once a kill under way (and its restart) is over.
              holding.spared = new Set(payments);
              await waitFor(() => !holding.killing, { timeoutMs: 60_000, intervalMs: 20 });
              await Promise.all(payments.map((i) => i.kill('SIGKILL')));
              // Some orders, not the rest of the run, come in meanwhile: each of them times out.
              const from = placing.accepted.size;
              gate.paused = placing.started + Math.max(2 * concurrency, Math.ceil(options.orders / 20));
              await sleep(ms);
              gate.paused = undefined;
              for (const instance of payments) instance.start();
              holding.spared = new Set();
              return placing.accepted.size - from;
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
        troubleSpans.push([from, Date.now()]);
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
    await Promise.all([killing, pausing]);
    // Every pause runs its course: the settling meets every instance running.
    await Promise.all(paused.values());
    const pauses = instances.reduce((sum, i) => sum + i.pauses, 0);
    log(
      `${placing.accepted.size} orders accepted (${placing.retried} requests retried), ${kills} kills, ${terms} stops, ${pauses} pauses; settling`,
    );

    const accepted = placing.accepted;
    // From here on no fault: every order must be PAID or CANCELLED within the payment timeout, plus
    // a few seconds (a takeover, the projection), whatever the faults left behind.
    const faultsEndedAt = Date.now();
    let finalAt: number | undefined;
    let finalLookAt = 0;
    const lookFinal = async () => {
      if (finalAt !== undefined || Date.now() - finalLookAt < 1_000) return;
      finalLookAt = Date.now();
      const states = await orderStates(redis, accepted);
      if ([...states.values()].every((state) => /^(PAID|CANCELLED)\b/.test(state))) finalAt = finalLookAt;
    };
    const settleTimeoutMs =
      options.settleTimeoutMs ?? 120_000 + 2 * (options.claimIdleMs ?? DEFAULT_CLAIM_IDLE_MS);
    // Caught up, or settled short of it (something dead-lettered or lost): the report says which.
    let progressAt = Date.now();
    const settled = async () => {
      if (Date.now() - progressAt >= 10_000) {
        progressAt = Date.now();
        const [pending, payments, sent] = [
          await pendingCounts(redis),
          await redis.xlen(PaymentEvents.name),
          await sentCount(redis, placing.userIds),
        ];
        log(`  ${payments} payments, ${sent} notifications, pending ${JSON.stringify(pending)}`);
      }
      await lookFinal();
      // Every stream delivered and nothing pending, in two passes that agree: caught up with the
      // orders, or settled short of that (lost or dead-lettered entries, which the outcome names).
      // Not "caught up" alone: a cancelled order's refund and notices may still be on their way.
      return quiescent(redis);
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
    finalLookAt = 0;
    await lookFinal();
    const held = await watch.stop();

    const outcome = await outcomeOf(redis, placing);
    // Each notification the sent log recorded for an accepted order, and how often its key reached
    // the sender (notify.ts's keys: `<channel>:<orderId>`, `<channel>-<what>:<orderId>`).
    const keyOf: Record<string, string> = {
      'order-created': 'mail',
      'payment-completed': 'sms',
      'order-cancelled': 'mail-cancelled',
      'payment-failed': 'sms-declined',
      'payment-refunded': 'sms-refunded',
    };
    const sendCounts = (await sentNotifications(redis, placing.userIds))
      .filter(({ orderId }) => orderId !== undefined && accepted.has(orderId))
      .map(({ event, orderId }) => sends.get(`${keyOf[event] ?? event}:${orderId}`) ?? 0);
    return {
      seed,
      claimIdleMs: options.claimIdleMs,
      ordersAccepted: accepted.size,
      retriedRequests: placing.retried,
      kills,
      terms,
      pauses,
      takeovers: takeoversOf(held, killsBy, troubleSpans, (service, from, to) =>
        instances.some((i) => i.service === service && i.availableThrough(from, to)),
      ),
      ...counts,
      finalAfterMs: finalAt === undefined ? undefined : Math.max(0, finalAt - faultsEndedAt),
      paymentTimeoutMs: DEFAULT_PAYMENT_TIMEOUT_MS,
      redisTrouble,
      cluster,
      durableReplicas,
      lost: outcome.lost,
      trouble,
      troubleFailures,
      payments: outcome.payments,
      mails: outcome.mails,
      sms: outcome.sms,
      states: outcome.states,
      mismatches: outcome.mismatches,
      strays: outcome.strays,
      sends: histogramOf(sendCounts),
      badStops: instances.flatMap((i) => i.badStops),
      notificationKills: instances.reduce(
        (sum, i) => sum + (i.service === 'notification-service' ? i.kills : 0),
        0,
      ),
      notificationPauses: instances.reduce(
        (sum, i) => sum + (i.service === 'notification-service' ? i.pauses : 0),
        0,
      ),
      sendsInFlightPerKill: 2 * NOTIFICATION_CONCURRENCY,
      pending: outcome.pending,
      deadLetters: outcome.deadLetters,
      deadLetterReasons: outcome.deadLetterReasons,
      durationMs: Date.now() - began,
    };
  } finally {
    chaos = false;
    for (const timer of paused.keys()) clearTimeout(timer);
    void watch.stop();
    watchRedis.disconnect();
    await Promise.all(instances.map((instance) => instance.kill()));
    await order?.stop(5_000);
    redis.disconnect();
    await server.stop();
  }
}

/**
 * A Redis Cluster for the run, as the run's single server looks: a node's port and URL to start
 * from, what a restart restarts (the master of order-events, the stream every order starts on),
 * its failover, and a stop for all of it.
 */
async function clusterServer(args: string[]) {
  const cluster = await startRedisCluster({ masters: 3, replicas: 1, args });
  // The node the processes start from: one that is neither restarted nor killed (a process that
  // starts while the one node REDIS_URL names is down waits for it).
  const orders = await cluster.masterOf('order-events');
  const entry = cluster.nodes.find((node) => node.port !== orders)!;
  return {
    name: 'the master of order-events',
    port: entry.port,
    url: entry.url,
    restart: async (downMs: number) => {
      // The master of order-events now: a failover may have moved it.
      const now = await cluster.masterOf('order-events');
      await cluster.nodes.find((node) => node.port === now)!.restart(downMs);
    },
    async failover() {
      const { from, to } = await cluster.failover('order-events');
      return `the master of order-events (port ${from}) killed (SIGKILL): its replica (port ${to}) took over, and it came back as a replica`;
    },
    stop: () => cluster.stop(),
  };
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const seconds = (ms: number) => (ms / 1000).toFixed(1);
