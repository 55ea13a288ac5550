import { randomUUID } from 'node:crypto';
import v8 from 'node:v8';
import vm from 'node:vm';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, expectTypeOf, inject, it } from 'vitest';
import { z } from 'zod';
import { freePort } from '../../../harness/net.ts';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { entryFields } from '../../../harness/streams.ts';
import { startProxy } from '../../../harness/proxy.ts';
import { deferred, waitFor } from '../../../harness/wait.ts';
import {
  createPublisher,
  defineStream,
  EventValidationError,
  listDeadLetters,
  NonRetryableError,
  replayDeadLetters,
  RetryLaterError,
  subscribe,
  type DeliveryContext,
  type Handler,
  type Publisher,
  type SubscribeOptions,
  type Subscription,
} from '../src/index.ts';

const redisUrl = inject('redisUrl');
let redis: Redis;
let publisher: Publisher;
const opened: Subscription[] = [];

beforeAll(() => {
  redis = new Redis(redisUrl);
  publisher = createPublisher({ connection: redisUrl });
});
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
});
afterAll(async () => {
  await publisher.close();
  await redis.quit();
});

/** A fresh stream, so tests never see each other's entries. */
function testStream() {
  return defineStream({
    name: `test-${randomUUID()}`,
    schema: z.object({
      n: z.string().regex(/^\d+$/, 'must be digits').transform(Number),
      note: z.string().optional(),
    }),
  });
}
type TestStream = ReturnType<typeof testStream>;

function start(
  stream: TestStream,
  handler: Handler<{ n: number; note?: string | undefined }>,
  {
    group = 'g',
    consumer = 'c1',
    ...options
  }: Partial<SubscribeOptions> & { group?: string; consumer?: string } = {},
) {
  const sub = subscribe(group, consumer, stream, handler, {
    connection: redisUrl,
    blockMs: 200,
    retryDelayMs: 20,
    ...options,
  });
  opened.push(sub);
  return sub;
}

async function publishRange(stream: TestStream, count: number) {
  for (let n = 0; n < count; n += 1) await publisher.publish(stream, { n });
}

async function pendingCount(stream: TestStream, group = 'g') {
  const [count] = (await redis.xpending(stream.name, group)) as [number];
  return count;
}

async function deadLetters(stream: TestStream) {
  return entryFields(redis, `${stream.name}:dlq`);
}

/** Resolves once a subscription has created its group, so entries published next are new to it. */
function groupCreated(stream: TestStream) {
  return waitFor(
    () =>
      redis.xinfo('GROUPS', stream.name).then(
        (groups) => (groups as unknown[]).length > 0,
        () => false,
      ),
    { what: 'the consumer group' },
  );
}

/** A logger that keeps the messages of its warnings. */
function recordingLogger() {
  const warnings: string[] = [];
  const logger = {
    debug() {},
    info() {},
    error() {},
    warn: (_: object, msg?: string) => void warnings.push(msg ?? ''),
  };
  return { logger, warnings };
}

/** Gives a late duplicate delivery the time to show up before the final assertions. */
function settle() {
  return new Promise((resolve) => setTimeout(resolve, 300));
}

describe('publish', () => {
  it('writes the event as flat string fields and resolves to the entry ID', async () => {
    const stream = testStream();

    const id = await publisher.publish(stream, { n: 42, note: 'hello' });

    const entries = await redis.xrange(stream.name, '-', '+');
    expect(entries).toEqual([[id, ['n', '42', 'note', 'hello']]]);
  });

  it('rejects an invalid value with a typed error and writes nothing', async () => {
    const stream = testStream();

    const attempt = publisher.publish(stream, { n: -1 });

    await expect(attempt).rejects.toBeInstanceOf(EventValidationError);
    await expect(attempt).rejects.toThrow(/n: must be digits/);
    expect(await redis.exists(stream.name)).toBe(0);
  });

  it('publishes a batch in order with publishMany, and writes none of it if one event is invalid', async () => {
    const stream = testStream();

    const ids = await publisher.publishMany(stream, [{ n: 1 }, { n: 2, note: 'x' }, { n: 3 }]);
    const refused = publisher.publishMany(stream, [{ n: 4 }, { n: -1 }]);

    await expect(refused).rejects.toBeInstanceOf(EventValidationError);
    const entries = await redis.xrange(stream.name, '-', '+');
    await redis.set(`${stream.name}:not-a-stream`, 'x');
    await expect(
      publisher.publishMany({ ...stream, name: `${stream.name}:not-a-stream` }, [{ n: 5 }]),
    ).rejects.toThrow(/WRONGTYPE/);
    expect(entries).toEqual([
      [ids[0], ['n', '1']],
      [ids[1], ['n', '2', 'note', 'x']],
      [ids[2], ['n', '3']],
    ]);
  });

  it('publishes a batch of 20,000 with publishMany in one call, and trims it once written', async () => {
    const stream = defineStream({ ...testStream(), retention: { maxLen: 100 } });

    const ids = await publisher.publishMany(
      stream,
      Array.from({ length: 20_000 }, (_, n) => ({ n })),
    );

    expect(ids).toHaveLength(20_000);
    // Past XTRIM's own limit of 10,000 entries a call: `~` keeps whole nodes, 100 to 200 entries.
    const length = await redis.xlen(stream.name);
    expect(length).toBeGreaterThanOrEqual(100);
    expect(length).toBeLessThan(200);
    const newest = await redis.xrevrange(stream.name, '+', '-', 'COUNT', 1);
    expect(newest[0]).toEqual([ids.at(-1), ['n', '19999']]);
  });

  it('refuses an event without fields, which XADD could not write, and writes none of its batch', async () => {
    const stream = defineStream({
      name: `test-${randomUUID()}`,
      schema: z.object({ note: z.string().optional() }),
      retention: 'keep-all',
    });

    const refused = publisher.publishMany(stream, [{ note: 'a' }, {}]);

    await expect(refused).rejects.toThrow(/has no fields/);
    expect(await redis.exists(stream.name)).toBe(0);
  });

  it('refuses a wrong field at compile time', () => {
    const stream = testStream();
    // The assertion is the @ts-expect-error itself: `pnpm typecheck` fails if this compiles.
    // @ts-expect-error `m` is not a field of this stream's events
    const wrong = () => publisher.publish(stream, { n: 1, m: 1 });
    expect(wrong).toBeTypeOf('function');
  });
});

