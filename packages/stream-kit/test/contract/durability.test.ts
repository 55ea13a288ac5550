import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedisCluster, type RedisCluster } from '../../../../harness/redis-cluster.ts';
import { startRedisServer, type RedisServer } from '../../../../harness/redis-server.ts';
import { waitFor } from '../../../../harness/wait.ts';
import { createPublisher, NotReplicatedError, type Publisher } from '../../src/index.ts';
import { testStream } from '../test-stream.ts';

/*
 * `durability`: a publish resolves only once replicas hold the entry (WAIT), one WAIT per tick for
 * all the writes of the tick. Against a real master and its replica, and a real Redis Cluster.
 */

/** How often `redis` has run WAIT (INFO commandstats). */
async function waits(redis: Redis): Promise<number> {
  const stats = await redis.info('commandstats');
  return Number(/cmdstat_wait:calls=(\d+)/.exec(stats)?.[1] ?? 0);
}

async function untilReplicating(replica: Redis) {
  await waitFor(async () => (await replica.info('replication')).includes('master_link_status:up'), {
    timeoutMs: 10_000,
    what: 'the replica to sync',
  });
}

describe('a durable publisher on one master with a replica', () => {
  let master: RedisServer;
  let replica: RedisServer;
  let admin: Redis;
  let replicaAdmin: Redis;
  const opened: Publisher[] = [];
  const durable = (timeoutMs: number) => {
    const publisher = createPublisher({ connection: master.url, durability: { replicas: 1, timeoutMs } });
    opened.push(publisher);
    return publisher;
  };

  beforeAll(async () => {
    master = await startRedisServer();
    replica = await startRedisServer({
      args: ['--replicaof', '127.0.0.1', String(master.port), '--enable-debug-command', 'yes'],
    });
    admin = new Redis(master.url);
    replicaAdmin = new Redis(replica.url);
    // The last test stops the replica.
    replicaAdmin.on('error', () => {});
    await untilReplicating(replicaAdmin);
  });
  afterAll(async () => {
    await Promise.all(opened.map((publisher) => publisher.close()));
    admin?.disconnect();
    replicaAdmin?.disconnect();
    await replica?.stop();
    await master?.stop();
  });

  it('resolves only once the replica holds the entry, however long the replica takes', async () => {
    const stream = testStream();
    // The replica stalls for 2 s: it applies nothing of the replication stream meanwhile.
    const stall = replicaAdmin.debug('SLEEP', '2');
    await new Promise((resolve) => setTimeout(resolve, 100));
    let resolved = false;
    const publishing = durable(10_000)
      .publish(stream, { n: 1 })
      .then((id) => {
        resolved = true;
        return id;
      });
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const writtenMeanwhile = await admin.xlen(stream.name);
    const resolvedMeanwhile = resolved;
    await stall;
    const id = await publishing;

    expect(writtenMeanwhile).toBe(1);
    expect(resolvedMeanwhile).toBe(false);
    expect((await replicaAdmin.xrange(stream.name, id, id)).map(([entryId]) => entryId)).toEqual([id]);
  });

  it('waits once per tick for a burst of publishes, not once per publish', async () => {
    const stream = testStream();
    const publisher = durable(5_000);
    const before = await waits(admin);

    await Promise.all(Array.from({ length: 200 }, (_, n) => publisher.publish(stream, { n })));

    expect(await replicaAdmin.xlen(stream.name)).toBe(200);
    expect((await waits(admin)) - before).toBeLessThanOrEqual(10);
  });

  it('rejects with NotReplicatedError (NOREPLICAS), the entry written, when no replica confirms it in time', async () => {
    const stream = testStream();
    await replica.stop();

    const failure = await durable(200)
      .publish(stream, { n: 1 })
      .catch((err: unknown) => err);

    expect(failure).toBeInstanceOf(NotReplicatedError);
    expect((failure as Error).message).toMatch(
      /^NOREPLICAS 0 of 1 replicas confirmed the write within 200 ms/,
    );
    expect(await admin.xlen(stream.name)).toBe(1);
  });
});

describe('a durable publisher on a Redis Cluster', () => {
  let cluster: RedisCluster;
  let client: Cluster;

  beforeAll(async () => {
    cluster = await startRedisCluster({ masters: 3, replicas: 1 });
    client = new Cluster([{ host: '127.0.0.1', port: cluster.nodes[0]!.port }]);
  }, 60_000);
  afterAll(async () => {
    client?.disconnect();
    await cluster?.stop();
  });

  it("waits at the master of the stream's slot, on the connection that wrote, and its replica holds the entry", async () => {
    const stream = testStream();
    const masterPort = await cluster.masterOf(stream.name);
    const nodes = cluster.nodes.map((node) => new Redis(node.port));
    try {
      await Promise.all(nodes.map((node) => node.config('RESETSTAT')));
      const publisher = createPublisher({
        connection: client,
        durability: { replicas: 1, timeoutMs: 5_000 },
      });

      const id = await publisher.publish(stream, { n: 1 });

      const waited = await Promise.all(nodes.map(waits));
      expect(cluster.nodes.filter((_, i) => waited[i]! > 0).map((node) => node.port)).toEqual([masterPort]);
      // Its replica: the node whose master is that one.
      const replicas = await Promise.all(
        nodes.map(async (node) => /master_port:(\d+)/.exec(await node.info('replication'))?.[1]),
      );
      const replica = nodes[replicas.indexOf(String(masterPort))]!;
      // A replica answers reads of its slots only when asked to.
      await replica.call('READONLY');
      expect((await replica.xrange(stream.name, id, id)).map(([entryId]) => entryId)).toEqual([id]);
    } finally {
      for (const node of nodes) node.disconnect();
    }
  });
});
