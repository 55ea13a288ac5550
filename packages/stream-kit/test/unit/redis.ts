import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { startRedisServer, type RedisServer } from '../../../../harness/redis-server.ts';
import {
  consumerContext,
  type ConsumerContext,
  type Entry,
  type PendingInfo,
} from '../../src/consumer/context.ts';
import type { Logger } from '../../src/logger.ts';
import { testStream, type TestEvent, type TestStream } from '../test-stream.ts';

export { testStream, type TestEvent, type TestStream };

/*
 * What the unit tests of the consumer's parts share: each file gets a redis-server of its own
 * (some tests starve it of memory), every test a stream and group of its own, and each part a
 * context on a connection of its own, closed after the test.
 */

export interface LogLine {
  readonly level: 'debug' | 'info' | 'warn' | 'error';
  readonly obj: Record<string, unknown>;
  readonly msg: string;
}

/** A logger that keeps every line, for tests that assert what a part logged. */
export function capturingLogger() {
  const lines: LogLine[] = [];
  const at =
    (level: LogLine['level']) =>
    (obj: object, msg = '') =>
      void lines.push({ level, obj: obj as Record<string, unknown>, msg });
  const logger: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  return {
    logger,
    lines,
    /** The lines at `level`. */
    at: (level: LogLine['level']) => lines.filter((line) => line.level === level),
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Calls of each command since the server started, from `INFO commandstats` (`xack`, `xclaim`, ...). */
export async function commandStats(redis: Redis): Promise<Record<string, number>> {
  const info = await redis.info('commandstats');
  const stats: Record<string, number> = {};
  for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) stats[match[1]!] = Number(match[2]);
  return stats;
}

/** Calls of `command` since the server started. */
export async function commandCalls(redis: Redis, command: string): Promise<number> {
  return (await commandStats(redis))[command] ?? 0;
}

/** The commands called between two `commandStats`, with how often, leaving out `info` (the probe itself). */
export function commandsBetween(before: Record<string, number>, after: Record<string, number>) {
  const called: Record<string, number> = {};
  for (const [command, calls] of Object.entries(after)) {
    const more = calls - (before[command] ?? 0);
    if (more > 0 && command !== 'info') called[command] = more;
  }
  return called;
}

/** The group's pending entries (XPENDING's extended form): ID, owner, idle ms, deliveries. */
export async function pendingOf(redis: Redis, stream: string, group: string): Promise<PendingInfo[]> {
  return (await redis.xpending(stream, group, '-', '+', 1000)) as PendingInfo[];
}

/** One pending entry's row, or undefined if it is not pending. */
export async function pendingEntry(
  redis: Redis,
  stream: string,
  group: string,
  id: string,
): Promise<PendingInfo | undefined> {
  const [row] = (await redis.xpending(stream, group, id, id, 1)) as PendingInfo[];
  return row;
}

/** Appends `count` entries `n=0`, `n=1`, ... and resolves to their IDs. */
export async function addEntries(redis: Redis, stream: string, count: number): Promise<string[]> {
  const ids: string[] = [];
  for (let n = 0; n < count; n += 1) ids.push((await redis.xadd(stream, '*', 'n', String(n)))!);
  return ids;
}

/** Reads up to `count` new entries as `consumer` (they become its pending entries), fields as bytes. */
export async function readAs(
  redis: Redis,
  stream: string,
  group: string,
  consumer: string,
  count = 100,
): Promise<Entry[]> {
  // prettier-ignore
  const reply = (await redis.callBuffer(
    'XREADGROUP', 'GROUP', group, consumer, 'COUNT', count, 'STREAMS', stream, '>',
  )) as [Buffer, [Buffer, Buffer[]][]][] | null;
  return (reply?.[0]?.[1] ?? []).map(([id, fields]) => [id.toString(), fields]);
}

/** What `unitSuite().part()` sets up for one test. */
export interface Part {
  readonly ctx: ConsumerContext;
  readonly stream: TestStream;
  readonly group: string;
  readonly consumer: string;
  readonly log: ReturnType<typeof capturingLogger>;
}

/**
 * Starts this file's redis-server before its tests (and stops it after them), with a client on it
 * for arranging and checking; closes after each test the connections and parts it opened.
 * `admin` and `url` exist from `beforeAll` on: use them inside tests and hooks.
 */
export function unitSuite() {
  let server: RedisServer | undefined;
  let admin: Redis | undefined;
  const cleanups: (() => unknown)[] = [];

  beforeAll(async () => {
    server = await startRedisServer();
    admin = new Redis(server.url);
  });
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });
  afterAll(async () => {
    await admin?.quit();
    await server?.stop();
  });

  function ready<T>(value: T | undefined, what: string): T {
    if (value === undefined) throw new Error(`${what} is not there yet: use it inside a test or hook`);
    return value;
  }

  const suite = {
    get url() {
      return ready(server, 'the redis-server').url;
    },
    /** A client for arranging and checking what tests do; never the parts' own. */
    get admin() {
      return ready(admin, 'the Redis client');
    },
    /** Runs `cleanup` after the test (in reverse order of registration), e.g. a part's `close()`. */
    afterTest(cleanup: () => unknown) {
      cleanups.push(cleanup);
    },
    /** A new connection to this file's server, closed after the test. */
    connect(): Redis {
      const redis = new Redis(suite.url);
      cleanups.push(() => redis.quit().catch(() => redis.disconnect()));
      return redis;
    },
    /**
     * A context on a connection of its own, for a fresh stream with unique group and consumer
     * names; the group is created at '0' unless `createGroup` is false.
     */
    async part({
      stream = testStream(),
      group = `g-${randomUUID()}`,
      consumer = `c-${randomUUID()}`,
      createGroup = true,
    }: {
      stream?: TestStream;
      group?: string;
      consumer?: string;
      createGroup?: boolean;
    } = {}): Promise<Part> {
      const log = capturingLogger();
      if (createGroup) await suite.admin.xgroup('CREATE', stream.name, group, '0', 'MKSTREAM');
      const ctx = consumerContext(suite.connect(), stream, group, consumer, log.logger);
      return { ctx, stream, group, consumer, log };
    },
    /**
     * Runs `body` while Redis refuses writes for lack of memory (`maxmemory 1` on this file's own
     * server), and restores the limit after it, whatever happens.
     */
    async outOfMemory<T>(body: () => Promise<T>): Promise<T> {
      await suite.admin.config('SET', 'maxmemory', '1');
      try {
        return await body();
      } finally {
        await suite.admin.config('SET', 'maxmemory', '0');
      }
    },
  };
  return suite;
}
