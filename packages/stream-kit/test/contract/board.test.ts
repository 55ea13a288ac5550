import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { waitFor } from '../../../../harness/wait.ts';
import { NonRetryableError } from '../../src/index.ts';
import {
  BoardError,
  createBoard,
  type Board,
  type BoardOptions,
  type DeadLetterPage,
  type Overview,
  type Sample,
  type Timeline,
} from '../../src/board/index.ts';
import { contractSuite, testStream, type TestStream } from './setup.ts';

/*
 * The board's HTTP API (`@msa/stream-kit/board`) against a real Redis: what it shows of streams,
 * groups and consumers, its history and live events, the dead-letter search and the writes
 * (replay, discard) with and without the token, the timeline of one entity, and bad input.
 */

const suite = contractSuite();
const { start, publishRange } = suite;
const TOKEN = 'a-board-token-for-tests';

const opened: { board: Board; close: () => Promise<void> }[] = [];
const clients: Redis[] = [];
afterEach(async () => {
  for (const { board, close } of opened.splice(0)) {
    await board.close();
    await close();
  }
  await Promise.all(clients.splice(0).map((client) => client.quit().catch(() => client.disconnect())));
});

/** A board over `streams`, mounted at /board in an app listening on a free port; its base URL. */
async function serve(streams: TestStream[], options: Partial<BoardOptions> = {}) {
  const redis = new Redis(suite.url);
  clients.push(redis);
  const board = createBoard({ redis, streams, intervalMs: 100, token: TOKEN, ...options });
  const app = express();
  app.use('/board', board.router);
  const server = app.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const close = () => new Promise<void>((resolve) => server.close(() => resolve()));
  opened.push({ board, close });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/board`;
  const get = async <T>(path: string) => {
    const res = await fetch(`${base}${path}`);
    return { status: res.status, body: (await res.json()) as T };
  };
  const post = async <T>(path: string, body: unknown, token: string | undefined = TOKEN) => {
    const res = await fetch(`${base}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: res.status, headers: res.headers, body: (await res.json()) as T };
  };
  return { base, board, get, post };
}

/**
 * A stream whose group 'g' dead-letters odd `n` (NonRetryableError `declined <n>`) and acks the
 * rest, with n = 0..count-1 handled; resolves once the subscription is closed again.
 */
async function withDeadLetters(count: number) {
  const stream = testStream();
  const sub = start(stream, (event) => {
    if (event.n % 2 === 1) throw new NonRetryableError(`declined ${event.n}`);
  });
  await publishRange(stream, count);
  const oddCount = Math.floor(count / 2);
  await waitFor(async () => (await suite.redis.xlen(`${stream.name}:dlq`)) === oddCount, {
    what: 'the dead letters',
  });
  await waitFor(async () => ((await suite.redis.xpending(stream.name, 'g')) as [number])[0] === 0, {
    what: 'every entry acked',
  });
  await sub.close();
  return stream;
}

describe('the overview', () => {
  it('shows each stream with its length, dead letters, groups, lag, pending and consumers', async () => {
    const stream = testStream();
    await suite.redis.xgroup('CREATE', stream.name, 'g', '0', 'MKSTREAM');
    await publishRange(stream, 5);
    // A consumer that read two entries and holds them; three are not delivered yet.
    await suite.redis.xreadgroup('GROUP', 'g', 'holder', 'COUNT', 2, 'STREAMS', stream.name, '>');
    await suite.redis.xadd(`${stream.name}:dlq`, '*', 'n', 'x', 'dlq:reason', 'by hand');
    const { get } = await serve([stream]);

    const { status, body } = await get<Overview>('/api/overview');

    expect(status).toBe(200);
    expect(body.redisUp).toBe(true);
    expect(body.writable).toBe(true);
    const [view] = body.streams;
    expect(view).toMatchObject({ name: stream.name, length: 5, entriesAdded: 5, deadLetters: 1 });
    expect(view!.groups).toEqual([
      expect.objectContaining({
        name: 'g',
        lag: 3,
        pending: 2,
        entriesRead: 2,
        consumers: [expect.objectContaining({ name: 'holder', pending: 2 })],
      }),
    ]);
    expect(view!.groups[0]!.lagSeconds).toBeGreaterThanOrEqual(0);
  });

  it('shows a stream not created yet as empty, with no groups', async () => {
    const stream = testStream();
    const { get } = await serve([stream]);

    const { body } = await get<Overview>('/api/overview');

    expect(body.streams[0]).toMatchObject({ name: stream.name, length: 0, lastId: '0-0', groups: [] });
  });

  it('is read-only without a token, and says so', async () => {
    const { get } = await serve([testStream()], { token: undefined });

    expect((await get<Overview>('/api/overview')).body.writable).toBe(false);
  });
});

