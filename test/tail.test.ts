import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { streams } from '@msa/stream-kit/events';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { freePort } from '../harness/net.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { waitFor } from '../harness/wait.ts';

/* `pnpm tail`, run as a real process against a Redis of its own, its output read from a pipe. */

const ROOT = fileURLToPath(new URL('..', import.meta.url));
let server: RedisServer;
let redis: Redis;

interface Tail {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** The lines printed so far. */
  lines(): string[];
  /** Settles with the exit code, or rejects (with the output so far) after `timeoutMs`. */
  exit(timeoutMs?: number): Promise<number | null>;
}

const running = new Set<Tail>();

/** Starts `pnpm tail` with `args`, its stdout a pipe, times in UTC, colors as a pipe gets them. */
function tail(args: string[], env: NodeJS.ProcessEnv = {}): Tail {
  const { FORCE_COLOR: _force, NO_COLOR: _no, CI: _ci, ...inherited } = process.env;
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/tail.ts', ...args], {
    cwd: ROOT,
    env: { ...inherited, REDIS_URL: server.url, TZ: 'UTC', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const closed = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const run: Tail = {
    child,
    stdout: () => stdout,
    stderr: () => stderr,
    lines: () => stdout.split('\n').filter(Boolean),
    exit(timeoutMs = 10_000) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`pnpm tail still running after ${timeoutMs} ms\n${stdout}\n${stderr}`)),
          timeoutMs,
        );
      });
      return Promise.race([closed, late]).finally(() => clearTimeout(timer));
    },
  };
  running.add(run);
  void closed.then(() => running.delete(run));
  return run;
}

/** Resolves once a `pnpm tail` is blocked in XREAD on `client`'s server. */
function following(client = redis) {
  return waitFor(
    async () => {
      const clients = (await client.client('LIST')) as string;
      return clients
        .split('\n')
        .some((c) => c.includes('name=pnpm-tail') && / flags=b /.test(c) && c.includes('cmd=xread'));
    },
    { what: 'pnpm tail blocked in XREAD' },
  );
}

function waitForLines(run: Tail, count: number) {
  return waitFor(() => run.lines().length >= count && run.lines(), {
    what: `${count} lines from pnpm tail`,
  }).catch((err: Error) => {
    throw new Error(`${err.message}\nstdout:\n${run.stdout()}\nstderr:\n${run.stderr()}`);
  });
}

const wire = (fields: Record<string, string>) => Object.entries(fields).flat();
/** An order-created entry as order-service writes it, as XADD arguments. */
const order = (orderId: string, userId = 'u1') =>
  wire({ type: 'order-created', orderId, userId, productId: 'p1', price: '1000' });
/** A payment-completed entry as payment-service writes it, as XADD arguments. */
const payment = (orderId: string) =>
  wire({
    type: 'payment-completed',
    orderId,
    userId: 'u1',
    productId: 'p1',
    price: '1000',
    paymentProcessId: `pp-${orderId}`,
  });

/** The time column of an entry ID, in UTC as the tests run it: `HH:MM:ss.mmm`. */
const timeOf = (id: string) => new Date(Number(id.split('-')[0])).toISOString().slice(11, 23);

beforeAll(async () => {
  server = await startRedisServer();
  redis = new Redis(server.url);
});
beforeEach(async () => {
  // This test's own redis-server: every test starts from empty streams.
  await redis.flushall();
});
afterEach(async () => {
  // Whatever the test did, no tail outlives it.
  for (const run of running) {
    run.child.kill('SIGKILL');
    await run.exit();
  }
  await waitFor(async () => !((await redis.client('LIST')) as string).includes('name=pnpm-tail'), {
    what: 'killed tails to leave Redis',
  });
});
afterAll(async () => {
  redis?.disconnect();
  await server?.stop();
});

