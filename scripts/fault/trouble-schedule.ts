import type { RedisClient } from '@msa/stream-kit';
import { Redis } from 'ioredis';
import { waitFor } from '../../harness/wait.ts';
import {
  describeStall,
  endOutOfMemory,
  info,
  startOutOfMemory,
  stallRedis,
  writeRefusal,
  type Stall,
} from './redis-trouble.ts';

/** One kind of Redis trouble. */
export type Trouble =
  | { kind: 'restart' }
  /** A Redis Cluster's master killed (SIGKILL): its replica takes over, and it comes back as a replica. */
  | { kind: 'failover' }
  | {
      kind: 'out of memory';
      holdMs: number;
      /** The instances (of both services) not killed during the window: under a fixed name, or a pid name. */
      spared: 'fixed' | 'pid';
    }
  | { kind: 'stall'; stall: Stall }
  /** Every payment-service instance down (SIGKILL) for longer than order-service's payment timeout. */
  | { kind: 'payment-service down'; downMs: number };

/** How much longer than `PAYMENT_TIMEOUT_MS` every payment-service instance stays down. */
export const OUTAGE_BEYOND_TIMEOUT_MS = 5_000;

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
 * Beside the Redis trouble, always: every payment-service instance is down for `paymentTimeoutMs`
 * plus 5 s while orders come in, which time out (the saga's cancellation, then a refund of
 * whatever payment-service charges once it is back).
 */
export function troubleSchedule(
  random: () => number,
  orders: number,
  redisTrouble: boolean,
  paymentTimeoutMs: number,
  cluster = false,
): { afterOrders: number; what: Trouble }[] {
  const outage: Trouble = {
    kind: 'payment-service down',
    downMs: paymentTimeoutMs + OUTAGE_BEYOND_TIMEOUT_MS,
  };
  if (cluster)
    return [
      { afterOrders: Math.ceil(orders / 4), what: { kind: 'restart' } },
      { afterOrders: Math.ceil(orders / 2), what: { kind: 'failover' } },
      { afterOrders: Math.ceil((3 * orders) / 4), what: outage },
    ];
  if (!redisTrouble)
    return [
      { afterOrders: Math.ceil(orders / 3), what: { kind: 'restart' } },
      { afterOrders: Math.ceil((2 * orders) / 3), what: outage },
    ];
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
  troubles.splice(Math.floor(random() * (troubles.length + 1)), 0, outage);
  const marks = troubles.map(() => 0.05 + random() * 0.8).sort((a, b) => a - b);
  return troubles.map((what, i) => ({ afterOrders: Math.floor(marks[i]! * orders), what }));
}

/** Causes `what` and resolves, once it is over, to a line saying how it went. */
export async function cause(
  what: Trouble,
  {
    redis,
    server,
    counts,
    failures,
    consumers,
  }: {
    /** The run's admin connection: one Redis for stalls and out-of-memory windows. */
    redis: RedisClient;
    /** What a restart restarts: the Redis, or on a cluster the master of order-events. */
    server: {
      restart(downMs: number): Promise<void>;
      readonly name: string;
      /** On a cluster: kills the master of order-events and waits for its replica to take over. */
      failover?(): Promise<string>;
    };
    counts: { redisRestarts: number; oomWindows: number; stalls: number; outages: number; failovers: number };
    failures: string[];
    consumers: {
      /** Holds the consumer instances (SIGSTOP) until orders wait for them; resolves to how many do. */
      hold(): Promise<number>;
      release(): void;
      /** Spares the instances under a fixed name, or a pid name, from kills; undefined: none. */
      spare(which: 'fixed' | 'pid' | undefined): void;
      /** Kills every payment-service instance, starts them again `ms` later; resolves to the orders placed meanwhile. */
      paymentOutage(ms: number): Promise<number>;
    };
  },
): Promise<string> {
  switch (what.kind) {
    case 'payment-service down': {
      const placed = await consumers.paymentOutage(what.downMs);
      counts.outages += 1;
      return `every payment-service instance down (SIGKILL) for ${seconds(what.downMs)} s, ${placed} orders placed meanwhile: back`;
    }
    case 'restart':
      await server.restart(500);
      counts.redisRestarts += 1;
      return `${server.name} restarted (down 0.5 s), back from its AOF`;
    case 'failover': {
      if (!server.failover) throw new Error('a failover needs a Redis Cluster');
      const line = await server.failover();
      counts.failovers += 1;
      return line;
    }
  }
  // Both act on one server through its own commands (CONFIG SET, DEBUG SLEEP, CLIENT PAUSE).
  if (!(redis instanceof Redis)) throw new Error(`${what.kind} needs one Redis, not a cluster`);
  switch (what.kind) {
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

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const seconds = (ms: number) => (ms / 1000).toFixed(1);
const megabytes = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(2)} MB`;
