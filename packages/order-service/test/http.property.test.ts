import { createServer, type Server } from 'node:http';
import { deflateSync, gzipSync } from 'node:zlib';
import { createPublisher, type Publisher } from '@msa/stream-kit';
import { authenticate, openRequestConnection, READ_ALL_SCOPE, signToken } from '@msa/stream-kit/service';
import { SignJWT } from 'jose';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedisServer, type RedisServer } from '../../../harness/redis-server.ts';
import { fieldsFromReply, type Fields } from '../../../harness/streams.ts';
import { createApp } from '../src/app.ts';
import { ordersOn } from './read-model.ts';

/*
 * Generated requests against the real app and a real publisher. After each request the suite reads
 * what `order-events` gained. That is sound only if nothing else writes the stream, hence a
 * redis-server of its own rather than the run's shared one; requests go one at a time.
 */

let redisServer: RedisServer;
let redis: Redis;
let appRedis: Redis;
let publisher: Publisher;
let server: Server;
let baseUrl: string;
/** The same app with auth on (AUTH_SECRET), for the properties of tokens. */
let authServer: Server;
let authBaseUrl: string;
const logger = pino({ level: 'silent' });
const SECRET = 'the-property-test-secret-of-32-characters';

beforeAll(async () => {
  redisServer = await startRedisServer();
  redis = new Redis(redisServer.url);
  appRedis = openRequestConnection(redisServer.url, logger);
  publisher = createPublisher({ connection: appRedis });
  server = createServer(
    createApp({ publisher, redis: appRedis, logger, instance: 'test', orders: ordersOn(appRedis) }),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  authServer = createServer(
    createApp({
      publisher,
      redis: appRedis,
      logger,
      instance: 'test-auth',
      orders: ordersOn(appRedis),
      authenticate: authenticate({ AUTH_SECRET: SECRET }, 'order-service'),
    }),
  );
  await new Promise<void>((resolve) => authServer.listen(0, '127.0.0.1', resolve));
  authBaseUrl = `http://127.0.0.1:${(authServer.address() as { port: number }).port}`;
});
afterAll(async () => {
  for (const open of [server, authServer]) {
    open?.closeAllConnections();
    await new Promise((resolve) => open?.close(resolve));
  }
  await publisher?.close();
  await appRedis?.quit();
  await redis?.quit();
  await redisServer?.stop();
});

interface Sent {
  method: 'GET' | 'POST';
  path: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
}

let lastEntryId = '0-0';
/** How many entries carry each orderId, over everything the stream gained so far. */
const published = new Map<string, number>();

/** The entries `order-events` gained since the last call. */
async function newEntries(): Promise<Fields[]> {
  const entries = await redis.xrange('order-events', `(${lastEntryId}`, '+');
  if (entries.length > 0) lastEntryId = entries.at(-1)![0];
  const fields = entries.map(([, flat]) => fieldsFromReply(flat));
  for (const { orderId } of fields) published.set(orderId!, (published.get(orderId!) ?? 0) + 1);
  return fields;
}

/** Every valid Idempotency-Key that placed an order: the order (if the test knows it) and its id. */
const placedByKey = new Map<string, { canonical?: string; orderId: string }>();

/** The key as the server receives it: clients and servers drop blanks around a header value. */
const receivedKey = (key: string) => key.replace(/^[\t ]+|[\t ]+$/g, '');
const VALID_KEY = /^[\x20-\x7e]{1,255}$/;

const isWellFormed = (text: string) => (text as string & { isWellFormed(): boolean }).isWellFormed();

/** The ID fields of a JSON body that hold a lone surrogate (Redis would store U+FFFD instead). */
function illFormedIds(body: Sent['body']): string[] {
  if (typeof body !== 'string') return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return [];
  }
  if (typeof parsed !== 'object' || parsed === null) return [];
  const fields = parsed as Record<string, unknown>;
  return ['userId', 'productId'].filter((field) => {
    const value = fields[field];
    return typeof value === 'string' && !isWellFormed(value);
  });
}

/**
 * Sends `sent` and checks what holds for every request: no 5xx; an ID with a lone surrogate is
 * never accepted; a 4xx has a JSON body with an
 * `error` string and published nothing; a 200 published one entry; a 202 published one entry,
 * unless its Idempotency-Key placed an order before: then it published nothing and answers that
 * order's id. An invalid key never gets a 2xx; a 409 needs a key that placed an order.
 * `canonical` names the order the body validates to, when the test knows it.
 */