describe('called wrong or asked for help', () => {
  it('prints its usage on stdout and exits 0 for --help', async () => {
    const run = tail(['--help']);

    expect(await run.exit()).toBe(0);
    expect(run.stdout()).toMatch(/^usage: pnpm tail \[<stream>...\] \[--from <id\|time>\]\n/);
    expect(run.stdout()).toContain(`streams: ${streams.map((s) => s.name).join(', ')}`);
    expect(run.stderr()).toBe('');
  });

  it.each([
    [['--colour'], "Unknown option '--colour'"],
    [
      ['order-events', 'no-such-stream'],
      '"no-such-stream" is not a stream of the catalogue (order-events, order-events:dlq, payment-events, payment-events:dlq)',
    ],
    [['__proto__'], '"__proto__" is not a stream of the catalogue'],
    [['--from', 'yesterday'], '--from must be an entry ID (1795312027109-0), a time'],
    [['--from', '12-ab'], 'got "12-ab"'],
    [['--from', '2026-13-45'], 'got "2026-13-45"'],
    [['--from', '99999999999999999999999'], 'past the last possible entry ID'],
    [['--from', '1h', '--group', 'g'], '--from and --group do not go together'],
    [['--group='], '--group needs a group name'],
  ])('says what is wrong, shows its usage and exits 2 for: pnpm tail %j', async (args, problem) => {
    const run = tail(args);

    expect(await run.exit()).toBe(2);
    expect(run.stdout()).toBe('');
    const [first, second] = run.stderr().split('\n');
    expect(first).toMatch(/^pnpm tail: /);
    expect(first).toContain(problem);
    expect(second).toMatch(/^usage: pnpm tail /);
  });

  it('says in one line that Redis cannot be reached, without its password, and exits 1', async () => {
    const run = tail([], { REDIS_URL: `redis://admin:secret-password@127.0.0.1:${await freePort()}` });

    expect(await run.exit()).toBe(1);
    expect(run.stderr()).toMatch(/^pnpm tail: Redis at 127\.0\.0\.1:\d+: connect ECONNREFUSED [^\n]+\n$/);
    expect(run.stdout()).toBe('');
    expect(run.stderr()).not.toContain('secret-password');
  });
});