describe('subscribe', () => {
  it('delivers published events with the type inferred from the stream', async () => {
    const stream = testStream();
    const seen: number[] = [];
    start(stream, (event, context) => {
      expectTypeOf(event).toEqualTypeOf<{ n: number; note?: string | undefined }>();
      expectTypeOf(context).toEqualTypeOf<DeliveryContext>();
      seen.push(event.n);
    });

    await publishRange(stream, 5);

    await waitFor(() => seen.length === 5, { what: '5 events' });
    expect(seen).toEqual([0, 1, 2, 3, 4]);
  });

  it('reads the entries published before the group existed', async () => {
    const stream = testStream();
    await publishRange(stream, 3);
    const seen: number[] = [];

    start(stream, (event) => void seen.push(event.n));

    await waitFor(() => seen.length === 3, { what: 'the earlier entries' });
    expect(seen).toEqual([0, 1, 2]);
  });

  it("skips earlier entries when the group starts at '$'", async () => {
    const stream = testStream();
    await publishRange(stream, 3);
    const seen: number[] = [];
    start(stream, (event) => void seen.push(event.n), { startId: '$' });
    await groupCreated(stream);

    await publisher.publish(stream, { n: 99 });

    await waitFor(() => seen.length === 1);
    expect(seen).toEqual([99]);
  });

  it('acks an entry only after its handler resolves', async () => {
    const stream = testStream();
    const release = deferred();
    const started = deferred();
    start(stream, async () => {
      started.resolve();
      await release.promise;
    });
    await publisher.publish(stream, { n: 1 });

    await started.promise;
    expect(await pendingCount(stream)).toBe(1);
    release.resolve();

    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the ack' });
  });

  it('acks each entry while the rest of its batch is still being handled', async () => {
    const stream = testStream();
    await publishRange(stream, 2);
    const secondStarted = deferred();
    const release = deferred();
    start(stream, async (event) => {
      if (event.n === 1) {
        secondStarted.resolve();
        await release.promise;
      }
    });

    await secondStarted.promise;

    // Entry 0 is acked although entry 1, read in the same batch, is still running.
    await waitFor(async () => (await pendingCount(stream)) === 1, { what: 'the ack of entry 0' });
    release.resolve();
    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the ack of entry 1' });
  });

  describe('when the handler throws', () => {
    it('leaves the entry pending and delivers it again', async () => {
      const stream = testStream();
      const deliveries: number[] = [];
      start(stream, (_event, { deliveryCount }) => {
        deliveries.push(deliveryCount);
        if (deliveryCount < 3) throw new Error('not yet');
      });

      await publisher.publish(stream, { n: 1 });

      await waitFor(() => deliveries.length === 3, { what: 'three deliveries' });
      expect(deliveries).toEqual([1, 2, 3]);
      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the ack' });
      expect(await deadLetters(stream)).toEqual([]);
    });

    it('moves the entry to the dead-letter stream after maxDeliveries and goes on', async () => {
      const stream = testStream();
      const handled: number[] = [];
      let attempts = 0;
      start(
        stream,
        (event) => {
          if (event.n === 0) {
            attempts += 1;
            throw new Error('payment gateway down');
          }
          handled.push(event.n);
        },
        { maxDeliveries: 3 },
      );

      const poisonId = await publisher.publish(stream, { n: 0 });
      await publisher.publish(stream, { n: 1 });

      const [dead] = await waitFor(
        async () => {
          const letters = await deadLetters(stream);
          return letters.length > 0 && letters;
        },
        { what: 'a dead letter' },
      );
      expect(attempts).toBe(3);
      expect(dead).toMatchObject({
        n: '0',
        'dlq:id': poisonId,
        'dlq:group': 'g',
        'dlq:deliveries': '3',
        'dlq:reason': 'failed 3 runs of its handler: payment gateway down',
      });
      expect(handled).toEqual([1]);
      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'no pending entries' });
    });

    it('moves the entry to the dead-letter stream at once for a NonRetryableError', async () => {
      const stream = testStream();
      let attempts = 0;
      start(stream, () => {
        attempts += 1;
        throw new NonRetryableError('unknown product');
      });

      await publisher.publish(stream, { n: 7 });

      const letters = await waitFor(async () => {
        const found = await deadLetters(stream);
        return found.length > 0 && found;
      });
      expect(attempts).toBe(1);
      expect(letters[0]).toMatchObject({ n: '7', 'dlq:reason': 'non-retryable: unknown product' });
      expect(await pendingCount(stream)).toBe(0);
    });
  });

  describe('when a handler keeps failing', () => {
    it('waits retryDelayMs before the second delivery, doubling after each one', async () => {
      const stream = testStream();
      const at: number[] = [];
      start(
        stream,
        () => {
          at.push(Date.now());
          if (at.length < 4) throw new Error('still down');
        },
        { retryDelayMs: 100 },
      );

      await publisher.publish(stream, { n: 1 });

      await waitFor(() => at.length === 4, { what: 'four deliveries' });
      const gaps = at.slice(1).map((t, i) => t - at[i]!);
      expect(gaps[0]).toBeGreaterThanOrEqual(100);
      expect(gaps[1]).toBeGreaterThanOrEqual(200);
      expect(gaps[2]).toBeGreaterThanOrEqual(400);
    });
  });

  describe('when retry delays outlast claimIdleMs', () => {
    it('still waits the full, doubling delay between deliveries', async () => {
      const stream = testStream();
      const at: number[] = [];
      start(
        stream,
        () => {
          at.push(Date.now());
          if (at.length < 4) throw new Error('still down');
        },
        { retryDelayMs: 100, claimIdleMs: 150 },
      );

      await publisher.publish(stream, { n: 1 });

      await waitFor(() => at.length === 4, { what: 'four deliveries' });
      const gaps = at.slice(1).map((t, i) => t - at[i]!);
      expect(gaps[0]).toBeGreaterThanOrEqual(100);
      expect(gaps[1]).toBeGreaterThanOrEqual(200);
      expect(gaps[2]).toBeGreaterThanOrEqual(400);
    });
  });

  describe('when the dead-letter stream cannot be written', () => {
    it('keeps the entry pending, dead-letters it once it can, and handles the entries after it', async () => {
      const stream = testStream();
      const dlq = `${stream.name}:dlq`;
      await redis.set(dlq, 'not a stream');
      const handled: number[] = [];
      start(stream, (event) => void handled.push(event.n));

      await redis.xadd(stream.name, '*', 'n', 'poison');
      await publishRange(stream, 3);
      await waitFor(() => handled.length === 3, { what: 'the entries after the poison one' });
      expect(await pendingCount(stream)).toBe(1);

      await redis.del(dlq);

      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'nothing pending' });
      expect(handled).toEqual([0, 1, 2]);
      expect(await deadLetters(stream)).toEqual([expect.objectContaining({ n: 'poison' })]);
    });
  });

  describe('when an entry does not match the schema', () => {
    it('moves it to the dead-letter stream with its reason and handles the next entries', async () => {
      const stream = testStream();
      const handled: number[] = [];
      start(stream, (event) => void handled.push(event.n));

      const poisonId = await redis.xadd(stream.name, '*', 'n', 'not-a-number', 'extra', 'kept');
      await publishRange(stream, 3);

      await waitFor(() => handled.length === 3, { what: 'the valid entries' });
      expect(handled).toEqual([0, 1, 2]);
      const letters = await deadLetters(stream);
      expect(letters).toEqual([
        {
          n: 'not-a-number',
          extra: 'kept',
          'dlq:id': poisonId,
          'dlq:stream': stream.name,
          'dlq:group': 'g',
          'dlq:consumer': 'c1',
          'dlq:deliveries': '1',
          'dlq:reason': 'invalid entry: n: must be digits',
        },
      ]);
      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the poison entry acked' });
    });
  });

  it('splits the entries between two consumers of one group, none handled twice', async () => {
    const stream = testStream();
    const byConsumer = { a: [] as number[], b: [] as number[] };
    const slowly = (list: number[]) => async (event: { n: number }) => {
      list.push(event.n);
      await new Promise((resolve) => setTimeout(resolve, 2));
    };
    start(stream, slowly(byConsumer.a), { consumer: 'a' });
    start(stream, slowly(byConsumer.b), { consumer: 'b' });
    await groupCreated(stream);

    await publishRange(stream, 200);

    await waitFor(() => byConsumer.a.length + byConsumer.b.length === 200, { what: '200 events' });
    await settle();
    const all = [...byConsumer.a, ...byConsumer.b].sort((x, y) => x - y);
    expect(all).toEqual(Array.from({ length: 200 }, (_, n) => n));
    expect(byConsumer.a.length).toBeGreaterThan(0);
    expect(byConsumer.b.length).toBeGreaterThan(0);
  });

  it('gives every entry to each of two groups', async () => {
    const stream = testStream();
    const byGroup = { payments: [] as number[], notifications: [] as number[] };
    start(stream, (event) => void byGroup.payments.push(event.n), { group: 'payments' });
    start(stream, (event) => void byGroup.notifications.push(event.n), { group: 'notifications' });

    await publishRange(stream, 20);

    const expected = Array.from({ length: 20 }, (_, n) => n);
    await waitFor(() => byGroup.payments.length === 20 && byGroup.notifications.length === 20);
    await settle();
    expect(byGroup.payments).toEqual(expected);
    expect(byGroup.notifications).toEqual(expected);
  });

  it('handles its own pending entries first when it starts again', async () => {
    const stream = testStream();
    await publishRange(stream, 3);
    // A consumer that read entries and died before acking them: they sit in its pending list.
    await redis.xgroup('CREATE', stream.name, 'g', '0');
    await redis.xreadgroup('GROUP', 'g', 'c1', 'COUNT', 2, 'STREAMS', stream.name, '>');
    const seen: [number, number][] = [];

    start(stream, (event, { deliveryCount }) => void seen.push([event.n, deliveryCount]));

    await waitFor(() => seen.length === 3);
    expect(seen).toEqual([
      [0, 2],
      [1, 2],
      [2, 1],
    ]);
  });

  describe('when another consumer of the group crashed holding entries', () => {
    /** A consumer that read three entries and died without acking them. */
    async function crashedConsumerHolding(stream: TestStream) {
      await redis.xgroup('CREATE', stream.name, 'g', '0', 'MKSTREAM');
      await publishRange(stream, 3);
      await redis.xreadgroup('GROUP', 'g', 'crashed', 'COUNT', 3, 'STREAMS', stream.name, '>');
    }

    it('takes its entries over once they have been idle claimIdleMs', async () => {
      const stream = testStream();
      await crashedConsumerHolding(stream);
      const seen: [number, number][] = [];

      start(stream, (event, { deliveryCount }) => void seen.push([event.n, deliveryCount]), {
        claimIdleMs: 100,
      });

      await waitFor(() => seen.length === 3, { what: "the crashed consumer's entries" });
      expect(seen).toEqual([
        [0, 2],
        [1, 2],
        [2, 2],
      ]);
      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'nothing pending' });
    });

    it('leaves them alone while they have been idle less than claimIdleMs', async () => {
      const stream = testStream();
      await crashedConsumerHolding(stream);
      const seen: number[] = [];

      start(stream, (event) => void seen.push(event.n), { claimIdleMs: 60_000 });
      await publisher.publish(stream, { n: 99 });

      await waitFor(() => seen.length === 1);
      expect(seen).toEqual([99]);
      const [, , , perConsumer] = (await redis.xpending(stream.name, 'g')) as [
        number,
        string,
        string,
        [string, string][],
      ];
      expect(perConsumer).toContainEqual(['crashed', '3']);
    });

    it('keeps the lease on entries waiting in its batch, so no entry is handled twice', async () => {
      const stream = testStream();
      const handled: string[] = [];
      const slow = async (event: { n: number }) => {
        handled.push(`${event.n}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      };
      // A batch of 10 at 100 ms each waits longer than claimIdleMs; one handler run stays well under it.
      start(stream, slow, { consumer: 'a', claimIdleMs: 600 });
      start(stream, slow, { consumer: 'b', claimIdleMs: 600 });
      await groupCreated(stream);

      await publishRange(stream, 20);

      await waitFor(() => handled.length >= 20, { what: '20 events', timeoutMs: 15_000 });
      await settle();
      expect(handled.sort((x, y) => Number(x) - Number(y))).toEqual(
        Array.from({ length: 20 }, (_, n) => `${n}`),
      );
    });

    it('does not handle an entry a second consumer took while it worked through its own pending list', async () => {
      const stream = testStream();
      await redis.xgroup('CREATE', stream.name, 'g', '0', 'MKSTREAM');
      await publishRange(stream, 20);
      // 'a' read 20 entries and restarted under the same name; 'b' takes over what 'a' leaves idle.
      await redis.xreadgroup('GROUP', 'g', 'a', 'COUNT', 20, 'STREAMS', stream.name, '>');
      const running = new Set<number>();
      const overlaps: number[] = [];
      const handledCount = new Map<number, number>();
      const slow = async (event: { n: number }) => {
        if (running.has(event.n)) overlaps.push(event.n);
        running.add(event.n);
        handledCount.set(event.n, (handledCount.get(event.n) ?? 0) + 1);
        await new Promise((resolve) => setTimeout(resolve, 150));
        running.delete(event.n);
      };

      start(stream, slow, { consumer: 'a', claimIdleMs: 800 });
      start(stream, slow, { consumer: 'b', claimIdleMs: 800 });

      await waitFor(async () => handledCount.size === 20 && (await pendingCount(stream)) === 0, {
        what: 'all 20 handled',
        timeoutMs: 20_000,
      });
      expect(overlaps).toEqual([]);
    });

    it('drops entries deleted from the stream meanwhile without calling the handler', async () => {
      const stream = testStream();
      await crashedConsumerHolding(stream);
      const [[firstId]] = (await redis.xrange(stream.name, '-', '+', 'COUNT', 1)) as [[string, string[]]];
      await redis.xdel(stream.name, firstId);
      const seen: number[] = [];

      start(stream, (event) => void seen.push(event.n), { claimIdleMs: 100 });

      await waitFor(() => seen.length === 2);
      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'nothing pending' });
      expect(seen).toEqual([1, 2]);
    });

    it('acks, and logs, entries trimmed from the stream while they were pending', async () => {
      const stream = testStream();
      await crashedConsumerHolding(stream);
      await redis.xtrim(stream.name, 'MAXLEN', 0);
      const seen: number[] = [];
      const { logger, warnings } = recordingLogger();

      start(stream, (event) => void seen.push(event.n), { claimIdleMs: 100, logger });

      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'nothing pending' });
      expect(warnings).toContainEqual(expect.stringContaining('trimmed from the stream'));
      expect(seen).toEqual([]);
    });

    it('dead-letters an entry whose handler ran maxDeliveries times and never finished', async () => {
      const stream = testStream();
      await publisher.publish(stream, { n: 0 });
      // Five consumers in turn take the entry and stall in its handler until they are closed
      // (the way a process that dies in the handler leaves it): five runs, none finished.
      const runs: number[] = [];
      for (let i = 1; i <= 5; i += 1) {
        const began = deferred();
        const sub = start(
          stream,
          (_event, { deliveryCount }) => {
            runs.push(deliveryCount);
            began.resolve();
            return new Promise<void>(() => {});
          },
          { consumer: `stalls-${i}`, claimIdleMs: 100, closeTimeoutMs: 20, maxDeliveries: 5 },
        );
        await began.promise;
        await sub.close();
      }
      expect(runs).toEqual([1, 2, 3, 4, 5]);
      const seen: number[] = [];

      start(stream, (event) => void seen.push(event.n), { claimIdleMs: 100, maxDeliveries: 5 });

      const letters = await waitFor(async () => {
        const found = await deadLetters(stream);
        return found.length > 0 && found;
      });
      expect(letters).toEqual([
        expect.objectContaining({
          n: '0',
          'dlq:reason':
            'not acked after 5 runs of its handler (its consumers died or stalled before finishing)',
        }),
      ]);
      expect(seen).toEqual([]);
    });

    it('counts the runs of its handler, not the deliveries Redis counted without one', async () => {
      const stream = testStream();
      await crashedConsumerHolding(stream);
      const [[firstId]] = (await redis.xrange(stream.name, '-', '+', 'COUNT', 1)) as [[string, string[]]];
      // Each XCLAIM counts a delivery, as reads and claims do while Redis refuses every write.
      for (let i = 0; i < 6; i += 1) await redis.xclaim(stream.name, 'g', `crashed-${i}`, 0, firstId);
      const seen: [number, number][] = [];

      start(stream, (event, { deliveryCount }) => void seen.push([event.n, deliveryCount]), {
        claimIdleMs: 100,
        maxDeliveries: 5,
      });

      await waitFor(() => seen.length === 3);
      // The crashed consumer may have run each once: this is the second run of each.
      expect(seen.sort()).toEqual([
        [0, 2],
        [1, 2],
        [2, 2],
      ]);
      expect(await deadLetters(stream)).toEqual([]);
    });
  });

  describe('close()', () => {
    it('waits for the running handler and acks its entry', async () => {
      const stream = testStream();
      const release = deferred();
      const started = deferred();
      const sub = start(stream, async () => {
        started.resolve();
        await release.promise;
      });
      await publisher.publish(stream, { n: 1 });
      await started.promise;

      let closed = false;
      const closing = sub.close().then(() => (closed = true));
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(closed).toBe(false);
      release.resolve();
      await closing;

      expect(await pendingCount(stream)).toBe(0);
    });

    it('leaves entries not yet handled pending and calls no handler after it resolves', async () => {
      const stream = testStream();
      const started = deferred();
      const release = deferred();
      let calls = 0;
      // Published first, so the subscription reads all five in its first batch.
      await publishRange(stream, 5);
      const sub = start(stream, async () => {
        calls += 1;
        started.resolve();
        await release.promise;
      });
      await started.promise;

      const closing = sub.close();
      release.resolve();
      await closing;
      const callsAtClose = calls;
      await new Promise((resolve) => setTimeout(resolve, 300));

      expect(calls).toBe(callsAtClose);
      expect(callsAtClose).toBe(1);
      expect(await pendingCount(stream)).toBe(4);
    });

    it('keeps the lease on the entry being handled while it waits, so no other consumer runs it meanwhile', async () => {
      const stream = testStream();
      const runs: string[] = [];
      let running = 0;
      let overlapped = false;
      const slow = (consumer: string) => async () => {
        runs.push(consumer);
        overlapped ||= running > 0;
        running += 1;
        await new Promise((resolve) => setTimeout(resolve, 1_500));
        running -= 1;
      };
      const first = start(stream, slow('a'), { consumer: 'a', claimIdleMs: 300 });
      await publisher.publish(stream, { n: 1 });
      await waitFor(() => runs.length === 1);
      start(stream, slow('b'), { consumer: 'b', claimIdleMs: 300 });

      await first.close();

      await settle();
      expect({ runs, overlapped }).toEqual({ runs: ['a'], overlapped: false });
      expect(await pendingCount(stream)).toBe(0);
    });

    it('gives up on a handler that outlives closeTimeoutMs and leaves its entry pending', async () => {
      const stream = testStream();
      const started = deferred();
      const sub = start(
        stream,
        async () => {
          started.resolve();
          await new Promise(() => {});
        },
        { closeTimeoutMs: 100 },
      );
      await publisher.publish(stream, { n: 1 });
      await started.promise;

      const began = Date.now();
      await sub.close();

      expect(Date.now() - began).toBeLessThan(2_000);
      expect(await pendingCount(stream)).toBe(1);
    });

    it('returns promptly when Redis cannot be reached', async () => {
      const sub = subscribe('g', 'c1', testStream(), () => {}, {
        connection: `redis://127.0.0.1:${await freePort()}`,
      });
      await new Promise((resolve) => setTimeout(resolve, 300));

      const began = Date.now();
      await sub.close();

      expect(Date.now() - began).toBeLessThan(2_000);
    });

    it('returns promptly from a blocked read and is safe to call twice', async () => {
      const stream = testStream();
      const sub = start(stream, () => {}, { blockMs: 60_000 });
      await groupCreated(stream);

      const began = Date.now();
      await Promise.all([sub.close(), sub.close()]);
      await sub.close();

      expect(Date.now() - began).toBeLessThan(5_000);
    });
  });

  it('keeps the default of an option given as undefined', async () => {
    const stream = testStream();
    const seen: number[] = [];
    start(stream, (event) => void seen.push(event.n), { logger: undefined, count: undefined });

    await publisher.publish(stream, { n: 1 });

    await waitFor(() => seen.length === 1);
  });

  it('refuses options out of range', () => {
    const stream = testStream();
    const options = { connection: redisUrl };

    expect(() => subscribe('g', 'c', stream, () => {}, { ...options, claimIdleMs: 0 })).toThrow(RangeError);
    expect(() => subscribe('g', 'c', stream, () => {}, { ...options, count: 0 })).toThrow(/count/);
    expect(() => subscribe('g', 'c', stream, () => {}, { ...options, concurrency: 1.5 })).toThrow(
      /concurrency/,
    );
    expect(() =>
      subscribe('g', 'c', stream, () => {}, { ...options, deadLetterStream: stream.name }),
    ).toThrow(/deadLetterStream/);
  });

  describe('when the consumer group disappears', () => {
    it('recreates the group where it was at its last look and keeps consuming', async () => {
      const stream = testStream();
      const seen: number[] = [];
      // A reclaim pass (every claimIdleMs / 2) notes where the group stands.
      start(stream, (event) => void seen.push(event.n), { claimIdleMs: 100 });
      await publisher.publish(stream, { n: 1 });
      await waitFor(() => seen.length === 1);
      await new Promise((resolve) => setTimeout(resolve, 200));

      await redis.xgroup('DESTROY', stream.name, 'g');
      await publisher.publish(stream, { n: 2 });

      await waitFor(() => seen.includes(2), { what: 'the entry after NOGROUP' });
      await settle();
      // Entry 1 was acked before the last look: it is not handed out again.
      expect(seen).toEqual([1, 2]);
    });

    it('hands out again the entries a crashed consumer held, and not those acked before', async () => {
      const stream = testStream();
      const seen: number[] = [];
      const gate = deferred();
      const atGate = deferred();
      // claimIdleMs 4 s: a look at the group every 2 s, and no takeover of the crashed
      // consumer's entries before the group is destroyed.
      start(
        stream,
        async (event) => {
          if (event.n === 2) {
            atGate.resolve();
            await gate.promise;
          }
          seen.push(event.n);
        },
        { consumer: 'alive', claimIdleMs: 4_000 },
      );
      await groupCreated(stream);
      await publishRange(stream, 3);
      await atGate.promise;
      // While the live consumer is busy with entry 2, another reads entries 3 and 4 and dies.
      await publisher.publish(stream, { n: 3 });
      await publisher.publish(stream, { n: 4 });
      const taken = (await redis.xreadgroup('GROUP', 'g', 'crashed', 'STREAMS', stream.name, '>')) as [
        string,
        unknown[],
      ][];
      expect(taken[0]![1]).toHaveLength(2);
      gate.resolve();
      await waitFor(() => seen.length === 3);
      // Time for a look at the group after entry 2 was acked.
      await new Promise((resolve) => setTimeout(resolve, 2_300));

      await redis.xgroup('DESTROY', stream.name, 'g');
      await publisher.publish(stream, { n: 5 });

      await waitFor(() => seen.includes(5), { what: 'the entry after NOGROUP' });
      await settle();
      expect(seen).toEqual([0, 1, 2, 3, 4, 5]);
    });

    it('recreates it before an entry still waiting for a retry, so that entry is not lost', async () => {
      const stream = testStream();
      const attempts: number[] = [];
      start(
        stream,
        (event) => {
          attempts.push(event.n);
          if (event.n === 0 && attempts.filter((n) => n === 0).length === 1) throw new Error('once');
        },
        { retryDelayMs: 500 },
      );
      await publishRange(stream, 2);
      await waitFor(() => attempts.includes(1));

      await redis.xgroup('DESTROY', stream.name, 'g');
      await publisher.publish(stream, { n: 2 });

      await waitFor(() => attempts.filter((n) => n === 0).length === 2, { what: 'entry 0 again' });
      await waitFor(() => attempts.includes(2));
    });

    it('recreates it where the group stood even before reading anything new', async () => {
      const stream = testStream();
      await publishRange(stream, 3);
      const handledByFirst: number[] = [];
      const first = start(stream, (event) => void handledByFirst.push(event.n), { consumer: 'first' });
      await waitFor(() => handledByFirst.length === 3);
      await waitFor(async () => {
        const [group] = (await redis.xinfo('GROUPS', stream.name)) as string[][];
        return group?.includes('0-0') === false;
      });
      await first.close();
      const seen: number[] = [];
      start(stream, (event) => void seen.push(event.n), { consumer: 'second' });
      // Its connection blocked in XREADGROUP shows it is past start-up and waiting for new entries.
      await waitFor(
        async () =>
          ((await redis.client('LIST')) as string)
            .split('\n')
            .some((line) => line.includes(' name=stream-kit:g:second ') && line.includes('cmd=xreadgroup')),
        { what: 'the second subscription to start reading' },
      );

      await redis.xgroup('DESTROY', stream.name, 'g');
      await publisher.publish(stream, { n: 3 });

      await waitFor(() => seen.length > 0, { what: 'the entry after NOGROUP' });
      await settle();
      expect(seen).toEqual([3]);
    });
  });
});

