import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startProxy } from '../../../../harness/proxy.ts';
import { startRedisServer, type RedisServer } from '../../../../harness/redis-server.ts';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import { createPublisher, subscribe } from '../../src/index.ts';
import { contractSuite, recordingLogger, settle, testStream } from './setup.ts';

/*
 * When Redis is in trouble, entries wait instead of being dead-lettered: a Redis that refuses
 * writes (out of memory), stalls (DEBUG SLEEP), times out a command, goes silent on an open
 * connection, restarts or loses its data. This file's server runs with --enable-debug-command for
 * the stall; the restart and the FLUSHALL get a server of their own.
 */

const suite = contractSuite({ serverArgs: ['--enable-debug-command', 'yes'] });
const { start, startAtDefaults, groupCreated, track } = suite;

describe('when Redis is in trouble', () => {
  let admin: Redis;
  beforeAll(() => {
    admin = new Redis(suite.url);
  });
  afterEach(async () => {
    await admin.config('SET', 'maxmemory', '0');
  });
  afterAll(async () => {
    await admin?.quit();
  });

  it('handles every entry once Redis accepts writes again after refusing them (out of memory), dead-lettering none', async () => {
    const stream = testStream();
    const local = createPublisher({ connection: admin });
    for (let n = 0; n < 20; n += 1) await local.publish(stream, { n });
    await local.close();
    // A backlog waiting for a group that exists, as the services' groups do.
    await admin.xgroup('CREATE', stream.name, 'g', '0');
    // The handler's effect is a write, as a payment's is.
    const effects = new Redis(suite.url, { maxRetriesPerRequest: 1 });
    const runs: number[] = [];
    const { logger, warnings } = recordingLogger();
    await admin.config('SET', 'maxmemory-policy', 'noeviction');
    await admin.config('SET', 'maxmemory', '1');
    await expect(admin.set('probe', '1')).rejects.toThrow(/^OOM/);

    startAtDefaults(
      stream,
      async (event, { deliveryCount }) => {
        await effects.incr(`${stream.name}:effect:${event.n}`);
        runs.push(deliveryCount);
      },
      { logger },
    );
    // Long enough for five deliveries at the default retry delays (1, 2, 4, 8 s).
    await new Promise((resolve) => setTimeout(resolve, 16_000));
    expect(runs).toEqual([]);
    await admin.config('SET', 'maxmemory', '0');

    await waitFor(() => runs.length === 20, { timeoutMs: 15_000, what: 'every entry after the outage' });
    await settle();
    const counts = await Promise.all(
      Array.from({ length: 20 }, (_, n) => admin.get(`${stream.name}:effect:${n}`)),
    );
    expect(counts).toEqual(Array.from({ length: 20 }, () => '1'));
    // Runs that Redis cut short do not count: each entry's one successful run is its first.
    expect(new Set(runs)).toEqual(new Set([1]));
    expect(await admin.xlen(`${stream.name}:dlq`)).toBe(0);
    const [pending] = (await admin.xpending(stream.name, 'g')) as [number];
    expect(pending).toBe(0);
    expect(warnings).toEqual([expect.stringMatching(/^redis is failing or refusing work; pausing/)]);
    effects.disconnect();
  }, 45_000);

  it('pauses through a stall that times out the handler, then handles every entry once, dead-lettering none', async () => {
    const stream = testStream();
    const effects = new Redis(suite.url, { maxRetriesPerRequest: 1, commandTimeout: 300 });
    const done = new Set<number>();
    startAtDefaults(
      stream,
      async (event) => {
        await effects.set(`${stream.name}:effect:${event.n}`, '1');
        done.add(event.n);
      },
      // Two failed runs would dead-letter an entry whose handler failed on its own.
      { maxDeliveries: 2, retryDelayMs: 100 },
    );
    const local = createPublisher({ connection: admin });
    await local.publish(stream, { n: 0 });
    await waitFor(() => done.has(0));

    // DEBUG SLEEP holds the server: every command, the handler's too, waits 2 s.
    const sleeping = admin.call('DEBUG', 'SLEEP', '2');
    const late = new Redis(suite.url);
    const publishing = Promise.all(
      [1, 2, 3].map((n) => createPublisher({ connection: late }).publish(stream, { n })),
    );
    await sleeping;
    await publishing;
    late.disconnect();
    await local.close();

    await waitFor(() => done.size === 4, { timeoutMs: 15_000, what: 'every entry after the stall' });
    expect(await admin.xlen(`${stream.name}:dlq`)).toBe(0);
    effects.disconnect();
  }, 30_000);

  it('takes a run that Redis cut short off the count, for the consumer that takes the entry over too', async () => {
    const stream = testStream();
    const local = createPublisher({ connection: admin });
    await local.publish(stream, { n: 0 });
    await local.close();
    const faulted = deferred();
    const first = startAtDefaults(
      stream,
      () => {
        faulted.resolve();
        throw new Error('cannot record the effect', { cause: new Error('Command timed out') });
      },
      { consumer: 'first' },
    );
    await faulted.promise;
    await first.close();
    const runs: number[] = [];

    startAtDefaults(stream, (_event, { deliveryCount }) => void runs.push(deliveryCount), {
      consumer: 'second',
      claimIdleMs: 100,
    });

    await waitFor(() => runs.length === 1, { what: 'the entry taken over' });
    expect(runs).toEqual([1]);
  });
});

