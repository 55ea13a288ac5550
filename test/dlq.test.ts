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

it.each([
  [['replay', 'no-such-stream'], '"no-such-stream" is not a stream of the catalogue'],
  [['list', 'toString'], '"toString" is not a stream of the catalogue'],
  [['list', '__proto__'], '"__proto__" is not a stream of the catalogue'],
  [['replay', 'order-events'], 'replay needs dead-letter IDs or --all'],
  [['drop', 'order-events', '1-0', '--all'], 'give dead-letter IDs or --all, not both'],
  [['list', 'order-events', '--colour'], "Unknown option '--colour'"],
  [['frobnicate', 'order-events'], 'unknown command "frobnicate"'],
  [[], 'no command given'],
])('says what is wrong, shows its usage and exits 2 for: pnpm dlq %j', async (args, problem) => {
  const failure = await dlq(...args).catch((err: { code: number; stdout: string; stderr: string }) => err);

  expect(failure).toMatchObject({ code: 2, stdout: '' });
  const [first, second] = (failure as { stderr: string }).stderr.split('\n');
  expect(first).toContain(problem);
  expect(first).toMatch(/^pnpm dlq: /);
  expect(second).toMatch(/^usage: pnpm dlq list <stream>/);
});

it('prints its usage on stdout and exits 0 for --help', async () => {
  const { stdout, stderr } = await dlq('--help');

  expect(stdout).toMatch(/^usage: pnpm dlq list <stream>/);
  expect(stdout).toContain('pnpm dlq drop <stream>');
  expect(stderr).toBe('');
});

it('says so, on stderr, when a stream has no dead letters, and prints nothing a pipe would read', async () => {
  const { stdout, stderr } = await dlq('list', 'payment-events');

  expect(stdout).toBe('');
  expect(stderr).toBe('no dead letters in payment-events\n');
});

it('exits 1 when asked to replay or drop a dead letter that is not there', async () => {
  for (const command of ['replay', 'drop']) {
    const failure = await dlq(command, 'order-events', '123-0', '--yes').catch(
      (err: { code: number; stderr: string }) => err,
    );

    expect(failure, command).toMatchObject({
      code: 1,
      stderr: expect.stringContaining("123-0 not found in order-events's dead letters"),
    });
  }
});

it('drops a dead letter that can never succeed, for good, without putting it back', async () => {
  const id = await redis.xadd(
    'payment-events:dlq',
    '*',
    'price',
    'free',
    'dlq:id',
    '7-0',
    'dlq:reason',
    'invalid entry: price: must be a positive decimal number',
  );
  const before = await redis.xlen('payment-events');

  const { stdout } = await dlq('drop', 'payment-events', id!, '--yes');

  expect(stdout).toBe(`${id} dropped\n`);
  expect(await redis.xlen('payment-events:dlq')).toBe(0);
  expect(await redis.xlen('payment-events')).toBe(before);
});

it('drops nothing without --yes when no one is at a terminal to answer, and says how', async () => {
  const id = await redis.xadd('payment-events:dlq', '*', 'price', 'free', 'dlq:id', '8-0');

  const failure = await dlq('drop', 'payment-events', '--all').catch(
    (err: { code: number; stderr: string }) => err,
  );

  expect(failure).toMatchObject({ code: 2, stderr: expect.stringContaining('pass --yes') });
  expect(await redis.xrange('payment-events:dlq', id!, id!)).toHaveLength(1);
  await redis.xdel('payment-events:dlq', id!);
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