async function sendAndCheck(sent: Sent, canonical?: string) {
  const response = await fetch(`${baseUrl}${sent.path}`, {
    method: sent.method,
    headers: sent.headers,
    body: sent.body,
  });
  const text = await response.text();
  const entries = await newEntries();
  const context = `${response.status} ${text.slice(0, 300)}`;
  const header = sent.headers?.['idempotency-key'];
  const key = header === undefined ? undefined : receivedKey(header);
  const before = key === undefined ? undefined : placedByKey.get(key);

  expect(response.status, context).toBeLessThan(500);
  // 413 comes first for a body over 16 kB, whatever it holds.
  if (illFormedIds(sent.body).length > 0) expect([400, 413], context).toContain(response.status);
  if (response.status >= 400) {
    expect(response.headers.get('content-type'), context).toMatch(/^application\/json/);
    expect(JSON.parse(text), context).toMatchObject({ error: expect.any(String) });
    // No stack trace, no file path: nothing about the code behind the answer.
    expect(text, context).not.toMatch(/\n\s+at |node_modules|\.ts:\d+|Error:/);
    expect(entries, context).toEqual([]);
    if (response.status === 409) expect(before, `${context}: a conflict with no order before`).toBeDefined();
    return { status: response.status };
  }
  if (sent.method === 'GET') {
    expect(response.status, context).toBe(200);
    expect(entries, context).toHaveLength(1);
    return { status: response.status };
  }
  expect(response.status, context).toBe(202);
  if (key !== undefined) expect(key, `${context}: accepted an invalid key`).toMatch(VALID_KEY);
  const { orderId } = JSON.parse(text) as { orderId: string };
  if (before) {
    expect(entries, `${context}: published again for a key used before`).toEqual([]);
    expect(orderId, context).toBe(before.orderId);
    if (canonical && before.canonical) expect(canonical, context).toBe(before.canonical);
  } else {
    expect(
      entries.map((entry) => entry.orderId),
      context,
    ).toEqual([orderId]);
    if (key !== undefined) placedByKey.set(key, { canonical, orderId });
  }
  expect(published.get(orderId), context).toBe(1);
  return { status: response.status, orderId, replayed: before !== undefined };
}

/* Values, from valid to hostile. */

const validId = fc.stringMatching(/^[A-Za-z0-9-]{1,20}$/);
const validPrice = fc.oneof(
  fc.integer({ min: 1, max: 1_000_000 }),
  fc.integer({ min: 1, max: 100_000_00 }).map((cents) => cents / 100),
  fc.constant(1e12),
);
const hugeString = fc.integer({ min: 100, max: 20_000 }).map((n) => 'x'.repeat(n));
const anyString = fc.oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ maxLength: 200 }));
const oddId = fc.oneof(
  anyString,
  hugeString,
  fc.constantFrom(
    '',
    '   ',
    '\u00a0\u2003',
    '\u0000',
    '\ud800',
    'ユーザー',
    '👩‍👩‍👧',
    'x'.repeat(128),
    'x'.repeat(129),
  ),
  fc.jsonValue({ maxDepth: 2 }),
);
const oddPrice = fc.oneof(
  fc.double(), // NaN and ±Infinity become null in JSON
  fc.integer({ min: -1_000_000, max: 0 }),
  fc.constantFrom(
    0,
    -0,
    1e12 + 0.01,
    1e21,
    5e-324,
    1.005,
    0.1 + 0.2,
    1e-7,
    '1000',
    'NaN',
    '-1',
    '1e3',
    'Infinity',
  ),
  anyString,
  fc.jsonValue({ maxDepth: 2 }),
);
/** Keys that mean something to JavaScript objects, and the ones the route reads. */
const hostileKey = fc.constantFrom(
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
  'type',
  'orderId',
  'price',
  'userId',
);

/** A JSON object written field by field, so `__proto__` stays a field and keys may repeat. */
const objectText = (pairs: readonly (readonly [string, unknown])[]) =>
  `{${pairs.map(([key, value]) => `${JSON.stringify(key)}:${JSON.stringify(value) ?? 'null'}`).join(',')}}`;