describe('with concurrency', () => {
  it('runs up to `concurrency` handlers at once, never more, and holds at most two batches', async () => {
    const stream = testStream();
    await publishRange(stream, 40);
    const handled: number[] = [];
    let running = 0;
    let mostRunning = 0;
    let mostHeld = 0;
    start(
      stream,
      async (event) => {
        running += 1;
        mostRunning = Math.max(mostRunning, running);
        // Delivered to this consumer and not yet acked: what it holds.
        mostHeld = Math.max(mostHeld, await pendingCount(stream));
        await new Promise((resolve) => setTimeout(resolve, 20));
        running -= 1;
        handled.push(event.n);
      },
      { count: 10, concurrency: 4 },
    );

    await waitFor(async () => handled.length === 40 && (await pendingCount(stream)) === 0, {
      what: 'all 40 handled and acked',
    });
    expect(mostRunning).toBe(4);
    // The batch being handled, and the next one read ahead.
    expect(mostHeld).toBeLessThanOrEqual(20);
    expect([...handled].sort((x, y) => x - y)).toEqual(Array.from({ length: 40 }, (_, n) => n));
  });

  it('reads the next batch while a full one is handled, and handles each entry once', async () => {
    const stream = testStream();
    await publishRange(stream, 10);
    const handled: number[] = [];
    start(
      stream,
      async (event) => {
        // Entry 0 waits until the second batch of five is delivered too: only a read ahead,
        // sent while this batch is being handled, can deliver it.
        if (event.n === 0) await waitFor(async () => (await pendingCount(stream)) === 10);
        handled.push(event.n);
      },
      { count: 5 },
    );

    await waitFor(async () => handled.length === 10 && (await pendingCount(stream)) === 0);
    await settle();
    expect(handled).toEqual(Array.from({ length: 10 }, (_, n) => n));
  });

  it('leaves a batch read ahead pending at close(), for the next run to handle once', async () => {
    const stream = testStream();
    await publishRange(stream, 20);
    const handled: number[] = [];
    const release = deferred();
    const first = start(
      stream,
      async (event) => {
        if (event.n === 0) {
          await waitFor(async () => (await pendingCount(stream)) === 10);
          await release.promise;
        }
        handled.push(event.n);
      },
      { count: 5 },
    );
    await groupCreated(stream);
    await waitFor(async () => (await pendingCount(stream)) === 10);

    const closing = first.close();
    release.resolve();
    await closing;
    expect(handled).toEqual([0]);
    start(stream, (event) => void handled.push(event.n), { count: 5 });

    await waitFor(async () => handled.length === 20 && (await pendingCount(stream)) === 0);
    await settle();
    expect([...handled].sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, n) => n));
  });

  it('hands back at close() the entries it read but never started, for another consumer to take at once', async () => {
    const stream = testStream();
    await publishRange(stream, 30);
    const release = deferred();
    const handled: string[] = [];
    // Both would wait 10 s before taking over entries left by the other.
    const options = { count: 10, claimIdleMs: 10_000 };
    const first = start(
      stream,
      async (event) => {
        handled.push(`a${event.n}`);
        await release.promise;
      },
      { ...options, consumer: 'a' },
    );
    await waitFor(async () => handled.length === 1 && (await pendingCount(stream)) === 20);

    const closing = first.close();
    release.resolve();
    await closing;
    start(stream, (event) => void handled.push(`b${event.n}`), { ...options, consumer: 'b' });

    // Well within claimIdleMs: the 19 handed back are taken over at b's first reclaim pass.
    await waitFor(async () => handled.length === 30 && (await pendingCount(stream)) === 0, {
      timeoutMs: 5_000,
    });
    expect(handled.filter((name) => name.startsWith('a'))).toEqual(['a0']);
  });

  it('keeps the stream order with the default of one handler at a time', async () => {
    const stream = testStream();
    await publishRange(stream, 30);
    const handled: number[] = [];
    start(
      stream,
      async (event) => {
        // Later entries finish faster: only one at a time keeps them in order.
        await new Promise((resolve) => setTimeout(resolve, 30 - event.n));
        handled.push(event.n);
      },
      { count: 10 },
    );

    await waitFor(() => handled.length === 30);
    expect(handled).toEqual(Array.from({ length: 30 }, (_, n) => n));
  });

  it('retries a failed entry while the others of its batch are acked', async () => {
    const stream = testStream();
    await publishRange(stream, 8);
    const deliveries = new Map<number, number>();
    start(
      stream,
      (event) => {
        deliveries.set(event.n, (deliveries.get(event.n) ?? 0) + 1);
        if (event.n === 3 && deliveries.get(3) === 1) throw new Error('first try fails');
      },
      { concurrency: 4 },
    );

    await waitFor(async () => deliveries.get(3) === 2 && (await pendingCount(stream)) === 0, {
      what: 'entry 3 retried and everything acked',
    });
    expect([...deliveries].sort(([a], [b]) => a - b)).toEqual(
      Array.from({ length: 8 }, (_, n) => [n, n === 3 ? 2 : 1]),
    );
  });

  it('waits at close() for every running handler, acks them, and leaves the rest pending', async () => {
    const stream = testStream();
    await publishRange(stream, 10);
    const release = deferred();
    const started: number[] = [];
    const sub = start(
      stream,
      async (event) => {
        started.push(event.n);
        await release.promise;
      },
      { concurrency: 3 },
    );
    await waitFor(() => started.length === 3);

    const closing = sub.close();
    await settle();
    expect(started).toHaveLength(3);
    release.resolve();
    await closing;

    expect(await pendingCount(stream)).toBe(7);
  });

  it('keeps the lease of every running handler, so no other consumer takes one', async () => {
    const stream = testStream();
    const runs: number[] = [];
    const handler = async (event: { n: number }) => {
      runs.push(event.n);
      await new Promise((resolve) => setTimeout(resolve, 1_200));
    };
    start(stream, handler, { consumer: 'a', claimIdleMs: 300, concurrency: 3 });
    await groupCreated(stream);
    await publishRange(stream, 3);
    await waitFor(() => runs.length === 3);
    start(stream, handler, { consumer: 'b', claimIdleMs: 300, concurrency: 3 });

    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the three acked' });
    await settle();
    expect([...runs].sort()).toEqual([0, 1, 2]);
  });
});

