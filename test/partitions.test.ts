import type { ChildProcess } from 'node:child_process';
import { createPublisher, type Publisher } from '@msa/stream-kit';
import { streamKeyOf } from '@msa/stream-kit/lua';
import { Cluster, Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { startRedisCluster, type RedisCluster } from '../harness/redis-cluster.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { ledgerReport, ledgerStream, spawnLedgerConsumer, type LedgerStream } from '../harness/partitions.ts';
import { exitOf } from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';

/*
 * One logical stream of 8 partitions, consumed by a group of 3 consumer processes at the shipped
 * settings while entries come in: two consumers are SIGKILLed, one leaves with SIGTERM, two new
 * ones join. Every entry carries its key's sequence number, and each is applied with its ack in
 * one script that writes down any entry that comes twice or out of order (harness/partitions.ts).
 * On one Redis, on one Redis that crashes (SIGKILL) and comes back from its AOF at 40% of the load,
 * and on a Redis Cluster of three masters, which spreads the partitions.
 */

const PARTITIONS = 8;
const KEYS = 48;
const ENTRIES = 3_000;
/** Entries a second: the load lasts about 15 s, long enough for every change of the group to land in it. */
const RATE = 200;

const children: { name: string; child: ChildProcess; output: string[] }[] = [];

/**
 * Publishes `event`, trying again while Redis is away; a publish whose answer was lost is looked
 * for in its partition before it is sent again, so that each sequence number is written once.
 */
async function publishOnce(
  publisher: Publisher,
  redis: Redis | Cluster,
  stream: LedgerStream,
  event: { key: string; seq: number },
) {
  for (;;) {
    try {
      await publisher.publish(stream, event);
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 200));
      const last = await redis
        .xrevrange(streamKeyOf(stream, event), '+', '-', 'COUNT', 100)
        .catch(() => undefined);
      if (last?.some(([, fields]) => fields[1] === event.key && fields[3] === String(event.seq))) return;
    }
  }
}

afterEach(async () => {
  await Promise.all(
    children.splice(0).map(async ({ child }) => {
      child.kill('SIGKILL');
      await exitOf(child);
    }),
  );
});

describe.each([
  { where: 'on one Redis', cluster: false, crash: false },
  { where: 'on one Redis that crashes (SIGKILL) and restarts', cluster: false, crash: true },
  { where: 'on a Redis Cluster of 3 masters', cluster: true, crash: false },
])('a partitioned stream whose consumers die and join during the load, $where', ({ cluster, crash }) => {
  let server: RedisServer | RedisCluster;
  let redis: Redis | Cluster;

  beforeAll(async () => {
    // A crash loses nothing Redis acknowledged: AOF, fsynced at every write.
    server = cluster
      ? await startRedisCluster({ masters: 3 })
      : await startRedisServer({ args: crash ? ['--appendonly', 'yes', '--appendfsync', 'always'] : [] });
    redis = cluster
      ? new Cluster([{ host: '127.0.0.1', port: (server as RedisCluster).nodes[0]!.port }])
      : // A write whose answer the crash cut off is checked below, not sent again blindly.
        new Redis(server.url, { autoResendUnfulfilledCommands: false, maxRetriesPerRequest: 1 });
    // The crash's connection errors reach the publishes that fail; the client need not print them.
    redis.on('error', () => {});
  }, 60_000);
  afterAll(async () => {
    redis.disconnect();
    await server.stop();
  });

  it(
    'handles every entry once, each key in order, and leaves nothing pending',
    { timeout: 120_000 },
    async () => {
      const stream = ledgerStream(`ledger-${cluster ? 'cluster' : 'one'}`, PARTITIONS);
      const partitions = Array.from({ length: PARTITIONS }, (_, k) => `${stream.name}:{${k}}`);
      const start = (name: string) => {
        const child = spawnLedgerConsumer({
          REDIS_URL: server.url,
          REDIS_CLUSTER: String(cluster),
          STREAM: stream.name,
          PARTITIONS: String(PARTITIONS),
          CONSUMER: name,
          WORK_MS: '2',
        });
        const output: string[] = [];
        child.stdout!.on('data', (chunk: Buffer) => output.push(chunk.toString()));
        child.stderr!.on('data', (chunk: Buffer) => output.push(chunk.toString()));
        children.push({ name, child, output });
        return child;
      };
      const kill = (name: string, signal: NodeJS.Signals) =>
        children.find((c) => c.name === name)!.child.kill(signal);
      onTestFailed(() => {
        for (const { name, output } of children)
          console.error(`--- ${name}\n${output.join('').slice(-4_000)}`);
      });

      for (const name of ['c1', 'c2', 'c3']) start(name);
      // What happens to the group, by the number of entries written when it happens.
      const changes = new Map<number, () => void>([
        [ENTRIES * 0.2, () => kill('c1', 'SIGKILL')],
        [ENTRIES * 0.35, () => start('c4')],
        ...(crash
          ? [[ENTRIES * 0.4, () => void (server as RedisServer).restart(1_000, 'SIGKILL')] as const]
          : []),
        [ENTRIES * 0.5, () => kill('c2', 'SIGKILL')],
        [ENTRIES * 0.65, () => start('c5')],
        [ENTRIES * 0.8, () => kill('c3', 'SIGTERM')],
      ]);

      const publisher = createPublisher({ connection: redis });
      const written = new Map<string, number>();
      const began = Date.now();
      for (let i = 0; i < ENTRIES; i += 1) {
        changes.get(i)?.();
        const key = `user-${i % KEYS}`;
        const seq = (written.get(key) ?? 0) + 1;
        written.set(key, seq);
        await publishOnce(publisher, redis, stream, { key, seq });
        const ahead = began + ((i + 1) * 1_000) / RATE - Date.now();
        if (ahead > 0) await new Promise((resolve) => setTimeout(resolve, ahead));
      }
      await publisher.close();

      // The dead consumers' partitions are taken within seconds (their leases lapse), not after
      // the shipped claim idle time of 60 s.
      const report = await waitFor(
        async () => {
          const report = await ledgerReport(redis, stream, partitions);
          const done = [...written].every(([key, seq]) => report.last.get(key) === seq);
          return done && report.pending === 0 && report;
        },
        { timeoutMs: 30_000, intervalMs: 250, what: 'every entry applied and nothing pending' },
      );
      expect(report.violations).toEqual([]);
      expect(Object.fromEntries(report.last)).toEqual(Object.fromEntries(written));
      // Every partition got entries, and a cluster spread them over its masters.
      const lengths = await Promise.all(partitions.map((name) => redis.xlen(name)));
      expect(lengths.every((length) => length > 0)).toBe(true);
      if (cluster) {
        const masters = new Set(
          await Promise.all(partitions.map((name) => (server as RedisCluster).masterOf(name))),
        );
        expect(masters.size).toBe(3);
      }
      // The consumer that left with SIGTERM let go of its partitions and exited cleanly.
      expect(await exitOf(children.find((c) => c.name === 'c3')!.child)).toBe(0);
    },
  );
});