describe('the history and the live events', () => {
  it('rates entries added and handled per second, and keeps the lag, tick by tick', async () => {
    const stream = testStream();
    start(stream, () => {});
    await suite.groupCreated(stream);
    const { get } = await serve([stream]);
    await waitFor(async () => (await get<{ samples: Sample[] }>('/api/history')).body.samples.length > 0, {
      what: 'a first sample',
    });

    await publishRange(stream, 20);

    await waitFor(
      async () => {
        const { samples } = (await get<{ samples: Sample[] }>('/api/history')).body;
        // Each rate times its interval: the entries themselves, give or take a rounding.
        const total = (rate: (sample: Sample) => number) =>
          samples
            .slice(1)
            .reduce((sum, sample, i) => sum + (rate(sample) * (sample.at - samples[i]!.at)) / 1_000, 0);
        const added = total((sample) => sample.added[stream.name] ?? 0);
        const handled = total((sample) => sample.groups[`${stream.name}/g`]?.handled ?? 0);
        return Math.round(added) === 20 && Math.round(handled) === 20;
      },
      { what: '20 entries added and handled in the history' },
    );
  });

  it('sends each tick to an open event stream, overview and sample', async () => {
    const stream = testStream();
    const { base } = await serve([stream]);
    const controller = new AbortController();
    const res = await fetch(`${base}/api/events`, { signal: controller.signal });
    expect(res.headers.get('content-type')).toBe('text/event-stream');
    const reader = res.body!.getReader();
    let text = '';
    while ((text.match(/event: sample/g) ?? []).length < 2)
      text += new TextDecoder().decode((await reader.read()).value);
    controller.abort();

    const data = text.split('\n').find((line) => line.startsWith('data: '))!;
    const { overview } = JSON.parse(data.slice('data: '.length)) as { overview: Overview };
    expect(overview.streams.map((view) => view.name)).toEqual([stream.name]);
  });

  it('ends the open event streams when closed', async () => {
    const { base, board } = await serve([testStream()]);
    const res = await fetch(`${base}/api/events`);
    const reader = res.body!.getReader();
    await reader.read();

    await board.close();

    for (;;) if ((await reader.read()).done) break;
  });
});