describe('memory', () => {
  it('keeps its heap flat over thousands of reads', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const heapAfterGc = () => {
      gc();
      return process.memoryUsage().heapUsed;
    };
    const stream = testStream();
    for (let start = 0; start < 20_000; start += 500) {
      await publisher.publishMany(
        stream,
        Array.from({ length: 500 }, (_, i) => ({ n: start + i })),
      );
    }
    let handled = 0;
    const warmedUp = deferred();
    // One entry per read: 20,000 steps of the loop.
    start(
      stream,
      () => {
        handled += 1;
        if (handled === 2_000) warmedUp.resolve();
      },
      { count: 1 },
    );
    await warmedUp.promise;
    const early = heapAfterGc();

    await waitFor(() => handled === 20_000, { timeoutMs: 60_000 });

    // A few hundred bytes kept per step would add megabytes here.
    expect(heapAfterGc() - early).toBeLessThan(1_500_000);
  }, 90_000);
});

describe('when a handler runs longer than claimIdleMs', () => {
  it('keeps renewing its lease, so no other consumer takes the entry while it runs', async () => {
    const stream = testStream();
    const starts: [number, string, number][] = [];
    const handler = (consumer: string) => async (event: { n: number }, context: DeliveryContext) => {
      starts.push([event.n, consumer, context.deliveryCount]);
      await new Promise((resolve) => setTimeout(resolve, 1_500));
    };
    // Both reclaim every 150 ms; the handler runs five times claimIdleMs.
    start(stream, handler('a'), { consumer: 'a', claimIdleMs: 300 });
    start(stream, handler('b'), { consumer: 'b', claimIdleMs: 300 });
    await groupCreated(stream);

    await publisher.publish(stream, { n: 1 });

    await waitFor(async () => starts.length > 0 && (await pendingCount(stream)) === 0, {
      what: 'the slow entry acked',
    });
    await settle();
    expect(starts).toEqual([[1, expect.any(String), 1]]);
  });

  it('keeps its lease while Redis answers slowly now and then', async () => {
    // Its own Redis: a busy script every 250 ms makes every command there wait up to ~60 ms.
    const slow = await startRedisServer();
    const admin = new Redis(slow.url);
    const stream = testStream();
    let running = 0;
    let overlapped = false;
    const runs: string[] = [];
    const handler = (consumer: string) => async () => {
      runs.push(consumer);
      overlapped ||= running > 0;
      running += 1;
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      running -= 1;
    };
    const options = { connection: slow.url, claimIdleMs: 600, blockMs: 100 };
    const spin = setInterval(() => {
      admin.eval('local x = 0 for i = 1, 6000000 do x = x + i end return 1', 0).catch(() => {});
    }, 250);
    try {
      start(stream, handler('a'), { ...options, consumer: 'a' });
      const local = createPublisher({ connection: slow.url });
      await local.publish(stream, { n: 1 });
      await local.close();
      await waitFor(() => runs.length > 0);
      start(stream, handler('b'), { ...options, consumer: 'b' });

      await new Promise((resolve) => setTimeout(resolve, 2_500));

      expect({ runs, overlapped }).toEqual({ runs: ['a'], overlapped: false });
    } finally {
      clearInterval(spin);
      await Promise.all(opened.splice(0).map((sub) => sub.close()));
      admin.disconnect();
      await slow.stop();
    }
  });
});

