import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { waitFor } from '../../../../harness/wait.ts';
import {
  defineStream,
  dropDeadLetters,
  listDeadLetters,
  NonRetryableError,
  replayDeadLetters,
  subscribe,
} from '../../src/index.ts';
import { contractSuite, settle, testStream } from './setup.ts';

/*
 * The dead-letter stream (`<stream>:dlq`): what lands there (entries that do not parse, with their
 * bytes kept as they were) and in what format, what happens while it cannot be written, and how
 * listDeadLetters, replayDeadLetters and dropDeadLetters read, put back and delete its entries.
 */

const suite = contractSuite();
const { start, track, publishRange, pendingCount, deadLetters, groupCreated } = suite;

describe('when an entry does not match the schema', () => {
  it('moves it to the dead-letter stream with its reason and handles the next entries', async () => {
    const stream = testStream();
    const handled: number[] = [];
    start(stream, (event) => void handled.push(event.n));

    const poisonId = await suite.redis.xadd(stream.name, '*', 'n', 'not-a-number', 'extra', 'kept');
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

describe('when an entry is not valid UTF-8', () => {
  it('dead-letters it byte for byte with its reason and handles the entries around it', async () => {
    const stream = testStream();
    const seen: number[] = [];
    start(stream, (event) => void seen.push(event.n));
    await groupCreated(stream);
    const bad = Buffer.from([0x31, 0xff, 0xfe]);

    await suite.publisher.publish(stream, { n: 1 });
    await suite.redis.xadd(stream.name, '*', 'n', '2', 'note', bad);
    await suite.publisher.publish(stream, { n: 3 });

    await waitFor(() => seen.length === 2);
    expect(seen).toEqual([1, 3]);
    const [[, flat]] = (await suite.redis.xrangeBuffer(`${stream.name}:dlq`, '-', '+')) as [
      [Buffer, Buffer[]],
    ];
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
    await suite.redis.xadd(stream.name, '*', 'n', '2', 'note', bad);
    const [letter] = await waitFor(async () => {
      const found = await listDeadLetters(suite.redis, stream);
      return found.length > 0 && found;
    });

    const [replayed] = await replayDeadLetters(suite.redis, stream, [letter!.id]);
    const entryId = replayed!.entryId!;

    const [[, flat]] = (await suite.redis.xrangeBuffer(stream.name, entryId, entryId)) as [
      [Buffer, Buffer[]],
    ];
    expect(flat).toEqual([Buffer.from('n'), Buffer.from('2'), Buffer.from('note'), bad]);
    await waitFor(async () => (await listDeadLetters(suite.redis, stream)).length === 1, {
      what: 'dead-lettered again',
    });
    expect(seen).toEqual([]);
  });
});

describe('when the dead-letter stream cannot be written', () => {
  it('keeps the entry pending, dead-letters it once it can, and handles the entries after it', async () => {
    const stream = testStream();
    const dlq = `${stream.name}:dlq`;
    await suite.redis.set(dlq, 'not a stream');
    const handled: number[] = [];
    start(stream, (event) => void handled.push(event.n));

    await suite.redis.xadd(stream.name, '*', 'n', 'poison');
    await publishRange(stream, 3);
    await waitFor(() => handled.length === 3, { what: 'the entries after the poison one' });
    expect(await pendingCount(stream)).toBe(1);

    await suite.redis.del(dlq);

    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'nothing pending' });
    expect(handled).toEqual([0, 1, 2]);
    expect(await deadLetters(stream)).toEqual([expect.objectContaining({ n: 'poison' })]);
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
    const id = await suite.publisher.publish(stream, { n: 7, note: 'x' });

    const letters = await waitFor(async () => {
      const found = await listDeadLetters(suite.redis, stream);
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

  it('drops dead letters for good, without putting their entries back, and says which were not there', async () => {
    const stream = testStream();
    start(stream, () => {
      throw new NonRetryableError('never payable');
    });
    await suite.publisher.publish(stream, { n: 1 });
    await suite.publisher.publish(stream, { n: 2 });
    const letters = await waitFor(async () => {
      const found = await listDeadLetters(suite.redis, stream);
      return found.length === 2 && found;
    });

    const dropped = await dropDeadLetters(suite.redis, stream, [letters[0]!.id, '1-0']);

    expect(dropped).toEqual([
      { id: letters[0]!.id, dropped: true },
      { id: '1-0', dropped: false },
    ]);
    expect((await listDeadLetters(suite.redis, stream)).map((letter) => letter.id)).toEqual([letters[1]!.id]);
    expect(await suite.redis.xlen(stream.name)).toBe(2);
  });

  it('replays a dead letter to its stream once, even when replayed twice at once, keeping its identity', async () => {
    const stream = streamWithDefaults();
    const seen: [number, string][] = [];
    let failing = true;
    track(
      subscribe(
        'g',
        'c1',
        stream,
        (event) => {
          if (failing) throw new NonRetryableError('not yet');
          seen.push([event.n, event.origin]);
        },
        { connection: suite.url, blockMs: 200 },
      ),
    );
    const firstId = (await suite.redis.xadd(stream.name, '*', 'n', '5'))!;
    const [letter] = await waitFor(async () => {
      const found = await listDeadLetters(suite.redis, stream);
      return found.length > 0 && found;
    });
    failing = false;

    const [a, b] = await Promise.all([
      replayDeadLetters(suite.redis, stream, [letter!.id]),
      replayDeadLetters(suite.redis, stream, [letter!.id]),
    ]);

    // Both calls name the one entry it was put back as.
    expect(a![0]!.entryId).toBeDefined();
    expect(b![0]!.entryId).toBe(a![0]!.entryId);
    expect(await suite.redis.xlen(stream.name)).toBe(2);
    await waitFor(() => seen.length === 1);
    await settle();
    expect(seen).toEqual([[5, firstId]]);
    expect(await listDeadLetters(suite.redis, stream)).toEqual([]);
  });

  it('puts an entry that two groups dead-lettered back once, even replayed in two calls, and removes both dead letters', async () => {
    const stream = testStream();
    const refuse = () => {
      throw new NonRetryableError('no');
    };
    start(stream, refuse, { group: 'g1' });
    start(stream, refuse, { group: 'g2' });
    await groupCreated(stream);
    await suite.publisher.publish(stream, { n: 3 });
    const letters = await waitFor(async () => {
      const found = await listDeadLetters(suite.redis, stream);
      return found.length === 2 && found;
    });

    // One operator replays one group's dead letter, later another replays the other's.
    const replayed = [
      ...(await replayDeadLetters(suite.redis, stream, [letters[0]!.id])),
      ...(await replayDeadLetters(suite.redis, stream, [letters[1]!.id])),
    ];

    const [first, second] = replayed.map((r) => r.entryId);
    expect(first).toBeDefined();
    expect(second).toBe(first);
    expect((await suite.redis.xrange(stream.name, '-', '+')).map(([id]) => id)).toContain(first);
    expect(await suite.redis.xlen(stream.name)).toBe(2);
  });
});
