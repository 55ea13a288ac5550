import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { horizonOf, replay, subscribe, type DeliveryContext } from '../../src/index.ts';
import { testStream, type TestEvent } from '../test-stream.ts';

const redisUrl = inject('redisUrl');
let redis: Redis;
beforeAll(() => {
  redis = new Redis(redisUrl);
});
afterAll(async () => {
  await redis.quit();
});

const fill = async (name: string, from: number, to: number) => {
  const ids: string[] = [];
  for (let n = from; n < to; n += 1) ids.push((await redis.xadd(name, '*', 'n', String(n)))!);
  return ids;
};

describe('replay', () => {
  it('replays each stream from its first entry, one stream after the other, up to where each ended when it began', async () => {
    const first = testStream();
    const second = testStream();
    await fill(first.name, 0, 50);
    const secondIds = await fill(second.name, 0, 30);
    const seen: string[] = [];
    const group = `rebuild-${randomUUID()}`;

    const report = await replay(
      redis,
      group,
      'r1',
      [
        { stream: first, handler: async ({ n }: TestEvent) => void seen.push(`first ${n}`) },
        { stream: second, handler: async ({ n }: TestEvent) => void seen.push(`second ${n}`) },
      ],
      { concurrency: 4, count: 10 },
    );

    // Every entry of the first stream before any of the second.
    const lastFirst = seen.lastIndexOf(seen.filter((s) => s.startsWith('first')).at(-1)!);
    expect(seen.slice(0, lastFirst + 1).every((s) => s.startsWith('first'))).toBe(true);
    expect(new Set(seen.filter((s) => s.startsWith('first'))).size).toBe(50);
    expect(new Set(seen.filter((s) => s.startsWith('second'))).size).toBe(30);
    expect(report[second.name]).toEqual({ until: secondIds.at(-1), handled: 30 });
    // Nothing pending: the group has handled all it read.
    expect(await horizonOf(redis, second.name, group)).toEqual({
      delivered: secondIds.at(-1),
      caughtUp: true,
    });
  });

  it('leaves the group where it stopped: a subscription in it next goes on with the entries added since, none twice', async () => {
    const stream = testStream();
    await fill(stream.name, 0, 20);
    const group = `rebuild-${randomUUID()}`;
    const replayed: number[] = [];
    await replay(redis, group, 'r1', [
      { stream, handler: async ({ n }: TestEvent) => void replayed.push(n) },
    ]);
    await fill(stream.name, 20, 25);

    const after: number[] = [];
    const subscription = subscribe(group, 'live', stream, async ({ n }) => void after.push(n), {
      connection: redisUrl,
      blockMs: 100,
    });
    try {
      await expect.poll(() => after.length, { timeout: 5_000 }).toBe(5);
    } finally {
      await subscription.close();
    }
    expect(replayed.sort((a, b) => a - b)).toEqual([...Array(20).keys()]);
    expect(after).toEqual([20, 21, 22, 23, 24]);
  });

  it('waits for an entry its handler asks to retry, and counts what it handled', async () => {
    const stream = testStream();
    await fill(stream.name, 0, 5);
    let refusals = 0;
    const report = await replay(
      redis,
      `rebuild-${randomUUID()}`,
      'r1',
      [
        {
          stream,
          handler: async ({ n }: TestEvent, { deliveryCount }: DeliveryContext) => {
            if (n === 2 && deliveryCount === 1) {
              refusals += 1;
              throw new Error('not yet');
            }
          },
        },
      ],
      { retryDelayMs: 50 },
    );

    expect(refusals).toBe(1);
    expect(report[stream.name]?.handled).toBe(5);
  });

  it('starts the group at the beginning of a stream that is empty or missing, for what comes later', async () => {
    const stream = testStream();
    const group = `rebuild-${randomUUID()}`;

    expect(await replay(redis, group, 'r1', [{ stream, handler: async () => {} }])).toEqual({
      [stream.name]: { handled: 0 },
    });
    expect(await horizonOf(redis, stream.name, group)).toEqual({ delivered: '0-0', caughtUp: true });
  });

  it('refuses a group that exists: a replay starts a group of its own', async () => {
    const stream = testStream();
    await fill(stream.name, 0, 1);
    await redis.xgroup('CREATE', stream.name, 'live-group', '0');

    await expect(replay(redis, 'live-group', 'r1', [{ stream, handler: async () => {} }])).rejects.toThrow(
      `consumer group live-group exists on ${stream.name}`,
    );
  });
});
