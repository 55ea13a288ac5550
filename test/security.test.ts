import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { createBoard, type DeadLetterPage, type Overview } from '@msa/stream-kit/board';
import { OrderEvents, PaymentEvents, streams } from '@msa/stream-kit/events';
import express from 'express';
import { Redis, type RedisOptions } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import {
  groupOf,
  startService,
  type RunningService,
  type ServiceEnv,
  type ServiceName,
} from '../harness/services.ts';
import { entryFields } from '../harness/streams.ts';
import { createTestCertificates, startTlsRedisServer, type TestCertificates } from '../harness/tls.ts';
import { parseSamples, sampleValue } from '../harness/metrics.ts';
import { waitFor } from '../harness/wait.ts';
import { consumersOf, services } from '../services.ts';

/*
 * Redis connections the services can be trusted with: behind a password, as one ACL user per
 * service allowed only the commands and keys it needs (redis/users.acl), over TLS, and with no
 * password in their logs. Each describe runs its own redis-server and the services as real
 * processes, and stops them all in afterAll.
 */

const SERVICES: readonly ServiceName[] = services.map((service) => service.name);
const ACL_FILE = fileURLToPath(new URL('../redis/users.acl', import.meta.url));

/** The streams and groups as the catalogue and the services name them: what the ACL file must grant. */
const ORDERS = OrderEvents.name;
const PAYMENTS = PaymentEvents.name;
const PAYMENT_GROUP = groupOf('payment-service');
const NOTIFICATION_GROUP = groupOf('notification-service');
const ORDER_GROUP = groupOf('order-service');

/**
 * The development passwords whose SHA-256 hashes redis/users.acl holds, for local use only
 * (docker-compose.yml lists them too: a Redis 7 ACL file cannot carry comments): `<user>-dev-password`
 * for admin, the board and each service of the registry.
 */
const DEV_PASSWORDS = Object.fromEntries(
  ['admin', 'board', ...SERVICES].map((user) => [user, `${user}-dev-password`]),
) as Record<'admin' | 'board' | ServiceName, string>;
type AclUser = 'admin' | 'board' | ServiceName;

/** What one describe runs. Everything in it is stopped in afterAll, whatever failed. */
interface Stack {
  redisServer?: RedisServer;
  /** A client allowed everything, to look at the streams and at Redis itself. */
  admin?: Redis;
  services: Partial<Record<ServiceName, RunningService>>;
  /** Further clients tests open. */
  clients: Redis[];
  /** Run last, after Redis has stopped. */
  cleanups: (() => void)[];
}

function useStack(): Stack {
  const stack: Stack = { services: {}, clients: [], cleanups: [] };
  afterEach(() => {
    onTestFailed(() => {
      for (const service of Object.values(stack.services)) {
        console.error(`--- ${service.name} output ---\n${service.output()}`);
      }
    });
  });
  afterAll(async () => {
    await Promise.allSettled(Object.values(stack.services).map((service) => service.stop()));
    for (const client of [stack.admin, ...stack.clients]) client?.disconnect();
    await stack.redisServer?.stop();
    for (const cleanup of stack.cleanups) cleanup();
  });
  return stack;
}

/** Starts the three services, each with the environment `envOf` gives it, after stopping any running. */
async function startServices(
  stack: Stack,
  envOf: (name: ServiceName) => { REDIS_URL: string } & ServiceEnv,
): Promise<void> {
  await stopServices(stack);
  const results = await Promise.allSettled(
    SERVICES.map(async (name) => (stack.services[name] = await startService(name, envOf(name)))),
  );
  const failure = results.find((result) => result.status === 'rejected');
  if (failure) throw failure.reason;
}

async function stopServices(stack: Stack): Promise<void> {
  await Promise.all(Object.values(stack.services).map((service) => service.stop()));
}

function serviceOf(stack: Stack, name: ServiceName): RunningService {
  const service = stack.services[name];
  if (!service) throw new Error(`${name} is not running`);
  return service;
}

/** A client that tries once: a refused connection or command fails instead of being retried. */
function oneShotClient(stack: Stack, url: string, options: RedisOptions = {}): Redis {
  const client = new Redis(url, {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    ...options,
  });
  client.on('error', () => {}); // the commands' rejections carry the errors the tests look at
  stack.clients.push(client);
  return client;
}

