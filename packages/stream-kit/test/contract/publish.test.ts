import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineStream, EventValidationError, type Retention } from '../../src/index.ts';
import { contractSuite, testStream, type TestStream } from './setup.ts';

/*
 * publish() and publishMany(): what they write, what they refuse (writing nothing), and the
 * retention they apply as they write.
 */

const suite = contractSuite();

describe('publish', () => {
  it('writes the event as flat string fields and resolves to the entry ID', async () => {
    const stream = testStream();

    const id = await suite.publisher.publish(stream, { n: 42, note: 'hello' });

    const entries = await suite.redis.xrange(stream.name, '-', '+');
    expect(entries).toEqual([[id, ['n', '42', 'note', 'hello']]]);
  });

  it('rejects an invalid value with a typed error and writes nothing', async () => {
    const stream = testStream();

    const attempt = suite.publisher.publish(stream, { n: -1 });

    await expect(attempt).rejects.toBeInstanceOf(EventValidationError);
    await expect(attempt).rejects.toThrow(/n: must be digits/);
    expect(await suite.redis.exists(stream.name)).toBe(0);
  });

  it('publishes a batch in order with publishMany, and writes none of it if one event is invalid', async () => {
    const stream = testStream();

    const ids = await suite.publisher.publishMany(stream, [{ n: 1 }, { n: 2, note: 'x' }, { n: 3 }]);
    const refused = suite.publisher.publishMany(stream, [{ n: 4 }, { n: -1 }]);

    await expect(refused).rejects.toBeInstanceOf(EventValidationError);
    const entries = await suite.redis.xrange(stream.name, '-', '+');
    await suite.redis.set(`${stream.name}:not-a-stream`, 'x');
    await expect(
      suite.publisher.publishMany({ ...stream, name: `${stream.name}:not-a-stream` }, [{ n: 5 }]),
    ).rejects.toThrow(/WRONGTYPE/);
    expect(entries).toEqual([
      [ids[0], ['n', '1']],
      [ids[1], ['n', '2', 'note', 'x']],
      [ids[2], ['n', '3']],
    ]);
  });

  it('publishes a batch of 20,000 with publishMany in one call, and trims it once written', async () => {
    const stream = defineStream({ ...testStream(), retention: { maxLen: 100 } });

    const ids = await suite.publisher.publishMany(
      stream,
      Array.from({ length: 20_000 }, (_, n) => ({ n })),
    );

    expect(ids).toHaveLength(20_000);
    // Past XTRIM's own limit of 10,000 entries a call: `~` keeps whole nodes, 100 to 200 entries.
    const length = await suite.redis.xlen(stream.name);
    expect(length).toBeGreaterThanOrEqual(100);
    expect(length).toBeLessThan(200);
    const newest = await suite.redis.xrevrange(stream.name, '+', '-', 'COUNT', 1);
    expect(newest[0]).toEqual([ids.at(-1), ['n', '19999']]);
  });

  it('refuses an event without fields, which XADD could not write, and writes none of its batch', async () => {
    const stream = defineStream({
      name: `test-${randomUUID()}`,
      schema: z.object({ note: z.string().optional() }),
      retention: 'keep-all',
    });

    const refused = suite.publisher.publishMany(stream, [{ note: 'a' }, {}]);

    await expect(refused).rejects.toThrow(/has no fields/);
    expect(await suite.redis.exists(stream.name)).toBe(0);
  });

  it('refuses a wrong field at compile time', () => {
    const stream = testStream();
    // The assertion is the @ts-expect-error itself: `pnpm typecheck` fails if this compiles.
    // @ts-expect-error `m` is not a field of this stream's events
    const wrong = () => suite.publisher.publish(stream, { n: 1, m: 1 });
    expect(wrong).toBeTypeOf('function');
  });
});

describe('retention', () => {
  // The same 1,000 events, one call each or in batches of 250.
  it.each<[string, (stream: TestStream) => Promise<void>]>([
    [
      'publish',
      async (stream) => {
        for (let n = 0; n < 1_000; n += 1) await suite.publisher.publish(stream, { n });
      },
    ],
    [
      'publishMany',
      async (stream) => {
        for (let start = 0; start < 1_000; start += 250) {
          await suite.publisher.publishMany(
            stream,
            Array.from({ length: 250 }, (_, i) => ({ n: start + i })),
          );
        }
      },
    ],
  ])('trims the stream to about maxLen entries as it publishes with %s', async (_via, publishAll) => {
    const stream = defineStream({ ...testStream(), retention: { maxLen: 100 } });

    await publishAll(stream);

    // `~` trims whole nodes of 100 entries: between 100 and 200 remain.
    const length = await suite.redis.xlen(stream.name);
    expect(length).toBeGreaterThanOrEqual(100);
    expect(length).toBeLessThan(200);
    const newest = await suite.redis.xrevrange(stream.name, '+', '-', 'COUNT', 1);
    expect(newest[0]?.[1]).toEqual(['n', '999']);
  });

  it.each<[string, Retention, number]>([
    ['drops entries older than maxAgeMs', { maxAgeMs: 60_000 }, 51],
    ['keeps every entry with keep-all', 'keep-all', 251],
  ])('%s as it publishes', async (_does, retention, kept) => {
    const stream = defineStream({ ...testStream(), retention });
    // 250 entries from 1970: two full nodes of old entries, and half a node.
    for (let seq = 0; seq < 250; seq += 1) await suite.redis.xadd(stream.name, `1-${seq}`, 'n', '0');

    await suite.publisher.publish(stream, { n: 1 });

    expect(await suite.redis.xlen(stream.name)).toBe(kept);
  });
});