describe('the dead-letter search', () => {
  it('finds dead letters by the entity field, by a part of the reason in any case, and by time', async () => {
    const stream = await withDeadLetters(10);
    const { get } = await serve([stream], { entity: { name: 'thing', field: 'n' } });
    const search = (query: string) =>
      get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}&${query}`).then(({ body }) =>
        body.letters.map((letter) => letter.fields.n),
      );

    expect(await search('')).toEqual(['1', '3', '5', '7', '9']);
    expect(await search('n=7')).toEqual(['7']);
    expect(await search('reason=DECLINED%205')).toEqual(['5']);
    const [, third] = (
      await get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}`)
    ).body.letters.slice(1);
    expect(await search(`from=${new Date(third!.at).toISOString()}`)).toEqual(
      expect.arrayContaining(['5', '7', '9']),
    );
    expect(await search(`to=${new Date(Date.now() - 3_600_000).toISOString()}`)).toEqual([]);
  });

  it('pages: `next` leads to the rest, and the last page has none', async () => {
    const stream = await withDeadLetters(10);
    const { get } = await serve([stream]);

    const first = (await get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}&count=3`)).body;
    const rest = (
      await get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}&count=3&after=${first.next}`)
    ).body;

    expect(first.letters.map((letter) => letter.fields.n)).toEqual(['1', '3', '5']);
    expect(first.total).toBe(5);
    expect(rest.letters.map((letter) => letter.fields.n)).toEqual(['7', '9']);
    expect(rest.next).toBeUndefined();
  });

  it('answers a dead letter with where it came from and why', async () => {
    const stream = await withDeadLetters(2);
    const { get } = await serve([stream]);

    const [letter] = (await get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}`)).body.letters;

    expect(letter).toMatchObject({
      stream: stream.name,
      group: 'g',
      consumer: 'c1',
      deliveries: 1,
      reason: 'non-retryable: declined 1',
      fields: { n: '1' },
    });
    expect(letter!.at).toBeGreaterThan(Date.now() - 60_000);
  });

  it.each([
    ['an unknown stream', 'stream=nope', 404, 'stream'],
    ['no stream', 'count=3', 400, 'stream'],
    ['a malformed `after`', 'stream=$&after=yesterday', 400, 'after'],
    ['a count out of range', 'stream=$&count=1000', 400, 'count'],
    ['a time that is not one', 'stream=$&from=soon', 400, 'from'],
  ])('refuses %s, naming the field', async (_, query, status, field) => {
    const stream = testStream();
    const { get } = await serve([stream]);

    const answer = await get<{ error: string; field: string }>(
      `/api/dead-letters?${query.replace('$', stream.name)}`,
    );

    expect(answer.status).toBe(status);
    expect(answer.body.field).toBe(field);
    expect(answer.body.error).toMatch(/\S/);
  });
});

describe('replay and discard', () => {
  it('replays the dead letters named: their entries go back on the stream and the dead letters go', async () => {
    const stream = await withDeadLetters(4);
    const { get, post } = await serve([stream]);
    const letters = (await get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}`)).body.letters;
    const handled: number[] = [];
    start(stream, (event) => void handled.push(event.n));

    const { status, body } = await post<{ replayed: { id: string; entryId?: string }[] }>(
      '/api/dead-letters/replay',
      {
        stream: stream.name,
        ids: [letters[0]!.id],
      },
    );

    expect(status).toBe(200);
    expect(body.replayed).toEqual([{ id: letters[0]!.id, entryId: expect.stringMatching(/^\d+-\d+$/) }]);
    await waitFor(() => handled.includes(1), { what: 'the replayed entry handled' });
    expect(
      (await get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}`)).body.letters.map(
        (l) => l.fields.n,
      ),
    ).toEqual(['3']);
  });

  it('replays or discards every dead letter that matches a search, and only those', async () => {
    const stream = await withDeadLetters(10);
    const { get, post } = await serve([stream], { entity: { name: 'thing', field: 'n' } });

    const replayed = await post<{ replayed: unknown[] }>('/api/dead-letters/replay', {
      stream: stream.name,
      all: true,
      reason: 'declined 3',
    });
    const dropped = await post<{ dropped: { dropped: boolean }[] }>('/api/dead-letters/discard', {
      stream: stream.name,
      all: true,
      n: '9',
    });

    expect(replayed.body.replayed).toHaveLength(1);
    expect(dropped.body.dropped).toEqual([expect.objectContaining({ dropped: true })]);
    expect(
      (await get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}`)).body.letters.map(
        (l) => l.fields.n,
      ),
    ).toEqual(['1', '5', '7']);
    const last = await suite.redis.xrevrange(stream.name, '+', '-', 'COUNT', 1);
    expect(last[0]![1]).toEqual(['n', '3']);
  });

  it('discards the dead letters named for good, and says which were not there', async () => {
    const stream = await withDeadLetters(4);
    const { get, post } = await serve([stream]);
    const [first] = (await get<DeadLetterPage>(`/api/dead-letters?stream=${stream.name}`)).body.letters;
    const lengthBefore = await suite.redis.xlen(stream.name);

    const { body } = await post<{ dropped: unknown[] }>('/api/dead-letters/discard', {
      stream: stream.name,
      ids: [first!.id, '1-1'],
    });

    expect(body.dropped).toEqual([
      { id: first!.id, dropped: true },
      { id: '1-1', dropped: false },
    ]);
    expect(await suite.redis.xlen(`${stream.name}:dlq`)).toBe(1);
    expect(await suite.redis.xlen(stream.name)).toBe(lengthBefore);
  });

  it('refuses a write without the token (401), with a wrong one (401), and on a read-only board (403), changing nothing', async () => {
    const stream = await withDeadLetters(2);
    const writable = await serve([stream]);
    const readOnly = await serve([stream], { token: undefined });
    const action = { stream: stream.name, all: true };

    const missing = await writable.post<{ error: string }>('/api/dead-letters/discard', action, '');
    const wrong = await writable.post<{ error: string }>('/api/dead-letters/replay', action, 'not-the-token');
    const refused = await readOnly.post<{ error: string }>('/api/dead-letters/discard', action, TOKEN);

    expect([missing.status, wrong.status, refused.status]).toEqual([401, 401, 403]);
    expect(missing.headers.get('www-authenticate')).toBe('Bearer');
    expect(refused.body.error).toMatch(/read-only/);
    expect(await suite.redis.xlen(`${stream.name}:dlq`)).toBe(1);
  });

  it.each([
    ['malformed IDs', { ids: ['yesterday'] }, 'ids.0'],
    ['both IDs and all', { ids: ['1-1'], all: true }, 'ids'],
    ['neither IDs nor all', {}, 'ids'],
    ['an unknown stream', { stream: 'nope', ids: ['1-1'] }, 'stream'],
  ])('refuses %s, naming the field', async (_, body, field) => {
    const stream = testStream();
    const { post } = await serve([stream]);

    const answer = await post<{ error: string; field: string }>('/api/dead-letters/replay', {
      stream: stream.name,
      ...body,
    });

    expect(answer.status).toBe(field === 'stream' ? 404 : 400);
    expect(answer.body.field).toBe(field);
  });

  it('refuses a body that is not JSON with 400', async () => {
    const { post } = await serve([testStream()]);

    const answer = await post<{ field: string }>('/api/dead-letters/replay', '{"stream":');

    expect(answer.status).toBe(400);
    expect(answer.body.field).toBe('body');
  });
});

