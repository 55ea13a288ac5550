import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { parseSamples, sampleValue } from '../../../../harness/metrics.ts';
import { entryFields } from '../../../../harness/streams.ts';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import { leaseKey } from '../../src/consumer/partitions.ts';
import {
  defineStream,
  listDeadLetters,
  replayDeadLetters,
  subscribe,
  type DeliveryContext,
  type Handler,
  type SubscribeOptions,
} from '../../src/index.ts';
import { createBoard, type Overview } from '../../src/board/index.ts';
import { createMetrics } from '../../src/service.ts';
import { partitionNames, streamKeyOf } from '../../src/stream.ts';
import { contractSuite, settle } from './setup.ts';

/*
 * Partitioned streams (README, Partitions): events go to the partition their key picks; a group's
 * consumers share the partitions out, one owner per partition, and each partition's entries are
 * handled in order, a failed one holding back those after it; dead letters, their replay and the
 * metrics see one stream.
 */

const suite = contractSuite();

function partitioned(partitions = 4) {
  return defineStream({
    name: `parts-${randomUUID()}`,
    schema: z.object({ key: z.string(), seq: z.string().regex(/^\d+$/).transform(Number) }),
    partitions,
    partitionKey: 'key',
  });
}
type Partitioned = ReturnType<typeof partitioned>;
type Event = { key: string; seq: number };

const opened: { close(): Promise<void> }[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((sub) => sub.close()));
});

function start(
  stream: Partitioned,
  handler: Handler<Event>,
  options: Partial<SubscribeOptions> & { consumer?: string } = {},
) {
  const { consumer = 'c1', ...rest } = options;
  const sub = subscribe('g', consumer, stream, handler, {
    connection: suite.url,
    blockMs: 200,
    retryDelayMs: 20,
    ...rest,
  });
  opened.push(sub);
  return sub;
}

async function pending(stream: Partitioned) {
  let total = 0;
  for (const name of partitionNames(stream)) {
    const [count] = (await suite.redis.xpending(name, 'g').catch(() => [0])) as [number];
    total += count;
  }
  return total;
}

describe('publishing to a partitioned stream', () => {
  it('appends each event to the partition its key picks, and nothing to the stream name itself', async () => {
    const stream = partitioned();
    const events = ['a', 'b', 'c', 'd', 'e'].map((key) => ({ key, seq: 1 }));

    for (const event of events) await suite.publisher.publish(stream, event);

    for (const event of events) {
      const fields = await entryFields(suite.redis, streamKeyOf(stream, event));
      expect(fields).toContainEqual(expect.objectContaining({ key: event.key }));
    }
    expect(await suite.redis.exists(stream.name)).toBe(0);
  });

  it('writes a batch one script per partition, and answers the IDs in the order of the events', async () => {
    const stream = partitioned();
    const events = Array.from({ length: 12 }, (_, i) => ({ key: `k${i % 5}`, seq: i + 1 }));

    const ids = await suite.publisher.publishMany(stream, events);

    for (const [i, event] of events.entries()) {
      const [entry] = await suite.redis.xrange(streamKeyOf(stream, event), ids[i]!, ids[i]!);
      expect(entry?.[1]).toEqual(['key', event.key, 'seq', String(event.seq)]);
    }
  });
});

