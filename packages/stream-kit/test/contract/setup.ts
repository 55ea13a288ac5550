import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { startRedisServer, type RedisServer } from '../../../../harness/redis-server.ts';
import { entryFields } from '../../../../harness/streams.ts';
import { waitFor } from '../../../../harness/wait.ts';
import {
  createPublisher,
  subscribe,
  type Handler,
  type Publisher,
  type SubscribeOptions,
  type Subscription,
} from '../../src/index.ts';
import { testStream, type TestEvent, type TestStream } from '../test-stream.ts';

export { testStream, type TestEvent, type TestStream };

/*
 * What every file of the contract suite shares. Each file calls `contractSuite()` once, at its top:
 * it gets a redis-server of its own (vitest runs the files side by side, and some of them flush,
 * restart or starve their server), and every test a stream of its own (`testStream()`).
 */

/** Options of `subscribe`, and the group and consumer names, which default to 'g' and 'c1'. */
export type StartOptions = Partial<SubscribeOptions> & { group?: string; consumer?: string };

/** A logger that keeps the messages of its warnings. */
export function recordingLogger() {
  const warnings: string[] = [];
  const logger = {
    debug() {},
    info() {},
    error() {},
    warn: (_: object, msg?: string) => void warnings.push(msg ?? ''),
  };
  return { logger, warnings };
}

/** Gives a late duplicate delivery the time to show up before the final assertions. */
export function settle() {
  return new Promise((resolve) => setTimeout(resolve, 300));
}

export interface ContractSuiteOptions {
  /** Extra `redis-server` arguments for this file's server, e.g. `['--enable-debug-command', 'yes']`. */
  serverArgs?: string[];
}

/**
 * Starts this file's redis-server before its tests (and stops it after them), with a client and a
 * publisher on it; closes the subscriptions a test opened after each test. `url`, `redis` and
 * `publisher` exist from `beforeAll` on: read them inside tests and hooks, not at the top of a file.
 */
export function contractSuite({ serverArgs = [] }: ContractSuiteOptions = {}) {
  let server: RedisServer | undefined;
  let redis: Redis | undefined;
  let publisher: Publisher | undefined;
  const opened: Subscription[] = [];

  beforeAll(async () => {
    server = await startRedisServer({ args: serverArgs });
    redis = new Redis(server.url);
    publisher = createPublisher({ connection: server.url });
  });
  afterEach(async () => {
    await closeOpened();
  });
  afterAll(async () => {
    await closeOpened();
    await publisher?.close();
    await redis?.quit();
    await server?.stop();
  });

  function ready<T>(value: T | undefined, what: string): T {
    if (value === undefined) throw new Error(`${what} is not there yet: use it inside a test or hook`);
    return value;
  }

  /** Closes every subscription opened through `start`, `startAtDefaults` or `track` so far. */
  async function closeOpened() {
    await Promise.all(opened.splice(0).map((sub) => sub.close()));
  }

  /** Closes `sub` after the test. */
  function track(sub: Subscription) {
    opened.push(sub);
    return sub;
  }

  /** Subscribes on this file's server with short waits (a read blocks 200 ms, a retry waits 20 ms). */
  function start(stream: TestStream, handler: Handler<TestEvent>, options: StartOptions = {}) {
    return startAtDefaults(stream, handler, { blockMs: 200, retryDelayMs: 20, ...options });
  }

  /** Subscribes on this file's server at the shipped settings, except those given. */
  function startAtDefaults(
    stream: TestStream,
    handler: Handler<TestEvent>,
    { group = 'g', consumer = 'c1', ...options }: StartOptions = {},
  ) {
    return track(subscribe(group, consumer, stream, handler, { connection: suite.url, ...options }));
  }

  async function publishRange(stream: TestStream, count: number) {
    for (let n = 0; n < count; n += 1) await suite.publisher.publish(stream, { n });
  }

  async function pendingCount(stream: TestStream, group = 'g') {
    const [count] = (await suite.redis.xpending(stream.name, group)) as [number];
    return count;
  }

  async function deadLetters(stream: TestStream) {
    return entryFields(suite.redis, `${stream.name}:dlq`);
  }

  /** Resolves once a subscription has created its group, so entries published next are new to it. */
  function groupCreated(stream: TestStream) {
    return waitFor(
      () =>
        suite.redis.xinfo('GROUPS', stream.name).then(
          (groups) => (groups as unknown[]).length > 0,
          () => false,
        ),
      { what: 'the consumer group' },
    );
  }

  /** A consumer of group 'g' that read three entries and died without acking them. */
  async function crashedConsumerHolding(stream: TestStream) {
    await suite.redis.xgroup('CREATE', stream.name, 'g', '0', 'MKSTREAM');
    await publishRange(stream, 3);
    await suite.redis.xreadgroup('GROUP', 'g', 'crashed', 'COUNT', 3, 'STREAMS', stream.name, '>');
  }

  const suite = {
    /** This file's redis-server, `redis://127.0.0.1:<port>`. */
    get url() {
      return ready(server, 'the redis-server').url;
    },
    /** A client on it, for arranging and checking what tests do. */
    get redis() {
      return ready(redis, 'the Redis client');
    },
    get publisher() {
      return ready(publisher, 'the publisher');
    },
    closeOpened,
    track,
    start,
    startAtDefaults,
    publishRange,
    pendingCount,
    deadLetters,
    groupCreated,
    crashedConsumerHolding,
  };
  return suite;
}