describe('when its connection goes silent without closing', () => {
  it('gives up a read that gets no answer, reconnects, and handles what the lost read delivered', async () => {
    const stream = testStream();
    const proxy = await startProxy(Number(new URL(suite.url).port));
    try {
      const seen: number[] = [];
      const { logger, warnings } = recordingLogger();
      start(stream, (event) => void seen.push(event.n), {
        connection: `redis://127.0.0.1:${proxy.port}`,
        logger,
      });
      await groupCreated(stream);
      await new Promise((resolve) => setTimeout(resolve, 100));

      proxy.silenceOpenConnections();
      await suite.publisher.publish(stream, { n: 1 });

      // BLOCK 200 ms: the watchdog gives up on a read after 1.2 s.
      await waitFor(() => seen.length === 1, { what: 'the entry, read on a new connection' });
      expect(warnings).toContainEqual(expect.stringContaining('redis did not answer'));
    } finally {
      await proxy.close();
    }
  });
});

describe('when Redis restarts or is flushed', () => {
  let server: RedisServer;
  beforeAll(async () => {
    server = await startRedisServer();
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('takes a FLUSHALL during a blocked read as a lost group, not as a failure', async () => {
    const stream = testStream();
    const seen: number[] = [];
    const { logger, warnings } = recordingLogger();
    const sub = subscribe('g', 'c1', stream, (event) => void seen.push(event.n), {
      connection: server.url,
      blockMs: 5_000,
      logger,
    });
    track(sub);
    const admin = new Redis(server.url);
    const local = createPublisher({ connection: admin });
    try {
      await local.publish(stream, { n: 1 });
      await waitFor(() => seen.length === 1);
      await new Promise((resolve) => setTimeout(resolve, 100));

      await admin.flushall();
      await local.publish(stream, { n: 2 });

      await waitFor(() => seen.includes(2), { what: 'the entry after FLUSHALL' });
      expect(warnings.filter((w) => w.includes('consumer loop failed'))).toEqual([]);
      expect(warnings.some((w) => w.includes('consumer group is gone'))).toBe(true);
    } finally {
      await local.close();
      await admin.quit();
    }
  });

  it('reconnects, recreates the lost group and keeps consuming, logging the outage once', async () => {
    const stream = testStream();
    const seen: number[] = [];
    const { logger, warnings } = recordingLogger();
    const sub = subscribe('g', 'c1', stream, (event) => void seen.push(event.n), {
      connection: server.url,
      blockMs: 200,
      logger,
    });
    track(sub);
    const local = createPublisher({ connection: server.url });
    try {
      await local.publish(stream, { n: 1 });
      await waitFor(() => seen.length === 1);

      // Down long enough for a dozen reconnect attempts.
      await server.restart(3_000);
      await waitFor(
        () =>
          local.publish(stream, { n: 2 }).then(
            () => true,
            () => false,
          ),
        {
          what: 'Redis back',
        },
      );

      await waitFor(() => seen.includes(2), { what: 'the entry after the restart', timeoutMs: 15_000 });
      expect(seen).toEqual([1, 2]);
      expect(warnings.filter((w) => w.includes('connection lost'))).toHaveLength(1);
      expect(warnings.length).toBeLessThanOrEqual(3);
    } finally {
      await local.close();
    }
  });
});