function postOrder(stack: Stack, userId: string, headers: Record<string, string> = {}) {
  return fetch(`${serviceOf(stack, 'order-service').url}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ userId, productId: 'book-1', price: 1000 }),
  });
}

/**
 * Places an order over HTTP and waits for what must follow: its payment-events entry and its mail
 * and SMS. Resolves to the order ID.
 */
async function expectOrderCarriedThrough(
  stack: Stack,
  userId: string,
  headers: Record<string, string> = {},
): Promise<string> {
  const response = await postOrder(stack, userId, headers);
  expect(response.status).toBe(202);
  const { orderId } = (await response.json()) as { orderId: string };

  const payment = await waitFor(
    async () => (await entryFields(stack.admin!, PAYMENTS)).find((entry) => entry.orderId === orderId),
    { timeoutMs: 15_000, what: `the payment of order ${orderId}` },
  );
  expect(payment).toMatchObject({ type: 'payment-completed', userId, price: '1000' });

  const notifications = `${serviceOf(stack, 'notification-service').url}/notifications?userId=${userId}`;
  const sent = await waitFor(
    async () => {
      // One page holds them all: each user of these tests has a few.
      const { notifications: all } = (await (await fetch(notifications)).json()) as {
        notifications: { channel: string; orderId: string }[];
      };
      const mine = all.filter((notification) => notification.orderId === orderId);
      return mine.length >= 2 && mine;
    },
    { timeoutMs: 15_000, what: `mail and SMS for order ${orderId}` },
  );
  expect(sent.map((notification) => notification.channel).sort()).toEqual(['mail', 'sms']);
  return orderId;
}

/** The lines of `output` that contain `secret`: what a failed assertion should show. */
function linesWith(output: string, secret: string): string[] {
  return output.split('\n').filter((line) => line.includes(secret));
}

/** Each service's log lines that contain one of `secrets`. */
function leaks(stack: Stack, ...secrets: string[]): Record<string, string[]> {
  return Object.fromEntries(
    Object.values(stack.services).map((service) => [
      service.name,
      secrets.flatMap((secret) => linesWith(service.output(), secret)),
    ]),
  );
}
const noLeaks = Object.fromEntries(SERVICES.map((name) => [name, []]));

const sha256 = (text: string) => createHash('sha256').update(text).digest('hex');

describe('with a Redis password (requirepass)', () => {
  const stack = useStack();
  const password = randomBytes(16).toString('hex');

  beforeAll(async () => {
    stack.redisServer = await startRedisServer({ args: ['--requirepass', password] });
    const url = `redis://:${password}@127.0.0.1:${stack.redisServer.port}`;
    stack.admin = new Redis(url);
    await startServices(stack, () => ({ REDIS_URL: url }));
  });

  it('carries an order from order-service to payment and both notifications', async () => {
    await expectOrderCarriedThrough(stack, 'password-alice');
  });

  it('turns away a client without the password', async () => {
    const anonymous = oneShotClient(stack, stack.redisServer!.url);

    await expect(anonymous.ping()).rejects.toThrow(/NOAUTH/);
  });

  it('never shows the password in the services’ logs', async () => {
    await stopServices(stack);

    expect(leaks(stack, password)).toEqual(noLeaks);
  });
});

