import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { streams } from '@msa/stream-kit/events';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';

/* `pnpm dlq`, run as a real process against a Redis of its own. */

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
let server: RedisServer;
let redis: Redis;

beforeAll(async () => {
  server = await startRedisServer();
  redis = new Redis(server.url);
});
afterAll(async () => {
  redis?.disconnect();
  await server?.stop();
});

function dlq(...args: string[]) {
  return run(process.execPath, ['--import', 'tsx', 'scripts/dlq.ts', ...args], {
    cwd: ROOT,
    env: { ...process.env, REDIS_URL: server.url },
  });
}

it('lists the dead letters of a stream and replays them all, once per original entry', async () => {
  // A tutorial-style order both groups gave up on.
  const dead = ['userId', 'u1', 'productId', 'p1', 'price', '10'];
  const meta = (group: string) => ['dlq:id', '5-0', 'dlq:stream', 'order-events', 'dlq:group', group];
  await redis.xadd('order-events:dlq', '*', ...dead, ...meta('payment-service-group'), 'dlq:reason', 'r1');
  await redis.xadd(
    'order-events:dlq',
    '*',
    ...dead,
    ...meta('notification-service-group'),
    'dlq:reason',
    'r2',
  );

  const listed = (await dlq('list', 'order-events')).stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line));
  const replayed = (await dlq('replay', 'order-events', '--all')).stdout;

  expect(listed).toMatchObject([
    { entryId: '5-0', group: 'payment-service-group', reason: 'r1', fields: { userId: 'u1', price: '10' } },
    { entryId: '5-0', group: 'notification-service-group', reason: 'r2' },
  ]);
  expect(replayed).toMatch(/replayed as order-events/);
  expect(await redis.xlen('order-events:dlq')).toBe(0);
  const entries = await redis.xrange('order-events', '-', '+');
  expect(entries).toHaveLength(1);
  // Written back as the event it reads as: it keeps its first entry ID as orderId.
  expect(entries[0]![1]).toEqual([
    'type',
    'order-created',
    'orderId',
    '5-0',
    'userId',
    'u1',
    'productId',
    'p1',
    'price',
    '10',
  ]);
});

it('explains its usage and exits 2 when called wrong', async () => {
  for (const args of [
    ['replay', 'no-such-stream'],
    ['list', 'toString'],
    ['list', '__proto__'],
  ]) {
    const failure = await dlq(...args).catch((err: { code: number; stderr: string }) => err);

    expect(failure, args.join(' ')).toMatchObject({
      code: 2,
      stderr: expect.stringContaining('usage: pnpm dlq'),
    });
  }
});

it('knows every stream of the catalogue, and names them in its usage', async () => {
  const usage = await dlq('list').catch((err: { stderr: string }) => err);

  expect(usage).toMatchObject({
    stderr: expect.stringContaining(`streams: ${streams.map((s) => s.name).join(', ')}`),
  });
  for (const stream of streams)
    expect(await dlq('list', stream.name)).toMatchObject({ stdout: expect.any(String) });
});

it('reports a failed login in one line that does not show the password, and exits 1', async () => {
  const url = new URL(server.url);
  url.username = 'admin';
  url.password = 'not-the-password';
  const failure = await run(process.execPath, ['--import', 'tsx', 'scripts/dlq.ts', 'list', 'order-events'], {
    cwd: ROOT,
    env: { ...process.env, REDIS_URL: url.toString() },
  }).catch((err: { code: number; stdout: string; stderr: string }) => err);

  expect(failure).toMatchObject({ code: 1, stderr: expect.stringMatching(/^pnpm dlq: .+\n$/) });
  expect(JSON.stringify(failure)).not.toContain('not-the-password');
});