const nearValidBody = fc
  .record({
    userId: fc.oneof({ weight: 3, arbitrary: validId }, { weight: 1, arbitrary: oddId }),
    productId: fc.oneof({ weight: 3, arbitrary: validId }, { weight: 1, arbitrary: oddId }),
    price: fc.oneof({ weight: 3, arbitrary: validPrice }, { weight: 1, arbitrary: oddPrice }),
    omit: fc.oneof(
      { weight: 3, arbitrary: fc.constant<string[]>([]) },
      fc.subarray(['userId', 'productId', 'price']),
    ),
    extra: fc.array(
      fc.tuple(fc.oneof(hostileKey, fc.string({ maxLength: 10 })), fc.jsonValue({ maxDepth: 2 })),
      { maxLength: 3 },
    ),
  })
  .map(({ omit, extra, ...fields }) =>
    objectText([...Object.entries(fields).filter(([key]) => !omit.includes(key)), ...extra]),
  );

/** What a conforming HTTP client can put in a header: tab, printable ASCII, Latin-1. */
const headerChar = fc
  .oneof(
    { weight: 8, arbitrary: fc.integer({ min: 0x20, max: 0x7e }) },
    { weight: 1, arbitrary: fc.constant(0x09) },
    { weight: 1, arbitrary: fc.integer({ min: 0x80, max: 0xff }) },
  )
  .map((code) => String.fromCharCode(code));
const idempotencyKey = fc.oneof(
  fc.constantFrom('key-a', 'key-b', 'key-c'),
  fc.uuid(),
  fc.string({ unit: headerChar, maxLength: 20 }),
  fc.integer({ min: 250, max: 260 }).map((n) => 'k'.repeat(n)),
  fc.constant(''),
);
const maybeKey = fc.oneof(
  { weight: 3, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.uuid() },
  { weight: 1, arbitrary: idempotencyKey },
);

const keyHeader = (key: string | undefined): Record<string, string> =>
  key === undefined ? {} : { 'idempotency-key': key };