describe('a partitioned subscription', () => {
  it('handles a failed entry again before any entry written after it in its partition', async () => {
    const stream = partitioned(2);
    const handled: string[] = [];
    let failed = false;
    start(stream, (event) => {
      handled.push(`${event.key}#${event.seq}`);
      if (event.key === 'a' && event.seq === 1 && !failed) {
        failed = true;
        throw new Error('first run fails');
      }
    });

    for (let seq = 1; seq <= 4; seq += 1) await suite.publisher.publish(stream, { key: 'a', seq });
    await waitFor(() => handled.filter((h) => h.startsWith('a#')).length === 5, { what: 'five runs of a' });

    expect(handled.filter((h) => h.startsWith('a#'))).toEqual(['a#1', 'a#1', 'a#2', 'a#3', 'a#4']);
    await waitFor(async () => (await pending(stream)) === 0, { what: 'nothing pending' });
  });

  it('refuses a concurrency above 1, which would break the order it keeps', () => {
    expect(() => start(partitioned(), () => {}, { concurrency: 2 })).toThrow(/concurrency must be 1/);
  });

  it('shares the partitions out between two consumers, one owner per partition, and never runs one partition twice at once', async () => {
    const stream = partitioned(8);
    const inFlight = new Map<string, number>();
    const overlaps: string[] = [];
    const consumersOf = new Map<string, Set<string>>();
    const handler = (name: string) => async (_: Event, context: DeliveryContext) => {
      const now = (inFlight.get(context.stream) ?? 0) + 1;
      inFlight.set(context.stream, now);
      if (now > 1) overlaps.push(context.stream);
      (
        consumersOf.get(context.stream) ?? consumersOf.set(context.stream, new Set()).get(context.stream)!
      ).add(name);
      await new Promise((resolve) => setTimeout(resolve, 2));
      inFlight.set(context.stream, inFlight.get(context.stream)! - 1);
    };
    start(stream, handler('c1'), { consumer: 'c1' });
    start(stream, handler('c2'), { consumer: 'c2' });

    // Both members within a few lease checks: each then owns 4 partitions.
    await waitFor(
      async () => {
        const owners = await Promise.all(
          partitionNames(stream).map((p) => suite.redis.get(leaseKey(p, 'g'))),
        );
        const c1 = owners.filter((o) => o === 'c1').length;
        return c1 === 4 && owners.filter((o) => o === 'c2').length === 4;
      },
      { timeoutMs: 15_000, what: 'four partitions each' },
    );
    const events = Array.from({ length: 400 }, (_, i) => ({ key: `k${i % 40}`, seq: i }));
    await suite.publisher.publishMany(stream, events);
    await waitFor(async () => (await pending(stream)) === 0 && [...inFlight.values()].every((n) => n === 0), {
      what: 'every entry handled',
    });

    expect(overlaps).toEqual([]);
    // Once shared out, each partition stays with one consumer.
    expect([...consumersOf.values()].every((names) => names.size === 1)).toBe(true);
  });

  it("hands a closed consumer's partitions to the one left, which handles what it left and what comes next", async () => {
    const stream = partitioned(4);
    const seen = new Set<string>();
    const c1 = start(stream, (event) => void seen.add(`${event.key}#${event.seq}`), { consumer: 'c1' });
    start(stream, (event) => void seen.add(`${event.key}#${event.seq}`), { consumer: 'c2' });
    await suite.publisher.publishMany(
      stream,
      Array.from({ length: 40 }, (_, i) => ({ key: `k${i}`, seq: 1 })),
    );
    await waitFor(() => seen.size === 40, { what: 'the first 40' });

    await c1.close();
    await suite.publisher.publishMany(
      stream,
      Array.from({ length: 40 }, (_, i) => ({ key: `k${i}`, seq: 2 })),
    );

    await waitFor(() => seen.size === 80, { timeoutMs: 15_000, what: 'the next 40, by c2 alone' });
    const owners = await Promise.all(partitionNames(stream).map((p) => suite.redis.get(leaseKey(p, 'g'))));
    expect(owners).toEqual(['c2', 'c2', 'c2', 'c2']);
    expect(await pending(stream)).toBe(0);
  });

  it("dead-letters a malformed entry to the stream's one dead-letter stream, and replays it into its partition", async () => {
    const stream = partitioned(4);
    const handled: Event[] = [];
    start(stream, (event) => void handled.push(event));
    const partition = streamKeyOf(stream, { key: 'k1', seq: 1 });
    await suite.redis.xadd(partition, '*', 'key', 'k1', 'seq', 'one');

    await waitFor(async () => (await suite.redis.xlen(`${stream.name}:dlq`)) === 1, {
      what: 'the dead letter',
    });
    const [letter] = await listDeadLetters(suite.redis, stream);
    expect(letter!.reason).toMatch(/seq/);

    // Fixed by hand (what an operator would do), then replayed: it goes back to its key's partition.
    await suite.redis.xdel(`${stream.name}:dlq`, letter!.id);
    await suite.redis.xadd(
      `${stream.name}:dlq`,
      '*',
      'key',
      'k1',
      'seq',
      '1',
      'dlq:id',
      letter!.entryId,
      'dlq:stream',
      partition,
    );
    const [fixed] = await listDeadLetters(suite.redis, stream);
    const [replayed] = await replayDeadLetters(suite.redis, stream, [fixed!.id]);

    await waitFor(() => handled.length === 1, { what: 'the replayed entry handled' });
    expect(handled).toEqual([{ key: 'k1', seq: 1 }]);
    expect(await suite.redis.xrange(partition, replayed!.entryId!, replayed!.entryId!)).toHaveLength(1);
  });
});