describe('housekeeping', () => {
  it('removes consumers long idle that hold no entries, never one that still holds entries', async () => {
    const stream = testStream();
    await redis.xgroup('CREATE', stream.name, 'g', '0', 'MKSTREAM');
    await publishRange(stream, 2);
    // 'gone' handled its entry and left; 'holder' read one and died holding it.
    const [[, [[doneId]]]] = (await redis.xreadgroup(
      'GROUP', 'g', 'gone', 'COUNT', 1, 'STREAMS', stream.name, '>',
    )) as [[string, [[string, string[]]]]]; // prettier-ignore
    await redis.xack(stream.name, 'g', doneId);
    await redis.xreadgroup('GROUP', 'g', 'holder', 'COUNT', 1, 'STREAMS', stream.name, '>');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const consumers = async () =>
      ((await redis.xinfo('CONSUMERS', stream.name, 'g')) as string[][]).map((info) => info[1]);

    start(stream, () => {}, { claimIdleMs: 60_000, deleteIdleConsumersAfterMs: 50 });

    await waitFor(async () => !(await consumers()).includes('gone'), { what: "'gone' removed" });
    expect(await consumers()).toContain('holder');
    expect(await pendingCount(stream)).toBe(1);
  });
});

describe('when an entry is not valid UTF-8', () => {
  it('dead-letters it byte for byte with its reason and handles the entries around it', async () => {
    const stream = testStream();
    const seen: number[] = [];
    start(stream, (event) => void seen.push(event.n));
    await groupCreated(stream);
    const bad = Buffer.from([0x31, 0xff, 0xfe]);

    await publisher.publish(stream, { n: 1 });
    await redis.xadd(stream.name, '*', 'n', '2', 'note', bad);
    await publisher.publish(stream, { n: 3 });

    await waitFor(() => seen.length === 2);
    expect(seen).toEqual([1, 3]);
    const [[, flat]] = (await redis.xrangeBuffer(`${stream.name}:dlq`, '-', '+')) as [[Buffer, Buffer[]]];
    const fields = new Map<string, Buffer>();
    for (let i = 0; i < flat.length; i += 2) fields.set(String(flat[i]), flat[i + 1]!);
    expect(fields.get('note')).toEqual(bad);
    expect(String(fields.get('dlq:reason'))).toBe('invalid entry: field "note" is not valid UTF-8');
  });

  it('is replayed byte for byte, and dead-lettered again rather than handled with altered text', async () => {
    const stream = testStream();
    const seen: (string | undefined)[] = [];
    start(stream, (event) => void seen.push(event.note));
    await groupCreated(stream);
    const bad = Buffer.from([0x31, 0xff, 0xfe]);
    await redis.xadd(stream.name, '*', 'n', '2', 'note', bad);
    const [letter] = await waitFor(async () => {
      const found = await listDeadLetters(redis, stream);
      return found.length > 0 && found;
    });

    const [replayed] = await replayDeadLetters(redis, stream, [letter!.id]);
    const entryId = replayed!.entryId!;

    const [[, flat]] = (await redis.xrangeBuffer(stream.name, entryId, entryId)) as [[Buffer, Buffer[]]];
    expect(flat).toEqual([Buffer.from('n'), Buffer.from('2'), Buffer.from('note'), bad]);
    await waitFor(async () => (await listDeadLetters(redis, stream)).length === 1, {
      what: 'dead-lettered again',
    });
    expect(seen).toEqual([]);
  });
});