describe('under redis/users.acl, each service logged in as its own user', () => {
  const stack = useStack();
  const urlAs = (user: AclUser) =>
    `redis://${user}:${DEV_PASSWORDS[user]}@127.0.0.1:${stack.redisServer!.port}`;
  const clientAs = (user: AclUser) => oneShotClient(stack, urlAs(user));

  beforeAll(async () => {
    // redis-server only reads the file (ACL SAVE would write it): the repository's own file will do.
    stack.redisServer = await startRedisServer({ args: ['--aclfile', ACL_FILE] });
    stack.admin = new Redis(urlAs('admin'));
    await stack.admin.call('ACL', 'LOG', 'RESET');
    // A short claimIdleMs runs stream-kit's reclaim pass (XAUTOCLAIM, the idle-consumer script)
    // every 250 ms, so the flow below uses it too (ACL DRYRUN checks the rest, XCLAIM included).
    // The rate limits as shipped (undefined), so that the flow counts orders in Redis too.
    await startServices(stack, (name) => ({
      REDIS_URL: urlAs(name),
      CLAIM_IDLE_MS: '500',
      RATE_LIMIT_PER_USER: undefined,
      RATE_LIMIT_PER_ADDRESS: undefined,
    }));
  });

  it('stores each password as a SHA-256 hash only, and keeps the default user off', () => {
    const lines = readFileSync(ACL_FILE, 'utf8').split('\n').filter(Boolean);
    const rulesOf = new Map(lines.map((line) => [line.split(' ')[1], line.split(' ')]));

    // A user per service of the registry (services.ts), the board's, and nobody else.
    expect([...rulesOf.keys()].sort()).toEqual(['admin', 'board', 'default', ...SERVICES].sort());
    expect(rulesOf.get('default')).toEqual(expect.arrayContaining(['off', '-@all']));
    expect(rulesOf.get('default')!.filter((rule) => /^(on|nopass|[#>])/.test(rule))).toEqual([]);
    for (const [user, password] of Object.entries(DEV_PASSWORDS)) {
      const rules = rulesOf.get(user)!;
      expect(rules, user).toContain(`#${sha256(password)}`);
      expect(
        rules.filter((rule) => rule === 'nopass' || rule.startsWith('>')),
        user,
      ).toEqual([]);
    }
  });

  it("keys its rules to the catalogue's streams (their dead letters and runs too) and the services' own keys, and grants every stream of the catalogue", () => {
    const patterns = [...readFileSync(ACL_FILE, 'utf8').matchAll(/~([^\s)]+)/g)].map((match) => match[1]!);
    const names = streams.map((stream) => stream.name);

    const unknown = patterns.filter(
      (pattern) =>
        pattern !== '*' &&
        !SERVICES.some((service) => pattern.startsWith(`${service}:`)) &&
        // A key in a stream's hash slot begins with its name in braces (`{order-events}:runs:...`).
        !names.includes(pattern.split(':')[0]!.replace(/^\{(.*)\}$/, '$1')),
    );
    expect(unknown).toEqual([]);
    expect(names.filter((name) => !patterns.includes(name))).toEqual([]);
    expect(names.length).toBeGreaterThan(0);
  });

  it('carries an order end to end, with and without an Idempotency-Key', async () => {
    await expectOrderCarriedThrough(stack, 'acl-alice');

    const key = `key-${randomBytes(8).toString('hex')}`;
    const orderId = await expectOrderCarriedThrough(stack, 'acl-bob', { 'idempotency-key': key });
    const replay = await postOrder(stack, 'acl-bob', { 'idempotency-key': key });
    expect(replay.status).toBe(202);
    expect(await replay.json()).toEqual({ orderId });
  });

  it('refunds a paid order that is cancelled, and tells the customer, each as its own user', async () => {
    const orderId = await expectOrderCarriedThrough(stack, 'acl-carol');

    // prettier-ignore
    await stack.admin!.xadd(ORDERS, '*', 'type', 'order-cancelled', 'orderId', orderId, 'userId', 'acl-carol',
      'reason', 'payment-timeout');

    const refund = await waitFor(
      async () =>
        (await entryFields(stack.admin!, PAYMENTS)).find(
          (entry) => entry.orderId === orderId && entry.type === 'payment-refunded',
        ),
      { timeoutMs: 15_000, what: `the refund of order ${orderId}` },
    );
    expect(refund).toMatchObject({ userId: 'acl-carol', price: '1000' });
    const notifications = `${serviceOf(stack, 'notification-service').url}/notifications?userId=acl-carol`;
    await waitFor(
      async () => {
        const { notifications: all } = (await (await fetch(notifications)).json()) as {
          notifications: { event: string; orderId: string }[];
        };
        const events = all.filter((n) => n.orderId === orderId).map((n) => n.event);
        return events.includes('order-cancelled') && events.includes('payment-refunded');
      },
      { timeoutMs: 15_000, what: `the cancellation mail and refund SMS of order ${orderId}` },
    );
  });

  it('lets each consumer group dead-letter a malformed entry', async () => {
    const poisonId = await stack.admin!.xadd(ORDERS, '*', 'userId', 'u', 'productId', 'p', 'price', 'free');
    const groups = consumersOf(ORDERS)
      .map(({ group }) => group)
      .sort();

    const letters = await waitFor(
      async () => {
        const mine = (await entryFields(stack.admin!, `${ORDERS}:dlq`)).filter(
          (f) => f['dlq:id'] === poisonId,
        );
        return mine.length === groups.length && mine;
      },
      { timeoutMs: 15_000, what: 'a dead letter from each group' },
    );
    expect(letters.map((letter) => letter['dlq:group']).sort()).toEqual(groups);
  });

  it('answers /readyz 200 on every service: the readiness write is allowed', async () => {
    for (const name of SERVICES) {
      const response = await fetch(`${serviceOf(stack, name).url}/readyz`);

      expect([name, response.status, await response.json()]).toEqual([name, 200, { status: 'ready' }]);
    }
  });

  it('serves /metrics on every service, with the stream gauges read under its own user', async () => {
    for (const name of SERVICES) {
      const samples = parseSamples(await (await fetch(`${serviceOf(stack, name).url}/metrics`)).text());

      expect([name, sampleValue(samples, 'stream_redis_up')]).toEqual([name, 1]);
      expect([
        name,
        sampleValue(samples, 'stream_group_lag', { stream: ORDERS, group: PAYMENT_GROUP }),
      ]).toEqual([name, expect.any(Number)]);
    }
  });

  it('refused none of the commands the services sent meanwhile', async () => {
    const log = (await stack.admin!.call('ACL', 'LOG')) as (string | number)[][];
    const denials = log
      .map((flat) => {
        const entry = new Map<string, string>();
        for (let i = 0; i + 1 < flat.length; i += 2) entry.set(String(flat[i]), String(flat[i + 1]));
        return entry;
      })
      .map(
        (entry) =>
          `${entry.get('username')}: ${entry.get('reason')} ${entry.get('object')} (${entry.get('context')})`,
      );

    expect(denials).toEqual([]);
    for (const name of SERVICES) {
      expect(linesWith(serviceOf(stack, name).output(), 'NOPERM'), name).toEqual([]);
    }
  });

  it('lets the board, as its own user, show every group, search dead letters, replay and discard, and nothing more', async () => {
    const redis = new Redis(urlAs('board'));
    stack.clients.push(redis);
    const board = createBoard({ redis, streams, token: 'a-token-for-the-acl-test', intervalMs: 100 });
    stack.cleanups.push(() => void board.close());
    const app = express().use(board.router);
    const server = app.listen(0, '127.0.0.1');
    await once(server, 'listening');
    stack.cleanups.push(() => void server.close());
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const write = (path: string, body: unknown) =>
      fetch(`${base}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: 'Bearer a-token-for-the-acl-test' },
        body: JSON.stringify(body),
      });
    await stack.admin!.xadd(ORDERS, '*', 'userId', 'u', 'productId', 'p', 'price', 'nothing');
    await waitFor(async () => (await stack.admin!.xlen(`${ORDERS}:dlq`)) >= 2 * consumersOf(ORDERS).length, {
      what: 'dead letters from both poison entries',
    });

    const overview = (await (await fetch(`${base}/api/overview`)).json()) as Overview;
    const page = (await (
      await fetch(`${base}/api/dead-letters?stream=${ORDERS}&reason=price`)
    ).json()) as DeadLetterPage;
    const replay = await write('/api/dead-letters/replay', { stream: ORDERS, ids: [page.letters[0]!.id] });
    const discard = await write('/api/dead-letters/discard', { stream: ORDERS, ids: [page.letters[1]!.id] });

    expect(overview.redisUp).toBe(true);
    expect(
      overview.streams.flatMap((view) => view.groups.map((group) => `${view.name} ${group.name}`)).sort(),
    ).toEqual(
      streams
        .flatMap((stream) => consumersOf(stream.name).map(({ group }) => `${stream.name} ${group}`))
        .sort(),
    );
    expect(page.letters.length).toBeGreaterThanOrEqual(2);
    expect([replay.status, discard.status]).toEqual([200, 200]);
    const refused = ((await stack.admin!.call('ACL', 'LOG')) as string[][]).filter((flat) =>
      flat.includes('board'),
    );
    expect(refused).toEqual([]);
    // Nothing past reading, replaying and discarding: no acks, no group changes, no other keys.
    await expect(redis.xack(ORDERS, PAYMENT_GROUP, '1-1')).rejects.toThrow(/NOPERM/);
    await expect(redis.xgroup('DESTROY', ORDERS, PAYMENT_GROUP)).rejects.toThrow(/NOPERM/);
    await expect(redis.get('order-service:read-model')).rejects.toThrow(/NOPERM/);
    await expect(redis.del(ORDERS)).rejects.toThrow(/NOPERM/);
  });

  describe('each service user', () => {
    /** ACL DRYRUN's answer for each command: `OK`, or why it would be refused. */
    async function dryRun(user: AclUser, commands: string[][]): Promise<Record<string, string>> {
      const answers: Record<string, string> = {};
      for (const command of commands) {
        answers[command.join(' ')] = String(await stack.admin!.call('ACL', 'DRYRUN', user, ...command));
      }
      return answers;
    }

    const anySha = '0123456789abcdef0123456789abcdef01234567';
    // A Redis Cluster client learns the slots (CLUSTER SLOTS), checks the cluster is ok (CLUSTER
    // INFO) and follows a slot on the move (ASKING).
    const everyone = [
      ['PING'],
      ['INFO'],
      ['CLIENT', 'SETNAME', 'stream-kit:group:consumer'],
      ['TIME'],
      ['CLUSTER', 'SLOTS'],
      ['CLUSTER', 'INFO'],
      ['ASKING'],
    ];
    /** What `/readyz` writes: its own key, which expires. */
    const readyz = (name: ServiceName) => ['SET', `${name}:readyz`, '1795312027109', 'PX', '10000'];
    /** Keys stream-kit keeps per consumer run of a group (the other engineer's stream-kit change). */
    const runKey = (stream: string, group: string) => `{${stream}}:runs:${group}:c1`;
    /** A group's liveness marks, in its stream's hash slot. */
    const aliveKey = (stream: string, group: string) => `{${stream}}:alive:${group}`;
    const runs = (stream: string, group: string) => [
      ['GET', runKey(stream, group)],
      ['SET', runKey(stream, group), 'x'],
      ['DEL', runKey(stream, group)],
      ['EVALSHA', anySha, '2', stream, runKey(stream, group)],
    ];
    // What stream-kit's subscribe() sends for one stream, its dead letters and its EVAL included.
    const consumer = (stream: string, group: string) => [
      ['XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM'],
      ['XINFO', 'GROUPS', stream],
      ['XINFO', 'CONSUMERS', stream, group],
      ['XREADGROUP', 'GROUP', group, 'c1', 'COUNT', '10', 'BLOCK', '2000', 'STREAMS', stream, '>'],
      ['XPENDING', stream, group, '-', '+', '10', 'c1'],
      ['XCLAIM', stream, group, 'c1', '0', '1-0', 'JUSTID'],
      ['XAUTOCLAIM', stream, group, 'c1', '60000', '0-0', 'COUNT', '10', 'JUSTID'],
      ['XACK', stream, group, '1-0'],
      ['XGROUP', 'DELCONSUMER', stream, group, 'c0'],
      ['EVAL', 'return {}', '1', stream, group],
      ['XADD', `${stream}:dlq`, '*', 'dlq:id', '1-0'],
      // The group's liveness marks, and the scripts that read them beside the stream.
      ['HSET', aliveKey(stream, group), 'c1', '1 1'],
      ['HGET', aliveKey(stream, group), 'c1'],
      ['HDEL', aliveKey(stream, group), 'c0'],
      ['HGETALL', aliveKey(stream, group)],
      ['EVALSHA', anySha, '2', stream, aliveKey(stream, group)],
    ];
    // What GET /metrics reads at scrape time for each stream consumed: its length, its groups, each
    // group's next entry and oldest pending one (the peers' groups too), its dead letters.
    const metricsReads = (stream: string) => [
      ['XLEN', stream],
      ['XINFO', 'GROUPS', stream],
      ['XRANGE', stream, '(1-0', '+', 'COUNT', '1'],
      ['XPENDING', stream, PAYMENT_GROUP],
      ['XPENDING', stream, NOTIFICATION_GROUP],
      ['XLEN', `${stream}:dlq`],
    ];
    const needs: Record<ServiceName, string[][]> = {
      'order-service': [
        ...everyone,
        readyz('order-service'),
        ['XADD', ORDERS, 'MINID', '~', '0-0', '*', 'type', 'order-created'],
        ['XDEL', ORDERS, '1-0'],
        ['EVALSHA', anySha, '2', 'order-service:idempotency:k1', ORDERS, 'hash', 'o1', '86400'],
        ['HMGET', 'order-service:idempotency:k1', 'bodyHash', 'orderId', 'entryId'],
        ['HSET', 'order-service:idempotency:k1', 'bodyHash', 'h', 'orderId', 'o1', 'entryId', '1-0'],
        ['EXPIRE', 'order-service:idempotency:k1', '86400'],
        // The rate limits of orders (rate-limiter-flexible's script, and the commands in it).
        ['EVALSHA', anySha, '1', 'order-service:rate:user:u1', '1', '60', '30', '60'],
        ['EVAL', 'return 1', '1', 'order-service:rate:address:::1'],
        ['SET', 'order-service:rate:user:u1', '0', 'EX', '60', 'NX'],
        ['INCRBY', 'order-service:rate:address:127.0.0.1', '1'],
        ['PTTL', 'order-service:rate:user:u1'],
        ['EXPIRE', 'order-service:rate:user:u1', '60'],
        // The order read model: a projection of both streams, and the payment timeouts.
        ...consumer(ORDERS, ORDER_GROUP),
        ...consumer(PAYMENTS, ORDER_GROUP),
        ...metricsReads(ORDERS),
        ...metricsReads(PAYMENTS),
        ['HGETALL', 'order-service:refused-transitions'],
        ...runs(ORDERS, ORDER_GROUP),
        ...runs(PAYMENTS, ORDER_GROUP),
        // The read model's generation 1, and a rebuilt one in its own group.
        ...consumer(ORDERS, `${ORDER_GROUP}-2`),
        ...consumer(PAYMENTS, `${ORDER_GROUP}-2`),
        ...runs(PAYMENTS, `${ORDER_GROUP}-2`),
        // prettier-ignore
        ['EVALSHA', anySha, '6', 'order-service:order:o1', 'order-service:orders-of:u1',
          'order-service:payment-due', ORDERS, 'order-service:refused-transitions',
          'order-service:cancellation:o1'],
        [
          'EVALSHA',
          anySha,
          '6',
          'order-service:read-model:2:order:o1',
          'order-service:read-model:2:orders-of:u1',
          'order-service:read-model:2:payment-due',
          ORDERS,
          'order-service:read-model:2:refused-transitions',
          'order-service:cancellation:o1',
        ],
        ['HGETALL', 'order-service:order:o1'],
        ['HGET', 'order-service:read-model:2:order:o1', 'userId'],
        // The same on a Redis Cluster, its keys tagged with order-events' slot.
        // prettier-ignore
        ['EVALSHA', anySha, '6', 'order-service:order:{order-events}:o1',
          'order-service:orders-of:{order-events}:u1', 'order-service:{order-events}:payment-due', ORDERS,
          'order-service:{order-events}:refused-transitions', 'order-service:cancellation:{order-events}:o1'],
        [
          'EVALSHA',
          anySha,
          '2',
          'order-service:idempotency:{order-events}:k1',
          ORDERS,
          'hash',
          'o1',
          '86400',
        ],
        ['ZRANGEBYSCORE', 'order-service:{order-events}:payment-due', '-inf', '1', 'LIMIT', '0', '100'],
        ['HGETALL', 'order-service:{order-events}:refused-transitions'],
        ['ZRANGE', 'order-service:orders-of:u1', '+', '-', 'BYLEX', 'REV', 'LIMIT', '0', '21'],
        ['ZRANGEBYSCORE', 'order-service:payment-due', '-inf', '1', 'LIMIT', '0', '100'],
        ['ZRANGE', 'order-service:read-model:2:payment-due', '0', '0', 'WITHSCORES'],
        ['ZREM', 'order-service:payment-due', 'o1'],
        // The rebuild's own dead letters.
        ['XADD', 'order-service:read-model:2:dead-letters', '*', 'dlq:id', '1-0'],
        ['XLEN', 'order-service:read-model:2:dead-letters'],
        ['GET', 'order-service:read-model'],
        // A rebuild: a new generation's number, how much of payment-events is kept, then the switch.
        ['SET', 'order-service:read-model:last', '1', 'NX'],
        ['INCR', 'order-service:read-model:last'],
        ['XINFO', 'STREAM', PAYMENTS],
        ['SET', 'order-service:read-model', '2'],
        // How far the projection has got: the last entry of each stream.
        ['XREVRANGE', ORDERS, '+', '-', 'COUNT', '1'],
        ['XREVRANGE', PAYMENTS, '+', '-', 'COUNT', '1'],
      ],
      'payment-service': [
        ...everyone,
        ...consumer(ORDERS, PAYMENT_GROUP),
        ...metricsReads(ORDERS),
        ...runs(ORDERS, PAYMENT_GROUP),
        readyz('payment-service'),
        ['XDEL', PAYMENTS, '1-0'],
        ['EVALSHA', anySha, '2', PAYMENTS, 'payment-service:payment:o1'],
        ['EVALSHA', anySha, '2', PAYMENTS, 'payment-service:payment:{payment-events}:o1'],
        ['HGET', 'payment-service:payment:o1', 'paymentProcessId'],
        ['HMGET', 'payment-service:payment:o1', 'state', 'paymentProcessId'],
        ['HGETALL', 'payment-service:payment:o1'],
        ['HSET', 'payment-service:payment:o1', 'paymentProcessId', 'p1'],
        ['XADD', PAYMENTS, 'MINID', '~', '0-0', '*', 'type', 'payment-completed'],
        // A refund of a payment recorded before records kept its user and price reads its entry.
        ['XRANGE', PAYMENTS, '1-0', '1-0'],
      ],
      'notification-service': [
        ...everyone,
        ...consumer(ORDERS, NOTIFICATION_GROUP),
        ...consumer(PAYMENTS, NOTIFICATION_GROUP),
        ...metricsReads(ORDERS),
        ...metricsReads(PAYMENTS),
        ...runs(ORDERS, NOTIFICATION_GROUP),
        ...runs(PAYMENTS, NOTIFICATION_GROUP),
        readyz('notification-service'),
        ['EVALSHA', anySha, '2', 'notification-service:once:mail:o1', ORDERS],
        [
          'EVALSHA',
          anySha,
          '3',
          'notification-service:once:sms:o1',
          'notification-service:sent:u1',
          PAYMENTS,
        ],
        ['GET', 'notification-service:once:mail:o1'],
        ['SET', 'notification-service:once:mail:o1', 'sent', 'PX', '1000'],
        ['DEL', 'notification-service:once:mail:o1'],
        ['RPUSH', 'notification-service:sent:u1', '{}'],
        ['LRANGE', 'notification-service:sent:u1', '0', '-1'],
        // The same on a Redis Cluster, its keys tagged with their stream's slot.
        // prettier-ignore
        ['EVALSHA', anySha, '3', 'notification-service:once:{payment-events}:sms:o1',
          'notification-service:sent:{payment-events}:u1', PAYMENTS],
        ['LRANGE', 'notification-service:sent:{order-events}:u1', '0', '-1'],
      ],
    };
    const refusedToAll = [
      ['FLUSHALL'],
      ['CONFIG', 'GET', '*'],
      ['KEYS', '*'],
      ['SCAN', '0'],
      ['SELECT', '1'],
      ['ACL', 'LIST'],
      ['CLIENT', 'KILL', 'ID', '1'],
      ['SCRIPT', 'FLUSH'],
      ['SHUTDOWN'],
      ['PUBLISH', ORDERS, 'x'],
      ['DEL', ORDERS],
      ['XTRIM', ORDERS, 'MAXLEN', '0'],
      ['XGROUP', 'DESTROY', ORDERS, PAYMENT_GROUP],
      ['GET', 'some-other-key'],
    ];
    const refused: Record<ServiceName, string[][]> = {
      'order-service': [
        ...refusedToAll,
        ['XADD', PAYMENTS, '*', 'type', 'payment-completed'],
        ['HGETALL', 'payment-service:payment:o1'],
        ['ZADD', 'notification-service:orders-of:u1', '0', 'x'],
        ['DEL', 'order-service:order:o1'],
        ['DEL', 'order-service:cancellation:o1'],
        ['HSET', 'payment-service:payment:o1', 'paymentProcessId', 'p1'],
        ['RPUSH', 'notification-service:sent:u1', '{}'],
        ['HSET', 'order-service:other', 'f', 'v'],
        ['XDEL', PAYMENTS, '1-0'],
        ['GET', 'order-service:readyz'],
        readyz('payment-service'),
      ],
      'payment-service': [
        ...refusedToAll,
        ['XADD', ORDERS, '*', 'type', 'order-created'],
        ['XREADGROUP', 'GROUP', 'g', 'c', 'STREAMS', PAYMENTS, '>'],
        ['XACK', PAYMENTS, NOTIFICATION_GROUP, '1-0'],
        ['XADD', `${PAYMENTS}:dlq`, '*', 'dlq:id', '1-0'],
        ['HMGET', 'order-service:idempotency:k1', 'orderId'],
        ['RPUSH', 'notification-service:sent:u1', '{}'],
        ['DEL', 'payment-service:payment:o1'],
        ['EVAL', 'return 1', '1', 'notification-service:sent:u1'],
        ['XDEL', ORDERS, '1-0'],
        ['XDEL', `${ORDERS}:dlq`, '1-0'],
        ['GET', runKey(ORDERS, NOTIFICATION_GROUP)],
        ['SET', runKey(PAYMENTS, NOTIFICATION_GROUP), 'x'],
        ['HSET', aliveKey(ORDERS, NOTIFICATION_GROUP), 'c1', '1 1'],
        readyz('notification-service'),
      ],
      'notification-service': [
        ...refusedToAll,
        ['XADD', ORDERS, '*', 'type', 'order-created'],
        ['XADD', PAYMENTS, '*', 'type', 'payment-completed'],
        ['HGET', 'payment-service:payment:o1', 'paymentProcessId'],
        ['HSET', 'order-service:idempotency:k1', 'orderId', 'o1'],
        ['DEL', 'notification-service:sent:u1'],
        ['LPUSH', 'notification-service:sent:u1', '{}'],
        ['EVAL', 'return 1', '1', 'payment-service:payment:o1'],
        ['XDEL', ORDERS, '1-0'],
        ['XDEL', PAYMENTS, '1-0'],
        ['GET', runKey(ORDERS, PAYMENT_GROUP)],
        ['EVAL', 'return 1', '1', runKey(ORDERS, PAYMENT_GROUP)],
        ['HSET', aliveKey(ORDERS, PAYMENT_GROUP), 'c1', '1 1'],
        readyz('order-service'),
      ],
    };

    it.each(SERVICES)('%s may run every command its code sends', async (name) => {
      const answers = await dryRun(name, needs[name]);

      expect(Object.entries(answers).filter(([, answer]) => answer !== 'OK')).toEqual([]);
    });

    it.each(SERVICES)('%s is refused the commands and keys it does not need', async (name) => {
      const answers = await dryRun(name, refused[name]);

      expect(Object.entries(answers).filter(([, answer]) => answer === 'OK')).toEqual([]);
    });

    it.each(SERVICES)(
      '%s may add to and read exactly the streams the registry (services.ts) gives it',
      async (name) => {
        const { publishes, consumes } = services.find((service) => service.name === name)!;
        const others = (list: readonly string[]) =>
          streams.map((stream) => stream.name).filter((stream) => !list.includes(stream));
        const xadd = (stream: string) => ['XADD', stream, '*', 'type', 'x'];
        // A consumer reads the stream and adds its dead letters to `<stream>:dlq`.
        const consume = (stream: string) => [
          ['XREADGROUP', 'GROUP', groupOf(name), 'c1', 'STREAMS', stream, '>'],
          xadd(`${stream}:dlq`),
        ];

        const allowed = await dryRun(name, [...publishes.map(xadd), ...consumes.flatMap(consume)]);
        const refusedOnes = await dryRun(name, [
          ...others(publishes).map(xadd),
          ...others(consumes).flatMap(consume),
        ]);

        expect(Object.entries(allowed).filter(([, answer]) => answer !== 'OK')).toEqual([]);
        expect(Object.entries(refusedOnes).filter(([, answer]) => answer === 'OK')).toEqual([]);
      },
    );

    it('refuses payment-service an XADD to order-events, directly or from a script', async () => {
      const payment = clientAs('payment-service');

      await expect(payment.xadd(ORDERS, '*', 'type', 'order-created')).rejects.toThrow(/NOPERM/);
      // Commands a script runs are checked against the user that runs it: EVAL is no way round.
      await expect(
        payment.eval("return redis.call('XADD', KEYS[1], '*', 'type', 'order-created')", 1, ORDERS),
      ).rejects.toThrow(/NOPERM|user executing the script can't/);
      expect(await stack.admin!.xlen(ORDERS)).toBeGreaterThan(0);
    });

    // stream-kit's scripts read the clock and delete entries: the commands inside are checked too.
    it.each([
      {
        user: 'order-service' as const,
        keys: [ORDERS],
        lua: "redis.call('TIME'); redis.call('XDEL', KEYS[1], '0-1'); return 'ok'",
      },
      {
        user: 'payment-service' as const,
        keys: [PAYMENTS, runKey(ORDERS, PAYMENT_GROUP)],
        lua: "redis.call('TIME'); redis.call('SET', KEYS[2], 'x'); redis.call('GET', KEYS[2]); redis.call('DEL', KEYS[2]); redis.call('XDEL', KEYS[1], '0-1'); return 'ok'",
      },
      {
        user: 'notification-service' as const,
        keys: [runKey(ORDERS, NOTIFICATION_GROUP), runKey(PAYMENTS, NOTIFICATION_GROUP)],
        lua: "redis.call('TIME'); redis.call('SET', KEYS[1], 'x'); redis.call('GET', KEYS[2]); redis.call('DEL', KEYS[1]); return 'ok'",
      },
    ])('lets $user run TIME, XDEL and its run keys inside a script', async ({ user, keys, lua }) => {
      const client = clientAs(user);

      await expect(client.eval(lua, keys.length, ...keys)).resolves.toBe('ok');
    });

    it('refuses notification-service an XADD to either stream', async () => {
      const notification = clientAs('notification-service');

      await expect(notification.xadd(ORDERS, '*', 'type', 'order-created')).rejects.toThrow(/NOPERM/);
      await expect(notification.xadd(PAYMENTS, '*', 'type', 'payment-completed')).rejects.toThrow(/NOPERM/);
    });

    it.each(SERVICES)('refuses %s FLUSHALL, CONFIG and KEYS', async (name) => {
      const client = clientAs(name);

      await expect(client.flushall()).rejects.toThrow(/NOPERM/);
      await expect(client.config('GET', '*')).rejects.toThrow(/NOPERM/);
      await expect(client.keys('*')).rejects.toThrow(/NOPERM/);
      expect(await stack.admin!.exists(ORDERS)).toBe(1);
    });

    it('turns away a client that does not log in: the default user is off', async () => {
      const anonymous = oneShotClient(stack, stack.redisServer!.url);

      await expect(anonymous.ping()).rejects.toThrow(/NOAUTH/);
    });
  });
});

/*
 * What redis/users.acl cannot do, pinned down so the README's Security section stays true: ACL
 * rules name keys, and a consumer group is not a key. A user that may read a stream as one group
 * may do so as any group of that stream.
 */
describe('under redis/users.acl, a consumer group is not a boundary', () => {
  const stack = useStack();
  const urlAs = (user: AclUser) =>
    `redis://${user}:${DEV_PASSWORDS[user]}@127.0.0.1:${stack.redisServer!.port}`;
  let entryId: string;

  beforeAll(async () => {
    stack.redisServer = await startRedisServer({ args: ['--aclfile', ACL_FILE] });
    stack.admin = new Redis(urlAs('admin'));
    await stack.admin.xgroup('CREATE', ORDERS, PAYMENT_GROUP, '0', 'MKSTREAM');
    await stack.admin.xgroup('CREATE', ORDERS, NOTIFICATION_GROUP, '0');
    entryId = (await stack.admin.xadd(ORDERS, '*', 'userId', 'u', 'productId', 'p', 'price', '1'))!;
    // notification-service reads the entry: it is pending in its group, not handled yet.
    const notification = oneShotClient(stack, urlAs('notification-service'));
    await notification.xreadgroup('GROUP', NOTIFICATION_GROUP, 'n1', 'STREAMS', ORDERS, '>');
  });

  it("lets payment-service's user see and ack the entries pending in notification-service's group", async () => {
    const payment = oneShotClient(stack, urlAs('payment-service'));

    const seen = await payment.xpending(ORDERS, NOTIFICATION_GROUP);
    const acked = await payment.xack(ORDERS, NOTIFICATION_GROUP, entryId);

    expect(seen).toEqual([1, entryId, entryId, [['n1', '1']]]);
    expect(acked).toBe(1);
    // Acked for notification-service, which never handled it: its mail would never be sent.
    expect(await stack.admin!.xpending(ORDERS, NOTIFICATION_GROUP)).toEqual([0, null, null, null]);
  });

  it("lets payment-service's user read, claim and remove consumers in notification-service's group", async () => {
    const group = NOTIFICATION_GROUP;
    const commands = [
      ['XREADGROUP', 'GROUP', group, 'intruder', 'STREAMS', ORDERS, '>'],
      ['XCLAIM', ORDERS, group, 'intruder', '0', entryId],
      ['XAUTOCLAIM', ORDERS, group, 'intruder', '0', '0-0'],
      ['XGROUP', 'DELCONSUMER', ORDERS, group, 'n1'],
    ];

    const answers = await Promise.all(
      commands.map((command) => stack.admin!.call('ACL', 'DRYRUN', 'payment-service', ...command)),
    );

    expect(answers).toEqual(commands.map(() => 'OK'));
  });
});

describe('over TLS (rediss://), the private CA trusted through NODE_EXTRA_CA_CERTS', () => {
  const stack = useStack();
  let certs: TestCertificates;

  beforeAll(async () => {
    certs = createTestCertificates();
    stack.cleanups.push(() => certs.remove());
    stack.redisServer = await startTlsRedisServer(certs);
    stack.admin = new Redis(stack.redisServer.url, { tls: { ca: readFileSync(certs.caCert) } });
    const url = stack.redisServer.url;
    expect(url).toMatch(/^rediss:\/\/127\.0\.0\.1:\d+$/);
    // Node's own way to trust another CA: the services need no TLS settings of their own.
    await startServices(stack, () => ({ REDIS_URL: url, NODE_EXTRA_CA_CERTS: certs.caCert }));
  });

  it('carries an order end to end', async () => {
    await expectOrderCarriedThrough(stack, 'tls-alice');
  });

  it('lets no plain redis:// client through, and listens on no plain port', async () => {
    const plain = oneShotClient(stack, `redis://127.0.0.1:${stack.redisServer!.port}`, {
      connectTimeout: 2_000,
    });

    await expect(plain.ping()).rejects.toThrow();
    expect(await stack.admin!.config('GET', 'port')).toEqual(['port', '0']);
  });

  it('is refused by a client that does not trust the CA', async () => {
    const untrusting = oneShotClient(stack, stack.redisServer!.url);
    const errors: string[] = [];
    untrusting.on('error', (err: Error) => errors.push(err.message));

    await expect(untrusting.ping()).rejects.toThrow();
    expect(errors.join('\n')).toMatch(/certificate/);
  });
});

describe('the services’ logs, when the Redis password is wrong', () => {
  const stack = useStack();
  const password = randomBytes(16).toString('hex');
  const wrongPassword = randomBytes(16).toString('hex');
  const urlWith = (secret: string) => `redis://:${secret}@127.0.0.1:${stack.redisServer!.port}`;

  beforeAll(async () => {
    stack.redisServer = await startRedisServer({ args: ['--requirepass', password] });
    stack.admin = new Redis(urlWith(password));
  });

  it('never show it, through failed logins and failed requests', async () => {
    await startServices(stack, () => ({ REDIS_URL: urlWith(wrongPassword) }));
    const notification = serviceOf(stack, 'notification-service');

    // Requests while the login fails, a few times over the reconnect cycle: the paths that log
    // what went wrong with Redis. Their answers must not carry the password either.
    const answers: string[] = [];
    const answer = async (request: Promise<Response>) => {
      const response = await request;
      answers.push(await response.text());
      return response.status;
    };
    for (let round = 0; round < 3; round += 1) {
      const statuses = await Promise.all([
        answer(postOrder(stack, 'logs-alice')),
        answer(postOrder(stack, 'logs-alice', { 'idempotency-key': 'logs-key' })),
        answer(fetch(`${notification.url}/notifications?userId=logs-alice`)),
        ...Object.values(stack.services).map((service) => answer(fetch(`${service.url}/readyz`))),
      ]);
      expect(statuses).toEqual([503, 503, 503, 503, 503, 503]);
    }
    const loggedFailedLogin = () =>
      Object.values(stack.services).every((service) => /WRONGPASS/.test(service.output()));
    await waitFor(loggedFailedLogin, { what: 'every service to log the failed login' });
    await stopServices(stack);

    expect(leaks(stack, wrongPassword, password)).toEqual(noLeaks);
    expect(answers.filter((text) => text.includes(wrongPassword) || text.includes(password))).toEqual([]);
  });
});