describe('metrics of a partitioned stream', () => {
  it("sum each group's lag over the partitions under the stream's name, and show each partition's", async () => {
    const stream = partitioned(4);
    const redis = new Redis(suite.url);
    const metrics = createMetrics({ redis, cacheMs: 0 });
    const gate = deferred();
    start(stream, () => gate.promise, { metrics, count: 1 });
    await waitFor(async () => (await suite.redis.exists(leaseKey(partitionNames(stream)[3]!, 'g'))) === 1, {
      what: 'the partitions taken',
    });
    await settle();
    const events = Array.from({ length: 20 }, (_, i) => ({ key: `k${i}`, seq: 1 }));
    await suite.publisher.publishMany(stream, events);

    // Each partition's loop holds its first entry in its handler (and a batch read ahead): the
    // rest are lag, until the handlers are let go.
    const labels = { stream: stream.name, group: 'g' };
    const samples = await waitFor(
      async () => {
        const samples = parseSamples(await metrics.registry.metrics());
        const held = sampleValue(samples, 'stream_group_pending', labels);
        const lag = sampleValue(samples, 'stream_group_lag', labels);
        return held !== undefined && held >= 4 && lag === 20 - held && samples;
      },
      { what: 'the entries held and the lag to add up to the 20 written' },
    );
    const lag = sampleValue(samples, 'stream_group_lag', labels)!;
    const perPartition = partitionNames(stream).map((partition) =>
      sampleValue(samples, 'stream_partition_group_lag', { ...labels, partition })!,
    );
    expect(lag).toBeGreaterThan(0);
    expect(perPartition.reduce((a, b) => a + b, 0)).toBe(lag);
    expect(sampleValue(samples, 'stream_length', { stream: stream.name })).toBe(20);
    gate.resolve();
    redis.disconnect();
  });
});

describe('the board over a partitioned stream', () => {
  it('shows the stream once, its groups summed over the partitions, and each partition under it', async () => {
    const stream = partitioned(4);
    const redis = new Redis(suite.url);
    const board = createBoard({ redis, streams: [stream], intervalMs: 100 });
    const app = express().use('/board', board.router);
    const server = app.listen(0, '127.0.0.1');
    await once(server, 'listening');
    try {
      await suite.redis.xgroup('CREATE', partitionNames(stream)[0]!, 'g', '0', 'MKSTREAM');
      await suite.redis.xgroup('CREATE', partitionNames(stream)[1]!, 'g', '0', 'MKSTREAM');
      const events = Array.from({ length: 20 }, (_, i) => ({ key: `k${i}`, seq: 1 }));
      await suite.publisher.publishMany(stream, events);
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/board/api/overview`;
      const lagIn = (name: string) => events.filter((event) => streamKeyOf(stream, event) === name).length;

      const overview = await waitFor(
        async () => {
          const overview = (await (await fetch(url)).json()) as Overview;
          return overview.streams[0]?.length === 20 && overview;
        },
        { what: 'the 20 entries on the board' },
      );

      const [view] = overview.streams;
      expect(overview.streams).toHaveLength(1);
      expect(view!.name).toBe(stream.name);
      expect(view!.entriesAdded).toBe(20);
      expect(view!.groups.map((g) => [g.name, g.lag])).toEqual([
        ['g', lagIn(partitionNames(stream)[0]!) + lagIn(partitionNames(stream)[1]!)],
      ]);
      expect(view!.partitions!.map((p) => [p.name, p.length])).toEqual(
        partitionNames(stream).map((name) => [name, lagIn(name)]),
      );
    } finally {
      await board.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      redis.disconnect();
    }
  });
});