describe('when its connection goes silent without closing', () => {
  it('gives up a read that gets no answer, reconnects, and handles what the lost read delivered', async () => {
    const stream = testStream();
    const proxy = await startProxy(Number(new URL(redisUrl).port));
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
      await publisher.publish(stream, { n: 1 });

      // BLOCK 200 ms: the watchdog gives up on a read after 1.2 s.
      await waitFor(() => seen.length === 1, { what: 'the entry, read on a new connection' });
      expect(warnings).toContainEqual(expect.stringContaining('redis did not answer'));
    } finally {
      await proxy.close();
    }
  });
});

describe('dead letters', () => {
  /** A stream whose entries may lack `origin`: they get their entry ID, as tutorial orders get their orderId. */
  function streamWithDefaults() {
    return defineStream({
      name: `test-${randomUUID()}`,
      schema: z.object({ n: z.string().regex(/^\d+$/).transform(Number), origin: z.string() }),
      defaults: (entryId) => ({ origin: entryId }),
    });
  }

  it('lists each dead letter with its reason and the fields it was published with', async () => {
    const stream = testStream();
    start(stream, () => {
      throw new NonRetryableError('card declined');
    });
    const id = await publisher.publish(stream, { n: 7, note: 'x' });

    const letters = await waitFor(async () => {
      const found = await listDeadLetters(redis, stream);
      return found.length > 0 && found;
    });

    expect(letters).toEqual([
      {
        id: expect.any(String),
        entryId: id,
        group: 'g',
        consumer: 'c1',
        deliveries: 1,
        reason: 'non-retryable: card declined',
        fields: { n: '7', note: 'x' },
      },
    ]);
  });

  it('replays a dead letter to its stream once, even when replayed twice at once, keeping its identity', async () => {
    const stream = streamWithDefaults();
    const seen: [number, string][] = [];
    let failing = true;
    opened.push(
      subscribe(
        'g',
        'c1',
        stream,
        (event) => {
          if (failing) throw new NonRetryableError('not yet');
          seen.push([event.n, event.origin]);
        },
        { connection: redisUrl, blockMs: 200 },
      ),
    );
    const firstId = (await redis.xadd(stream.name, '*', 'n', '5'))!;
    const [letter] = await waitFor(async () => {
      const found = await listDeadLetters(redis, stream);
      return found.length > 0 && found;
    });
    failing = false;

    const [a, b] = await Promise.all([
      replayDeadLetters(redis, stream, [letter!.id]),
      replayDeadLetters(redis, stream, [letter!.id]),
    ]);

    // Both calls name the one entry it was put back as.
    expect(a![0]!.entryId).toBeDefined();
    expect(b![0]!.entryId).toBe(a![0]!.entryId);
    expect(await redis.xlen(stream.name)).toBe(2);
    await waitFor(() => seen.length === 1);
    await settle();
    expect(seen).toEqual([[5, firstId]]);
    expect(await listDeadLetters(redis, stream)).toEqual([]);
  });

  it('puts an entry that two groups dead-lettered back once, even replayed in two calls, and removes both dead letters', async () => {
    const stream = testStream();
    const refuse = () => {
      throw new NonRetryableError('no');
    };
    start(stream, refuse, { group: 'g1' });
    start(stream, refuse, { group: 'g2' });
    await groupCreated(stream);
    await publisher.publish(stream, { n: 3 });
    const letters = await waitFor(async () => {
      const found = await listDeadLetters(redis, stream);
      return found.length === 2 && found;
    });

    // One operator replays one group's dead letter, later another replays the other's.
    const replayed = [
      ...(await replayDeadLetters(redis, stream, [letters[0]!.id])),
      ...(await replayDeadLetters(redis, stream, [letters[1]!.id])),
    ];

    const [first, second] = replayed.map((r) => r.entryId);
    expect(first).toBeDefined();
    expect(second).toBe(first);
    expect((await redis.xrange(stream.name, '-', '+')).map(([id]) => id)).toContain(first);
    expect(await redis.xlen(stream.name)).toBe(2);
  });
});

