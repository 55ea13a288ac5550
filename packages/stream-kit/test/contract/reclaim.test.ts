import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { startRedisServer } from '../../../../harness/redis-server.ts';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import { createPublisher, type DeliveryContext } from '../../src/index.ts';
import { contractSuite, recordingLogger, settle, testStream } from './setup.ts';

/*
 * Who may take an entry, and when: a consumer first handles what it held before it restarted; an
 * entry idle for claimIdleMs is taken over (XAUTOCLAIM) by another consumer of the group; a
 * consumer renews the lease of every entry it holds (running or waiting in its batch), so nobody
 * takes those; and consumers long idle that hold nothing are removed.
 */

const suite = contractSuite();
const { start, startAtDefaults, publishRange, pendingCount, groupCreated, crashedConsumerHolding } = suite;

describe('when it starts again with entries of its own pending', () => {
  it('handles its own pending entries first when it starts again', async () => {
    const stream = testStream();
    await publishRange(stream, 3);
    // A consumer that read entries and died before acking them: they sit in its pending list.
    await suite.redis.xgroup('CREATE', stream.name, 'g', '0');
    await suite.redis.xreadgroup('GROUP', 'g', 'c1', 'COUNT', 2, 'STREAMS', stream.name, '>');
    const seen: [number, number][] = [];

    start(stream, (event, { deliveryCount }) => void seen.push([event.n, deliveryCount]));

    await waitFor(() => seen.length === 3);
    expect(seen).toEqual([
      [0, 2],
      [1, 2],
      [2, 1],
    ]);
  });
});

describe('when another consumer of the group crashed holding entries', () => {
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
    await suite.publisher.publish(stream, { n: 99 });

    await waitFor(() => seen.length === 1);
    expect(seen).toEqual([99]);
    const [, , , perConsumer] = (await suite.redis.xpending(stream.name, 'g')) as [
      number,
      string,
      string,
      [string, string][],
    ];
    expect(perConsumer).toContainEqual(['crashed', '3']);
  });

  it('does not handle an entry a second consumer took while it worked through its own pending list', async () => {
    const stream = testStream();
    await suite.redis.xgroup('CREATE', stream.name, 'g', '0', 'MKSTREAM');
    await publishRange(stream, 20);
    // 'a' read 20 entries and restarted under the same name; 'b' takes over what 'a' leaves idle.
    await suite.redis.xreadgroup('GROUP', 'g', 'a', 'COUNT', 20, 'STREAMS', stream.name, '>');
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
    const [[firstId]] = (await suite.redis.xrange(stream.name, '-', '+', 'COUNT', 1)) as [[string, string[]]];
    await suite.redis.xdel(stream.name, firstId);
    const seen: number[] = [];

    start(stream, (event) => void seen.push(event.n), { claimIdleMs: 100 });

    await waitFor(() => seen.length === 2);
    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'nothing pending' });
    expect(seen).toEqual([1, 2]);
  });

  it('acks, and logs, entries trimmed from the stream while they were pending', async () => {
    const stream = testStream();
    await crashedConsumerHolding(stream);
    await suite.redis.xtrim(stream.name, 'MAXLEN', 0);
    const seen: number[] = [];
    const { logger, warnings } = recordingLogger();

    start(stream, (event) => void seen.push(event.n), { claimIdleMs: 100, logger });

    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'nothing pending' });
    expect(warnings).toContainEqual(expect.stringContaining('trimmed from the stream'));
    expect(seen).toEqual([]);
  });
});

describe('when entries wait in its batch longer than claimIdleMs', () => {
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
});

describe('when a handler runs longer than claimIdleMs', () => {
  it.each([
    // Both reclaim every 150 ms; the handler runs five times claimIdleMs.
    ['five times claimIdleMs 300', 300, 1_500],
    // Three times claimIdleMs, five liveness marks' lives (3 s): the lease and the mark both hold.
    ['three times claimIdleMs 5000, five liveness marks', 5_000, 15_500],
  ])(
    'keeps renewing its lease and its liveness, so no other consumer takes the entry while it runs %s',
    async (_, claimIdleMs, handlerMs) => {
      const stream = testStream();
      const starts: [number, string, number][] = [];
      const handler = (consumer: string) => async (event: { n: number }, context: DeliveryContext) => {
        starts.push([event.n, consumer, context.deliveryCount]);
        await new Promise((resolve) => setTimeout(resolve, handlerMs));
      };
      start(stream, handler('a'), { consumer: 'a', claimIdleMs });
      start(stream, handler('b'), { consumer: 'b', claimIdleMs });
      await groupCreated(stream);

      await suite.publisher.publish(stream, { n: 1 });

      await waitFor(async () => starts.length > 0 && (await pendingCount(stream)) === 0, {
        what: 'the slow entry acked',
        timeoutMs: handlerMs + 10_000,
      });
      await settle();
      expect(starts).toEqual([[1, expect.any(String), 1]]);
    },
    30_000,
  );

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
      await suite.closeOpened();
      admin.disconnect();
      await slow.stop();
    }
  });

  it('does not warn of a lost lease when the handler acked its entry itself', async () => {
    const stream = testStream();
    const { logger, warnings } = recordingLogger();
    const own = new Redis(suite.url);
    const finished = deferred();
    // A lease renewal every 100 ms comes while the handler runs on after its own XACK.
    startAtDefaults(
      stream,
      async (_event, { id, group }) => {
        await own.xack(stream.name, group, id);
        await new Promise((resolve) => setTimeout(resolve, 400));
        finished.resolve();
      },
      { claimIdleMs: 300, logger },
    );
    await suite.publisher.publish(stream, { n: 0 });

    await finished.promise;
    await settle();
    expect(warnings.filter((w) => w.includes('lost the lease'))).toEqual([]);
    own.disconnect();
  });
});

describe('when consumers of the group have long been idle', () => {
  it('removes consumers long idle that hold no entries, never one that still holds entries', async () => {
    const stream = testStream();
    await suite.redis.xgroup('CREATE', stream.name, 'g', '0', 'MKSTREAM');
    await publishRange(stream, 2);
    // 'gone' handled its entry and left; 'holder' read one and died holding it.
    const [[, [[doneId]]]] = (await suite.redis.xreadgroup(
      'GROUP', 'g', 'gone', 'COUNT', 1, 'STREAMS', stream.name, '>',
    )) as [[string, [[string, string[]]]]]; // prettier-ignore
    await suite.redis.xack(stream.name, 'g', doneId);
    await suite.redis.xreadgroup('GROUP', 'g', 'holder', 'COUNT', 1, 'STREAMS', stream.name, '>');
    await new Promise((resolve) => setTimeout(resolve, 100));
    const consumers = async () =>
      ((await suite.redis.xinfo('CONSUMERS', stream.name, 'g')) as string[][]).map((info) => info[1]);

    start(stream, () => {}, { claimIdleMs: 60_000, deleteIdleConsumersAfterMs: 50 });

    await waitFor(async () => !(await consumers()).includes('gone'), { what: "'gone' removed" });
    expect(await consumers()).toContain('holder');
    expect(await pendingCount(stream)).toBe(1);
  });
});