describe('following', () => {
  it('prints one line per new entry of every stream: time, stream, ID, type, orderId, fields', async () => {
    await redis.xadd('order-events', '*', ...order('before'));
    const run = tail([]);
    await following();

    const orderEntry = await redis.xadd('order-events', '*', ...order('o-1'));
    const paymentEntry = await redis.xadd('payment-events', '*', ...payment('o-1'));
    const lines = await waitForLines(run, 2);

    expect(lines).toEqual([
      `${timeOf(orderEntry!)} order-events   ${orderEntry} order-created o-1 userId=u1 productId=p1 price=1000`,
      `${timeOf(paymentEntry!)} payment-events ${paymentEntry} payment-completed o-1 userId=u1 productId=p1 price=1000 paymentProcessId=pp-o-1`,
    ]);
    expect(run.stdout()).not.toContain('\u001b');
    expect(run.stderr()).toBe('');
  });

  it('follows only the streams it is given', async () => {
    const run = tail(['payment-events']);
    await following();

    await redis.xadd('order-events', '*', ...order('o-1'));
    const paid = await redis.xadd('payment-events', '*', ...payment('o-1'));
    await redis.xadd('payment-events', '*', ...payment('o-2'));
    const lines = await waitForLines(run, 2);

    expect(lines[0]).toContain(`payment-events ${paid} payment-completed o-1 userId=u1`);
    expect(lines.join('\n')).not.toContain('order-events');
  });

  it('reads a tutorial-style entry as its stream does: order-created, with its entry ID as orderId', async () => {
    const id = await redis.xadd('order-events', '*', 'userId', 'u1', 'productId', 'p1', 'price', '1000');

    const [line] = await waitForLines(tail(['--from', id!]), 1);

    expect(line).toBe(
      `${timeOf(id!)} order-events   ${id} order-created ${id} userId=u1 productId=p1 price=1000`,
    );
  });

  it('marks an entry its stream cannot read as malformed, and says why', async () => {
    const id = await redis.xadd('order-events', '*', 'userId', 'u1', 'productId', 'p1', 'price', 'free');

    const [line] = await waitForLines(tail(['--from', '0']), 1);

    expect(line).toBe(
      `${timeOf(id!)} order-events   ${id} malformed - userId=u1 productId=p1 price=free | invalid entry: price: must be a positive decimal number`,
    );
  });

  it('keeps an entry on one line: values with spaces are quoted, control characters escaped', async () => {
    await redis.xadd(
      'order-events',
      '*',
      ...['type', 'order-created', 'orderId', 'o 1', 'userId', 'u1\n00:00:00.000 order-events fake'],
      ...['productId', 'p\u001b[2J', 'price', '10'],
    );

    const lines = await waitForLines(tail(['--from', '0']), 1);
    await new Promise((resolve) => setTimeout(resolve, 200));

    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(
      ' order-created "o 1" userId="u1\\n00:00:00.000 order-events fake" productId="p\\u001b[2J" price=10',
    );
    expect(lines[0]).not.toContain('\u001b');
  });

  it('colors the line when FORCE_COLOR asks for it, even on a pipe', async () => {
    await redis.xadd('order-events', '*', ...order('o-1'));

    const [line] = await waitForLines(tail(['--from', '0'], { FORCE_COLOR: '1' }), 1);

    expect(line).toContain('\u001b[32morder-created\u001b[0m');
  });

  it('follows a dead-letter stream when it is named, reading its entries as the original stream', async () => {
    const id = await redis.xadd(
      'order-events:dlq',
      '*',
      ...wire({
        userId: 'u1',
        productId: 'p1',
        price: '10',
        'dlq:id': '5-0',
        'dlq:reason': 'non-retryable: no',
      }),
    );

    const [line] = await waitForLines(tail(['order-events:dlq', '--from', '0']), 1);

    expect(line).toBe(
      `${timeOf(id!)} order-events:dlq ${id} order-created 5-0 userId=u1 productId=p1 price=10 dlq:id=5-0 dlq:reason="non-retryable: no"`,
    );
  });

  it.each(['SIGINT', 'SIGTERM'] as const)(
    'stops at once on %s: exit 0, nothing on stderr',
    async (signal) => {
      const run = tail([]);
      await following();

      const sent = Date.now();
      run.child.kill(signal);

      expect(await run.exit(3_000)).toBe(0);
      // Well before the 2 s after which it would exit anyway, were something holding it.
      expect(Date.now() - sent).toBeLessThan(1_500);
      expect(run.stderr()).toBe('');
    },
  );

  it('says on stderr that Redis went away and came back, and keeps following across the restart', async () => {
    const own = await startRedisServer();
    const client = new Redis(own.url);
    client.on('error', () => {}); // while its server restarts
    try {
      const run = tail([], { REDIS_URL: own.url });
      await following(client);

      await own.restart(300);
      await waitFor(() => run.stderr().includes('lost the connection to Redis'), {
        what: 'the loss reported',
      });
      await following(client);
      const id = await client.xadd('order-events', '*', ...order('o-2', 'u2'));
      const [line] = await waitForLines(run, 1);

      expect(line).toContain(`order-events   ${id} order-created o-2 userId=u2`);
      expect(run.stderr()).toBe(
        'pnpm tail: lost the connection to Redis; retrying until it is back (Ctrl-C to stop)\n' +
          'pnpm tail: Redis is back; following again\n',
      );
    } finally {
      client.disconnect();
      await own.stop();
    }
  });
});