describe('retention', () => {
  it('trims the stream to about maxLen entries as it publishes', async () => {
    const stream = defineStream({ ...testStream(), retention: { maxLen: 100 } });

    for (let n = 0; n < 1_000; n += 1) await publisher.publish(stream, { n });

    // `~` trims whole nodes of 100 entries: between 100 and 200 remain.
    const length = await redis.xlen(stream.name);
    expect(length).toBeGreaterThanOrEqual(100);
    expect(length).toBeLessThan(200);
  });

  it('trims with publishMany as publish does', async () => {
    const stream = defineStream({ ...testStream(), retention: { maxLen: 100 } });

    for (let start = 0; start < 1_000; start += 250) {
      await publisher.publishMany(
        stream,
        Array.from({ length: 250 }, (_, i) => ({ n: start + i })),
      );
    }

    const length = await redis.xlen(stream.name);
    expect(length).toBeGreaterThanOrEqual(100);
    expect(length).toBeLessThan(200);
    const newest = await redis.xrevrange(stream.name, '+', '-', 'COUNT', 1);
    expect(newest[0]?.[1]).toEqual(['n', '999']);
  });

  it('drops entries older than maxAgeMs as it publishes', async () => {
    const stream = defineStream({ ...testStream(), retention: { maxAgeMs: 60_000 } });
    // 250 entries from 1970: two full nodes of old entries, and half a node.
    for (let seq = 0; seq < 250; seq += 1) await redis.xadd(stream.name, `1-${seq}`, 'n', '0');

    await publisher.publish(stream, { n: 1 });

    expect(await redis.xlen(stream.name)).toBe(51);
  });

  it('keeps every entry with keep-all, and refuses a retention out of range', async () => {
    const stream = defineStream({ ...testStream(), retention: 'keep-all' });
    for (let seq = 0; seq < 250; seq += 1) await redis.xadd(stream.name, `1-${seq}`, 'n', '0');

    await publisher.publish(stream, { n: 1 });

    expect(await redis.xlen(stream.name)).toBe(251);
    expect(() => defineStream({ ...testStream(), retention: { maxLen: 0 } })).toThrow(/maxLen/);
  });
});