describe('the timeline', () => {
  it("shows the lookup's entries with where each group is: handled, pending with its consumer, or waiting", async () => {
    const stream = testStream();
    await suite.redis.xgroup('CREATE', stream.name, 'fast', '0', 'MKSTREAM');
    await suite.redis.xgroup('CREATE', stream.name, 'slow', '0');
    await suite.redis.xgroup('CREATE', stream.name, 'idle', '0');
    const entryId = await suite.redis.xadd(stream.name, '*', 'n', '42');
    await suite.redis.xreadgroup('GROUP', 'fast', 'f1', 'STREAMS', stream.name, '>');
    await suite.redis.xack(stream.name, 'fast', entryId!);
    await suite.redis.xreadgroup('GROUP', 'slow', 's1', 'STREAMS', stream.name, '>');
    const { get } = await serve([stream], {
      entity: {
        name: 'thing',
        field: 'n',
        lookup: async (id) =>
          id === '42'
            ? {
                summary: { status: 'PENDING' },
                steps: [{ stream: stream.name, entryId: entryId!, event: 'created' }],
              }
            : undefined,
      },
    });

    const { status, body } = await get<Timeline>('/api/timeline/42');

    expect(status).toBe(200);
    expect(body.summary).toEqual({ status: 'PENDING' });
    expect(body.entries).toEqual([
      expect.objectContaining({
        stream: stream.name,
        entryId,
        event: 'created',
        fields: { n: '42' },
        groups: expect.arrayContaining([
          { group: 'fast', state: 'handled' },
          { group: 'slow', state: 'pending', consumer: 's1', deliveries: 1 },
          { group: 'idle', state: 'waiting' },
        ]),
      }),
    ]);
  });

  it('includes the dead letters of the entity, and answers 404 for one nothing knows', async () => {
    const stream = await withDeadLetters(4);
    const { get } = await serve([stream], {
      entity: { name: 'thing', field: 'n', lookup: async () => undefined },
    });

    const known = await get<Timeline>('/api/timeline/3');
    const unknown = await get<{ error: string }>('/api/timeline/8');

    expect(known.body.deadLetters.map((letter) => letter.reason)).toEqual(['non-retryable: declined 3']);
    expect(unknown.status).toBe(404);
    expect(unknown.body.error).toBe('no thing 8 found');
  });

  it("passes a lookup's refusal on as 400", async () => {
    const { get } = await serve([testStream()], {
      entity: {
        name: 'thing',
        field: 'n',
        lookup: async () => {
          throw new BoardError(400, 'id: must be digits', 'id');
        },
      },
    });

    const answer = await get<{ error: string; field: string }>('/api/timeline/abc');

    expect(answer).toEqual({ status: 400, body: { error: 'id: must be digits', field: 'id' } });
  });
});

