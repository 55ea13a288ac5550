/**
 * Partition rows (section 9): one logical stream on a Redis Cluster of three masters, kept as one
 * key (today's default) or split into 8 partitions, drained by a group of three consumer processes
 * (harness/partition-consumer.ts: each entry applied with its ack in one script, at the shipped
 * settings). A burst of entries is published while the consumers wait; the rate is entries applied
 * per second, and each master's part of Redis's CPU time shows how the partitions spread the work.
 * The two layouts take turns, so that whatever else this shared machine does weighs on both.
 */
import type { ChildProcess } from 'node:child_process';
import { createPublisher } from '@msa/stream-kit';
import { livenessKey, partitionNames } from '@msa/stream-kit/lua';
import { Cluster, Redis } from 'ioredis';
import {
  ledgerReport,
  LEDGER_GROUP,
  leaseOwners,
  ledgerStream,
  spawnLedgerConsumer,
} from '../../harness/partitions.ts';
import { startRedisCluster, type RedisCluster } from '../../harness/redis-cluster.ts';
import type { RedisServer } from '../../harness/redis-server.ts';
import { exitOf } from '../../harness/services.ts';
import { waitFor } from '../../harness/wait.ts';
import { cpuShares, cpuSpent, processCpuMs, redisCpuMs } from './cpu.ts';
import { now, type BenchOptions, type Row } from './support.ts';

const SECTION = '9. one stream, 1 vs 8 partitions';
const ONE = 'one key (1 partition) on a 3-master cluster, 3 consumers: entries applied per second';
const EIGHT = '8 partitions on a 3-master cluster, 3 consumers: entries applied per second';
const CONSUMERS = ['c1', 'c2', 'c3'];
/**
 * Keys of the entries: enough that every partition gets its share, few enough that one key's
 * entries are in flight together, which three consumers of one key reorder.
 */
const KEYS = 30;

interface Tally {
  entries: number;
  ms: number;
  spent: Record<string, number>;
  outOfOrder: number;
}

/** One drain: the consumers start and settle, a burst is published, and every entry is applied. */
async function drain(
  cluster: RedisCluster,
  admin: Cluster,
  masters: { name: string; redis: Redis }[],
  partitions: number,
  entries: number,
  round: number,
  tally: Tally,
) {
  const stream = ledgerStream(`bench-ledger-${partitions}-${round}`, partitions);
  const names = partitionNames(stream);
  const children: ChildProcess[] = CONSUMERS.map((consumer) =>
    spawnLedgerConsumer({
      REDIS_URL: cluster.url,
      REDIS_CLUSTER: 'true',
      STREAM: stream.name,
      PARTITIONS: String(partitions),
      CONSUMER: consumer,
      LOG_LEVEL: 'warn',
    }),
  );
  try {
    // Settled: on one key, the three consumers are alive;
    // with partitions, the three own their shares of them.
    await waitFor(
      async () => {
        // One key: every consumer keeps its liveness mark (it may have read nothing yet).
        if (partitions === 1)
          return (await admin.hlen(livenessKey(names[0]!, LEDGER_GROUP))) === CONSUMERS.length;
        const owners = await leaseOwners(admin, names);
        return owners.every((owner) => owner !== null) && new Set(owners).size === CONSUMERS.length;
      },
      { timeoutMs: 30_000, intervalMs: 100, what: 'the consumers to settle' },
    );
    const publisher = createPublisher({ connection: admin });
    const read = () =>
      Promise.all([
        ...masters.map(async ({ name, redis }) => [name, await redisCpuMs(redis)] as const),
        ...children.map((child, i) => [`consumer ${CONSUMERS[i]}`, processCpuMs(child.pid!)] as const),
      ]).then(Object.fromEntries);
    const before = await read();
    const began = now();
    const written = new Map<string, number>();
    for (let i = 0; i < entries; i += 1_000) {
      const batch = Array.from({ length: Math.min(1_000, entries - i) }, (_, j) => {
        const key = `user-${(i + j) % KEYS}`;
        const seq = (written.get(key) ?? 0) + 1;
        written.set(key, seq);
        return { key, seq };
      });
      await publisher.publishMany(stream, batch);
    }
    await publisher.close();
    const report = await waitFor(
      async () => {
        const report = await ledgerReport(admin, stream, names);
        return (
          [...written].every(([key, seq]) => report.last.get(key) === seq) && report.pending === 0 && report
        );
      },
      { timeoutMs: 300_000, intervalMs: 20, what: 'every entry applied' },
    );
    tally.ms += now() - began;
    const spent = cpuSpent(before, await read());
    for (const [name, ms] of Object.entries(spent)) tally.spent[name] = (tally.spent[name] ?? 0) + ms;
    tally.entries += entries;
    tally.outOfOrder += report.violations.length;
  } finally {
    for (const child of children) child.kill('SIGTERM');
    await Promise.all(children.map((child) => exitOf(child)));
  }
}

export async function partitionRows(_server: RedisServer, { quick }: BenchOptions): Promise<Row[]> {
  const entries = quick ? 5_000 : 30_000;
  const turns = quick ? 1 : 2;
  // Three masters, no replicas: the masters' CPU is the cluster's cost.
  const cluster = await startRedisCluster({ masters: 3 });
  const admin = new Cluster([{ host: '127.0.0.1', port: cluster.nodes[0]!.port }]);
  const masters = cluster.nodes.map((node) => ({ name: `redis :${node.port}`, redis: new Redis(node.port) }));
  try {
    const tallies = [1, 8].map((): Tally => ({ entries: 0, ms: 0, spent: {}, outOfOrder: 0 }));
    for (let turn = 0; turn < turns; turn += 1)
      for (const [i, partitions] of [1, 8].entries())
        await drain(cluster, admin, masters, partitions, entries, turn, tallies[i]!);
    return tallies.map((tally, i): Row => {
      const { perOrder, shares } = cpuShares(tally.spent, tally.entries);
      const redis = shares.filter(({ name }) => name.startsWith('redis'));
      const redisPerEntry = redis.reduce((sum, { perOrder: ms }) => sum + ms, 0);
      const busiest = redis.reduce((a, b) => (b.perOrder > a.perOrder ? b : a));
      const masterShares = redis
        .map(({ name, perOrder: ms }) => `${name} ${((ms / redisPerEntry) * 100).toFixed(0)}%`)
        .join(', ');
      const consumers = shares
        .filter(({ name }) => name.startsWith('consumer'))
        .map(({ name, perOrder: ms }) => `${name.slice('consumer '.length)} ${(ms * 1_000).toFixed(0)} µs`)
        .join(', ');
      return {
        section: SECTION,
        name: i === 0 ? ONE : EIGHT,
        value: (tally.entries / tally.ms) * 1_000,
        unit: 'per second',
        ...(i === 1 ? { vs: [{ baseline: ONE }] } : {}),
        note:
          `${turns} × ${entries} entries of ${KEYS} keys in turns; CPU per entry ${(perOrder * 1_000).toFixed(0)} µs in all; ` +
          `Redis ${(redisPerEntry * 1_000).toFixed(0)} µs per entry, by master ${masterShares}: the busiest master ` +
          `bounds a cluster with a core per master at ${(redisPerEntry / busiest.perOrder).toFixed(1)}x one master's ` +
          `rate; consumers ${consumers}` +
          (i === 0
            ? `; ${tally.outOfOrder} entries applied out of their key's order (three consumers share one key's entries)`
            : `; ${tally.outOfOrder} out of order`),
      };
    });
  } finally {
    admin.disconnect();
    for (const { redis } of masters) redis.disconnect();
    await cluster.stop();
  }
}