describe('--from', () => {
  it('prints the entry with that ID and every later one, then follows', async () => {
    const ids = [];
    for (const orderId of ['o-1', 'o-2', 'o-3'])
      ids.push(await redis.xadd('order-events', '*', ...order(orderId)));
    const run = tail(['--from', ids[1]!]);
    await waitForLines(run, 2);

    await following();
    await redis.xadd('order-events', '*', ...order('o-4'));
    const lines = await waitForLines(run, 3);

    expect(lines.map((line) => line.split(/ +/)[4])).toEqual(['o-2', 'o-3', 'o-4']);
  });

  it('takes a time, and shows the date of an entry that is not from today', async () => {
    for (const ms of [1000, 2000, 3000]) await redis.xadd('order-events', `${ms}-0`, ...order(`o-${ms}`));

    const lines = await waitForLines(tail(['--from', '1970-01-01T00:00:02Z']), 2);

    expect(lines).toEqual([
      '1970-01-01 00:00:02.000 order-events   2000-0 order-created o-2000 userId=u1 productId=p1 price=1000',
      '1970-01-01 00:00:03.000 order-events   3000-0 order-created o-3000 userId=u1 productId=p1 price=1000',
    ]);
  });

  it('takes a time ago, on the clock of Redis', async () => {
    await redis.xadd('order-events', '1000-0', ...order('long-ago'));
    await redis.xadd('order-events', '*', ...order('just-now'));

    const run = tail(['--from', '1h']);
    await waitForLines(run, 1);
    await following();

    expect(run.lines()).toEqual([expect.stringContaining(' order-created just-now')]);
  });

  it('prints the earlier entries of several streams in the order Redis stored them', async () => {
    // More than one read's worth of order-events, with payments in between.
    const add = redis.pipeline();
    for (let ms = 1; ms <= 250; ms++) add.xadd('order-events', `${ms}-0`, ...order(`o-${ms}`));
    for (const ms of [5, 50, 120, 180, 240]) add.xadd('payment-events', `${ms}-1`, ...payment(`o-${ms}`));
    await add.exec();

    const lines = await waitForLines(tail(['--from', '0']), 255);

    // `1970-01-01 00:00:00.001 order-events   1-0 ...`: the ID is the fourth column.
    const ids = lines.map((line) => line.split(/ +/)[3]!);
    const sorted = [...ids].sort((a, b) => {
      const [aMs, aSeq] = a.split('-').map(Number);
      const [bMs, bSeq] = b.split('-').map(Number);
      return aMs! - bMs! || aSeq! - bSeq!;
    });
    expect(ids).toEqual(sorted);
    expect(new Set(ids).size).toBe(255);
  });
});

describe('--group', () => {
  beforeEach(async () => {
    for (const orderId of ['o-1', 'o-2', 'o-3']) await redis.xadd('order-events', '*', ...order(orderId));
    await redis.xgroup('CREATE', 'order-events', 'payment-service-group', '0');
  });

  it("prints the group's pending entries with consumer, idle time and deliveries, then exits 0", async () => {
    await redis.xreadgroup(
      'GROUP',
      'payment-service-group',
      'c1',
      'COUNT',
      2,
      'STREAMS',
      'order-events',
      '>',
    );
    const [[first]] = (await redis.xpending('order-events', 'payment-service-group', '-', '+', 1)) as [
      [string],
    ];
    await redis.xclaim('order-events', 'payment-service-group', 'c2', 0, first);

    const run = tail(['--group', 'payment-service-group']);

    expect(await run.exit()).toBe(0);
    expect(run.lines()).toEqual([
      expect.stringMatching(
        /^\d\d:\d\d:\d\d\.\d{3} order-events {3}\d+-\d order-created o-1 userId=u1 productId=p1 price=1000 \| c2 idle \d+\.\ds, 2 deliveries$/,
      ),
      expect.stringMatching(/ order-created o-2 .* \| c1 idle \d+\.\ds, 1 delivery$/),
    ]);
    expect(run.stderr()).toBe('');
  });

  it('says so on stderr, and prints nothing, when the group has nothing pending', async () => {
    const run = tail(['order-events', '--group', 'payment-service-group']);

    expect(await run.exit()).toBe(0);
    expect(run.stdout()).toBe('');
    expect(run.stderr()).toBe('nothing pending for group payment-service-group on order-events\n');
  });

  it.each([
    [['order-events', '--group', 'no-such-group'], 'no group no-such-group on stream order-events'],
    [['payment-events', '--group', 'payment-service-group'], 'no stream payment-events'],
    [['--group', 'no-such-group'], 'no group no-such-group on any stream (order-events, payment-events)'],
  ])('exits 1 with one line when what it names is not there: pnpm tail %j', async (args, problem) => {
    const run = tail(args);

    expect(await run.exit()).toBe(1);
    expect(run.stdout()).toBe('');
    expect(run.stderr()).toBe(`pnpm tail: ${problem}\n`);
  });
});