describe('close() under load', () => {
  it('acks every entry whose handler finished and leaves the rest to another consumer, none handled twice', async () => {
    const stream = testStream();
    await publishRange(stream, 60);
    const finished: number[] = [];
    const slow = (into: number[]) => async (event: { n: number }) => {
      await new Promise((resolve) => setTimeout(resolve, 10));
      into.push(event.n);
    };
    const first = start(stream, slow(finished), { consumer: 'first', count: 20 });
    await waitFor(() => finished.length >= 15);

    await first.close();

    const stillPending = await pendingCount(stream);
    const afterwards: number[] = [];
    start(stream, slow(afterwards), { consumer: 'second', claimIdleMs: 100 });
    await waitFor(
      async () => finished.length + afterwards.length === 60 && (await pendingCount(stream)) === 0,
      {
        what: 'all 60 handled',
      },
    );
    await settle();
    expect(stillPending).toBeGreaterThan(0);
    expect([...finished, ...afterwards].sort((x, y) => x - y)).toEqual(
      Array.from({ length: 60 }, (_, n) => n),
    );
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
    opened.push(sub);
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
    opened.push(sub);
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

describe('when Redis is in trouble', () => {
  let server: RedisServer;
  let admin: Redis;
  beforeAll(async () => {
    server = await startRedisServer({ args: ['--enable-debug-command', 'yes'] });
    admin = new Redis(server.url);
  });
  afterEach(async () => {
    await admin.config('SET', 'maxmemory', '0');
  });
  afterAll(async () => {
    await admin?.quit();
    await server?.stop();
  });

  /** Subscribes on the private server, at the shipped retry and delivery settings. */
  function startOn(
    stream: TestStream,
    handler: Handler<{ n: number }>,
    { consumer = 'c1', ...options }: Partial<SubscribeOptions> & { consumer?: string } = {},
  ) {
    const sub = subscribe('g', consumer, stream, handler, { connection: server.url, ...options });
    opened.push(sub);
    return sub;
  }

  it('handles every entry once Redis accepts writes again after refusing them (out of memory), dead-lettering none', async () => {
    const stream = testStream();
    const local = createPublisher({ connection: admin });
    for (let n = 0; n < 20; n += 1) await local.publish(stream, { n });
    await local.close();
    // A backlog waiting for a group that exists, as the services' groups do.
    await admin.xgroup('CREATE', stream.name, 'g', '0');
    // The handler's effect is a write, as a payment's is.
    const effects = new Redis(server.url, { maxRetriesPerRequest: 1 });
    const runs: number[] = [];
    const { logger, warnings } = recordingLogger();
    await admin.config('SET', 'maxmemory-policy', 'noeviction');
    await admin.config('SET', 'maxmemory', '1');
    await expect(admin.set('probe', '1')).rejects.toThrow(/^OOM/);

    startOn(
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
    const effects = new Redis(server.url, { maxRetriesPerRequest: 1, commandTimeout: 300 });
    const done = new Set<number>();
    startOn(
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
    const late = new Redis(server.url);
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

  it('delivers an entry again after RetryLaterError without counting the run', async () => {
    const stream = testStream();
    const runs: number[] = [];
    let waits = 0;
    startOn(
      stream,
      (_event, { deliveryCount }) => {
        if (waits < 4) {
          waits += 1;
          throw new RetryLaterError('its lease is held by another consumer');
        }
        runs.push(deliveryCount);
      },
      { maxDeliveries: 2, retryDelayMs: 20 },
    );

    const local = createPublisher({ connection: admin });
    await local.publish(stream, { n: 0 });
    await local.close();

    await waitFor(() => runs.length === 1);
    expect(runs).toEqual([1]);
    expect(await admin.xlen(`${stream.name}:dlq`)).toBe(0);
  });

  it('takes a run that Redis cut short off the count, for the consumer that takes the entry over too', async () => {
    const stream = testStream();
    const local = createPublisher({ connection: admin });
    await local.publish(stream, { n: 0 });
    await local.close();
    const faulted = deferred();
    const first = startOn(
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

    startOn(stream, (_event, { deliveryCount }) => void runs.push(deliveryCount), {
      consumer: 'second',
      claimIdleMs: 100,
    });

    await waitFor(() => runs.length === 1, { what: 'the entry taken over' });
    expect(runs).toEqual([1]);
  });

  it('does not warn of a lost lease when the handler acked its entry itself', async () => {
    const stream = testStream();
    const { logger, warnings } = recordingLogger();
    const own = new Redis(server.url);
    const finished = deferred();
    // A lease renewal every 100 ms comes while the handler runs on after its own XACK.
    startOn(
      stream,
      async (_event, { id, group }) => {
        await own.xack(stream.name, group, id);
        await new Promise((resolve) => setTimeout(resolve, 400));
        finished.resolve();
      },
      { claimIdleMs: 300, logger },
    );
    const local = createPublisher({ connection: admin });
    await local.publish(stream, { n: 0 });
    await local.close();

    await finished.promise;
    await settle();
    expect(warnings.filter((w) => w.includes('lost the lease'))).toEqual([]);
    own.disconnect();
  });

  describe('when an entry ID lies far ahead of the clock', () => {
    it('dead-letters that entry with its reason and handles the others', async () => {
      const stream = testStream();
      const seen: number[] = [];
      startOn(stream, (event) => void seen.push(event.n));
      const local = createPublisher({ connection: admin });
      await local.publish(stream, { n: 1 });
      const ahead = `${Date.now() + 3_600_000}-0`;
      await admin.xadd(stream.name, ahead, 'n', '2');

      const [letter] = await waitFor(async () => {
        const found = await entryFields(admin, `${stream.name}:dlq`);
        return found.length > 0 && found;
      });
      expect(letter).toMatchObject({ n: '2', 'dlq:id': ahead });
      expect(letter!['dlq:reason']).toMatch(/^entry ID ahead of the clock: .* ms ahead of the server clock/);
      expect(seen).toEqual([1]);
      await local.close();
    });

    it('refuses to publish after it, writing nothing, with publish and publishMany', async () => {
      const stream = testStream();
      const local = createPublisher({ connection: admin });
      await admin.xadd(stream.name, `${Date.now() + 3_600_000}-0`, 'n', '0');

      await expect(local.publish(stream, { n: 1 })).rejects.toThrow(
        /^IDAHEAD .* ms ahead of the server clock/,
      );
      await expect(local.publishMany(stream, [{ n: 2 }, { n: 3 }])).rejects.toThrow(/^IDAHEAD/);

      expect(await admin.xlen(stream.name)).toBe(1);
      await local.close();
    });

    it('works again after the repair the README gives: XDEL, XSETID, XGROUP SETID', async () => {
      const stream = testStream();
      const seen: number[] = [];
      startOn(stream, (event) => void seen.push(event.n));
      const local = createPublisher({ connection: admin });
      const good = await local.publish(stream, { n: 1 });
      await waitFor(() => seen.length === 1);
      const ahead = `${Date.now() + 3_600_000}-0`;
      await admin.xadd(stream.name, ahead, 'n', '2');
      await waitFor(async () => (await admin.xlen(`${stream.name}:dlq`)) === 1);
      await expect(local.publish(stream, { n: 3 })).rejects.toThrow(/^IDAHEAD/);

      await admin.xdel(stream.name, ahead);
      await admin.call('XSETID', stream.name, good);
      await admin.xgroup('SETID', stream.name, 'g', good);

      await local.publish(stream, { n: 4 });
      await waitFor(() => seen.includes(4), { what: 'an entry published after the repair' });
      expect(seen).toEqual([1, 4]);
      await local.close();
    });
  });
});