describe('the HTTP API, under generated requests', () => {
  it('answers any JSON value and near-valid order bodies without a 5xx, publishing only what it accepts', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          { weight: 1, arbitrary: fc.jsonValue().map((value) => JSON.stringify(value)) },
          { weight: 3, arbitrary: nearValidBody },
        ),
        maybeKey,
        (body, key) =>
          sendAndCheck({
            method: 'POST',
            path: '/orders',
            headers: { 'content-type': 'application/json', ...keyHeader(key) },
            body,
          }).then(() => undefined),
      ),
      { numRuns: 700 },
    );

    expect(Object.prototype).not.toHaveProperty('price');
    expect(({} as Record<string, unknown>).isAdmin).toBeUndefined();
  });

  it('answers 400 naming the field to an ID with a lone surrogate anywhere in it, and publishes nothing', async () => {
    const loneSurrogate = fc.integer({ min: 0xd800, max: 0xdfff }).map((code) => String.fromCharCode(code));
    // Around it, valid text: ASCII, or a character outside the BMP (a surrogate pair, which is fine).
    const text = fc.string({
      unit: fc.oneof(fc.constantFrom('a', '-', '7', ' '), fc.constantFrom('👩', '𝄞')),
    });
    const illFormed = fc
      .tuple(text, loneSurrogate, text)
      .map(([before, lone, after]) => `x${before}${lone}${after}`)
      .filter((id) => !isWellFormed(id));
    const field = fc.constantFrom('userId', 'productId');

    await fc.assert(
      fc.asyncProperty(field, illFormed, fc.option(fc.uuid(), { nil: undefined }), async (name, id, key) => {
        // JSON.stringify writes a lone surrogate as an escape, `\ud800`: the JSON text is valid.
        const body = JSON.stringify({ userId: 'u1', productId: 'p1', price: 1000, [name]: id });

        const response = await fetch(`${baseUrl}/orders`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...keyHeader(key) },
          body,
        });

        expect(response.status).toBe(400);
        expect(await response.json()).toEqual({ error: expect.stringMatching(`^${name} `), field: name });
        expect(await newEntries()).toEqual([]);
      }),
      { numRuns: 200 },
    );
  });

  it('answers raw bodies of any content type and encoding without a 5xx, publishing only what it accepts', async () => {
    const contentType = fc.option(
      fc.oneof(
        fc.constantFrom(
          'application/json',
          'application/json; charset=utf-8',
          'application/json; charset=UTF-16',
          'application/json; charset=latin1',
          'application/json; charset=nope',
          'application/json; charset="utf-8"; q=1',
          'application/vnd.api+json',
          'text/plain',
          'text/json',
          'application/x-www-form-urlencoded',
          'multipart/form-data; boundary=x',
          'application/octet-stream',
          ';;;',
          '*/*',
        ),
        fc.string({ unit: headerChar, maxLength: 40 }),
      ),
      { nil: undefined },
    );
    const encoding = fc.option(
      fc.constantFrom('identity', 'gzip', 'deflate', 'br', 'compress', 'gzip, gzip', 'x-nope'),
      {
        nil: undefined,
      },
    );
    const payload = fc.oneof(
      fc.uint8Array({ maxLength: 2_000 }),
      fc.string({ unit: 'binary', maxLength: 300 }).map((text) => new TextEncoder().encode(text)),
      nearValidBody.map((text) => new TextEncoder().encode(text)),
    );
    /** Compressed as the header says, sometimes; raw bytes under a compression header otherwise. */
    const compress = fc.boolean();

    await fc.assert(
      fc.asyncProperty(
        contentType,
        encoding,
        payload,
        compress,
        maybeKey,
        (type, enc, bytes, doCompress, key) => {
          const body =
            doCompress && (enc === 'gzip' || enc === 'deflate')
              ? new Uint8Array(enc === 'gzip' ? gzipSync(bytes) : deflateSync(bytes))
              : bytes;
          const headers: Record<string, string> = { ...keyHeader(key) };
          if (type !== undefined) headers['content-type'] = type;
          if (enc !== undefined) headers['content-encoding'] = enc;
          return sendAndCheck({ method: 'POST', path: '/orders', headers, body }).then(() => undefined);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('answers any query string on GET /order without a 5xx, publishing only what it accepts', async () => {
    const name = fc.oneof(
      fc.constantFrom('userId', 'productId', 'price', 'userId[]', 'price[0]', '__proto__', 'constructor', ''),
      fc.string({ maxLength: 8 }),
    );
    const value = fc.oneof(
      validId,
      fc.constantFrom(
        '1000',
        '12.5',
        '0',
        '-1',
        'NaN',
        '1e3',
        ' 7 ',
        '1.005',
        '%',
        '%zz',
        '%00',
        '+',
        '&&',
        '==',
      ),
      fc.string({ unit: 'binary', maxLength: 30 }).map(encodeURIComponent),
      fc.string({ unit: headerChar, maxLength: 30 }),
    );
    const pair = fc
      .tuple(name, value, fc.boolean())
      .map(([key, val, raw]) => (raw ? `${key}=${val}` : `${encodeURIComponent(key)}=${val}`));
    const validTriple = fc
      .tuple(validId, validId, validPrice)
      .map(([u, p, price]) => [`userId=${u}`, `productId=${p}`, `price=${price}`]);
    const query = fc
      .tuple(
        fc.oneof(validTriple, fc.constant<string[]>([])),
        fc.array(fc.oneof(pair, fc.string({ unit: headerChar, maxLength: 10 })), { maxLength: 6 }),
      )
      .chain(([triple, rest]) =>
        fc.shuffledSubarray([...triple, ...rest], { minLength: triple.length + rest.length }),
      )
      .map((parts) => parts.join('&'));

    await fc.assert(
      fc.asyncProperty(query, (q) =>
        sendAndCheck({ method: 'GET', path: `/order?${q}` }).then(() => undefined),
      ),
      { numRuns: 400 },
    );
  });

  it('places an order at most once per Idempotency-Key, and answers a key reused with another order with 409', async () => {
    /** Valid orders, each with the canonical order it validates to. */
    const orders = [
      { canonical: 'A', body: { userId: 'u1', productId: 'p1', price: 1000 } },
      { canonical: 'A', body: { userId: ' u1 ', productId: 'p1\n', price: 1000.0 } },
      { canonical: 'B', body: { userId: 'u1', productId: 'p1', price: 1000.5 } },
      { canonical: 'C', body: { userId: 'u2', productId: 'p1', price: 1000 } },
    ];
    // Mostly keys the other properties never send: this one alone places their orders, so it knows them.
    const keyOfThisTest = fc.oneof(
      { weight: 3, arbitrary: fc.constantFrom('same-1', 'same-2', 'same-3', 'same-4', 'same-5') },
      { weight: 1, arbitrary: idempotencyKey },
    );
    const order = fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom(...orders) },
      { weight: 1, arbitrary: nearValidBody.map((text) => ({ canonical: undefined, body: text })) },
    );

    await fc.assert(
      fc.asyncProperty(keyOfThisTest, order, async (key, { canonical, body }) => {
        const before = placedByKey.get(receivedKey(key));

        const result = await sendAndCheck(
          {
            method: 'POST',
            path: '/orders',
            headers: { 'content-type': 'application/json', 'idempotency-key': key },
            body: typeof body === 'string' ? body : JSON.stringify(body),
          },
          canonical,
        );

        // A generated body, or a key a generated body took: sendAndCheck's rules are all we know.
        if (canonical === undefined || (before && before.canonical === undefined)) return;
        if (!VALID_KEY.test(receivedKey(key))) expect(result.status).toBe(400);
        else if (!before) expect(result).toMatchObject({ status: 202, replayed: false });
        else if (before.canonical === canonical)
          expect(result).toEqual({ status: 202, orderId: before.orderId, replayed: true });
        else expect(result.status).toBe(409);
      }),
      { numRuns: 500 },
    );
  });
});

describe('the HTTP API with auth on, under generated tokens and headers', () => {
  const USERS = ['alice', 'bob', 'carol'] as const;
  /** An Authorization header, and whom it verifiably speaks for (none: it must be refused). */
  interface Credential {
    what: string;
    header?: string;
    user?: string;
    readAll?: boolean;
  }
  const credentials: Credential[] = [];
  /** An order of alice's and one of bob's, projected into the read model. */
  const orderOf = new Map<string, string>();

  beforeAll(async () => {
    const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    for (const user of USERS) {
      const token = await signToken(SECRET, { userId: user });
      credentials.push({ what: `${user}'s token`, header: `Bearer ${token}`, user });
      credentials.push({ what: `${user}'s token, lowercase scheme`, header: `bearer ${token}`, user });
      credentials.push({
        what: `${user}'s support token`,
        header: `Bearer ${await signToken(SECRET, { userId: user, scopes: [READ_ALL_SCOPE] })}`,
        user,
        readAll: true,
      });
      credentials.push({
        what: `${user}'s token with another scope`,
        header: `Bearer ${await signToken(SECRET, { userId: user, scopes: ['orders:read'] })}`,
        user,
      });
      const [head, , signature] = token.split('.');
      for (const other of USERS.filter((u) => u !== user))
        credentials.push({
          what: `${user}'s signature under ${other}'s claims`,
          header: `Bearer ${head}.${part({ sub: other, exp: now + 3_600, scope: READ_ALL_SCOPE })}.${signature}`,
        });
      credentials.push({
        what: `${user}'s token signed with another secret`,
        header: `Bearer ${await signToken(`${SECRET}-other`, { userId: user })}`,
      });
      credentials.push({
        what: `${user}'s expired token`,
        header: `Bearer ${await new SignJWT({ sub: user, exp: now - 600 })
          .setProtectedHeader({ alg: 'HS256' })
          .sign(new TextEncoder().encode(SECRET))}`,
      });
      credentials.push({
        what: `${user}'s unsigned token`,
        header: `Bearer ${part({ alg: 'none' })}.${part({ sub: user, exp: now + 3_600 })}.`,
      });
      credentials.push({ what: `${user}'s token, Basic`, header: `Basic ${token}` });
    }
    credentials.push({ what: 'no header' });
    // Both users' orders, placed with their tokens and projected as the read model's projection would.
    for (const user of ['alice', 'bob']) {
      const res = await fetch(`${authBaseUrl}/orders`, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${await signToken(SECRET, { userId: user })}`,
        },
        body: JSON.stringify({ productId: 'p1', price: 10 }),
      });
      const { orderId } = (await res.json()) as { orderId: string };
      const [entry] = (await newEntries()).filter((fields) => fields.orderId === orderId);
      const [stored] = (await redis.xrange('order-events', '-', '+')).filter(([, flat]) =>
        flat.includes(orderId),
      );
      const id = stored![0];
      expect(entry?.userId).toBe(user);
      await ordersOn(appRedis).orderEventsHandler(
        { type: 'order-created', orderId, userId: user, productId: 'p1', price: 10 },
        { id, stream: 'order-events', group: 'g', consumer: 'c', deliveryCount: 1, stillHeld: () => true },
      );
      orderOf.set(user, orderId);
    }
  });

  const credential = fc.oneof(
    {
      weight: 6,
      arbitrary: fc.integer({ min: 0, max: 1_000 }).map((i) => credentials[i % credentials.length]!),
    },
    {
      weight: 1,
      arbitrary: fc
        .string({ unit: headerChar, maxLength: 60 })
        .map((text): Credential => ({ what: 'a generated header', header: text })),
    },
    {
      weight: 1,
      arbitrary: fc
        .stringMatching(/^[A-Za-z0-9_-]{0,40}(\.[A-Za-z0-9_-]{0,40}){0,3}$/)
        .map((text): Credential => ({ what: 'a generated bearer', header: `Bearer ${text}` })),
    },
  );
  const named = fc.constantFrom<string | undefined>(undefined, 'alice', 'bob', 'carol', ' alice ', 'mallory');
  const request = fc.oneof(
    fc.record({
      method: fc.constant('POST' as const),
      userId: named,
      body: fc.oneof(
        { weight: 4, arbitrary: fc.constant(undefined) },
        { weight: 1, arbitrary: nearValidBody },
      ),
    }),
    fc.record({ method: fc.constant('GET' as const), userId: named, list: fc.constant(true) }),
    fc.record({
      method: fc.constant('GET' as const),
      orderOfUser: fc.constantFrom('alice', 'bob', 'nobody'),
      list: fc.constant(false),
    }),
  );

  it('never answers 5xx, never accepts an unverified token, and never lets a caller act as or read another user', async () => {
    await fc.assert(
      fc.asyncProperty(credential, request, async (cred, req) => {
        const headers: Record<string, string> =
          cred.header === undefined ? {} : { authorization: cred.header };
        let path: string;
        let body: string | undefined;
        if (req.method === 'POST') {
          path = '/orders';
          headers['content-type'] = 'application/json';
          body =
            req.body ??
            JSON.stringify(
              req.userId === undefined
                ? { productId: 'p', price: 5 }
                : { userId: req.userId, productId: 'p', price: 5 },
            );
        } else if ('list' in req && req.list && 'userId' in req) {
          path = req.userId === undefined ? '/orders' : `/orders?userId=${encodeURIComponent(req.userId)}`;
        } else {
          const owner = (req as { orderOfUser: string }).orderOfUser;
          path = `/orders/${orderOf.get(owner) ?? 'no-such-order'}`;
        }
        let response: Response;
        try {
          response = await fetch(`${authBaseUrl}${path}`, { method: req.method, headers, body });
        } catch (err) {
          // A header fetch itself will not send (a character it refuses): nothing to check.
          if (
            err instanceof TypeError &&
            /header/i.test(String((err as { cause?: unknown }).cause ?? err.message))
          )
            return;
          throw err;
        }
        const text = await response.text();
        const entries = await newEntries();
        const context = `${cred.what} ${req.method} ${path} ${body ?? ''} → ${response.status} ${text.slice(0, 200)}`;

        expect(response.status, context).toBeLessThan(500);
        if (cred.user === undefined) {
          expect(response.status, context).toBe(401);
          expect(response.headers.get('www-authenticate'), context).toMatch(/^Bearer realm="order-service"/);
          expect(entries, context).toEqual([]);
          return;
        }
        // A verified caller gets what is theirs, and only that: the answer is known in advance,
        // except for a generated body (its own rules are the other properties').
        const readAll = cred.readAll === true;
        const named = 'userId' in req && req.userId !== undefined ? req.userId.trim() : cred.user;
        let expected: number | undefined;
        if (req.method === 'POST')
          expected = req.body === undefined ? (named === cred.user ? 202 : 403) : undefined;
        else if ('list' in req && req.list) expected = named === cred.user || readAll ? 200 : 404;
        else {
          const owner = (req as { orderOfUser: string }).orderOfUser;
          expected = owner !== 'nobody' && (owner === cred.user || readAll) ? 200 : 404;
        }
        if (expected !== undefined) expect(response.status, context).toBe(expected);
        if (response.status >= 300) {
          expect(entries, context).toEqual([]);
          return;
        }
        if (req.method === 'POST') {
          // Placed: for the token's user, whatever the body said.
          expect(
            entries.map((entry) => entry.userId),
            context,
          ).toEqual([cred.user]);
        } else if (path.startsWith('/orders?') || path === '/orders') {
          const { orders } = JSON.parse(text) as { orders: { userId: string }[] };
          const asked = 'userId' in req && req.userId !== undefined ? req.userId.trim() : cred.user;
          expect(asked === cred.user || cred.readAll, context).toBe(true);
          for (const order of orders) expect(order.userId, context).toBe(asked);
        } else {
          const order = JSON.parse(text) as { userId: string };
          expect(order.userId === cred.user || cred.readAll, context).toBe(true);
        }
      }),
      { numRuns: 800 },
    );
  });
});