describe('the page', () => {
  it('redirects the mount path to its slash form, and serves the page and its assets with a strict CSP', async () => {
    const { base } = await serve([testStream()]);

    const bare = await fetch(base, { redirect: 'manual' });
    const page = await fetch(`${base}/`);
    const script = await fetch(`${base}/assets/uPlot.iife.min.js`);
    const missing = await fetch(`${base}/assets/../../package.json`);

    expect(bare.status).toBe(308);
    expect(bare.headers.get('location')).toBe('/board/');
    expect(page.status).toBe(200);
    expect(page.headers.get('content-security-policy')).toContain("default-src 'self'");
    expect(await page.text()).toContain('assets/board.js');
    expect(script.headers.get('content-type')).toMatch(/javascript/);
    expect(missing.status).toBe(404);
  });
});

describe('at the edges', () => {
  it("finds an entity's dead letter past the first 5,000, searching from its first entry", async () => {
    const stream = testStream();
    // 5,100 dead letters of other entities, older than the entity's entry and its own dead letter.
    await suite.redis.eval(
      "for i = 1, 5100 do redis.call('XADD', KEYS[1], '*', 'n', '0', 'dlq:reason', 'old') end",
      1,
      `${stream.name}:dlq`,
    );
    await new Promise((resolve) => setTimeout(resolve, 5));
    const entryId = await suite.redis.xadd(stream.name, '*', 'n', '77');
    await suite.redis.xadd(`${stream.name}:dlq`, '*', 'n', '77', 'dlq:reason', 'recent');
    const { get } = await serve([stream], {
      entity: {
        name: 'thing',
        field: 'n',
        lookup: async () => ({ summary: {}, steps: [{ stream: stream.name, entryId: entryId! }] }),
      },
    });

    const { body } = await get<Timeline>('/api/timeline/77');

    expect(body.deadLetters.map((letter) => letter.reason)).toEqual(['recent']);
  });

  it('replays "all matching" in rounds: `more` says a round stopped before the end', async () => {
    const stream = testStream();
    await suite.redis.eval(
      "for i = 1, 10100 do redis.call('XADD', KEYS[1], '*', 'n', '1', 'dlq:reason', 'r') end",
      1,
      `${stream.name}:dlq`,
    );
    const { post } = await serve([stream]);

    const first = await post<{ dropped: unknown[]; more: boolean }>('/api/dead-letters/discard', {
      stream: stream.name,
      all: true,
    });
    const second = await post<{ dropped: unknown[]; more: boolean }>('/api/dead-letters/discard', {
      stream: stream.name,
      all: true,
    });

    expect([first.body.dropped.length, first.body.more]).toEqual([10_000, true]);
    expect([second.body.dropped.length, second.body.more]).toEqual([100, false]);
  });

  it.each([
    ['a time before 1970', 'from=1969-12-31T00:00:00Z', 'from'],
    ['an entry ID past the largest', 'after=99999999999999999999-0', 'after'],
  ])('refuses %s with 400, not a Redis error', async (_, query, field) => {
    const stream = testStream();
    const { get } = await serve([stream]);

    const answer = await get<{ field: string }>(`/api/dead-letters?stream=${stream.name}&${query}`);

    expect([answer.status, answer.body.field]).toEqual([400, field]);
  });

  it('answers a range it cannot serve with 416, not 500', async () => {
    const { base } = await serve([testStream()]);

    const res = await fetch(`${base}/assets/board.css`, { headers: { range: 'bytes=99999999-' } });

    expect(res.status).toBe(416);
  });

  it('refuses a new event stream once closed', async () => {
    const { base, board } = await serve([testStream()]);
    await board.close();

    const res = await fetch(`${base}/api/events`);

    expect(res.status).toBe(503);
  });
});
