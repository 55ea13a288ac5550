import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { freePort } from './net.ts';
import { startRedisServer, type RedisServer } from './redis-server.ts';

const run = promisify(execFile);

/**
 * A private Redis Cluster of `redis-server` child processes, made the way an operator makes one:
 * each node started with `--cluster-enabled yes`, then `redis-cli --cluster create`. For the
 * tests and benches of cluster mode; never touches a shared Redis.
 */
export interface RedisCluster {
  /** Every node, masters first as `redis-cli --cluster create` paired them. */
  readonly nodes: readonly RedisServer[];
  /** A URL naming one node: what `REDIS_URL` takes in cluster mode. */
  readonly url: string;
  /** The port of the master that serves `key`'s hash slot now. */
  masterOf(key: string): Promise<number>;
  /**
   * Kills (SIGKILL) the master of `key`'s slot, waits until its replica has taken over and the
   * cluster is ok again, then starts the killed node again (it comes back as a replica). Resolves
   * to the ports of the old and the new master.
   */
  failover(key: string): Promise<{ from: number; to: number }>;
  /** Stops every node and removes their data. Safe to call twice. */
  stop(): Promise<void>;
}

export interface RedisClusterOptions {
  /** @defaultValue 3 */
  masters?: number;
  /** Replicas per master. @defaultValue 0 */
  replicas?: number;
  /** How long a node may not answer before the others call it failed (ms). @defaultValue 5000 */
  nodeTimeoutMs?: number;
  /** Extra `redis-server` arguments for every node. */
  args?: string[];
  /** Each node in a process group of its own (see `RedisServerOptions.detached`). @defaultValue false */
  detached?: boolean;
}

export async function startRedisCluster(options: RedisClusterOptions = {}): Promise<RedisCluster> {
  const { masters = 3, replicas = 0, nodeTimeoutMs = 5_000, args = [], detached = false } = options;
  const nodes: RedisServer[] = [];
  const stop = () => Promise.all(nodes.map((node) => node.stop())).then(() => {});
  try {
    for (let i = 0; i < masters * (1 + replicas); i += 1) {
      // The cluster bus on a port of its own: port + 10000, its default, may be taken or past 65535.
      const busPort = await freePort();
      nodes.push(
        await startRedisServer({
          detached,
          args: [
            '--cluster-enabled',
            'yes',
            '--cluster-config-file',
            'nodes.conf',
            '--cluster-node-timeout',
            String(nodeTimeoutMs),
            '--cluster-port',
            String(busPort),
            ...args,
          ],
        }),
      );
    }
    await run('redis-cli', [
      '--cluster',
      'create',
      ...nodes.map((node) => `127.0.0.1:${node.port}`),
      '--cluster-replicas',
      String(replicas),
      '--cluster-yes',
    ]);
    await untilClusterOk(nodes);
    await untilReplicasSynced(nodes);
  } catch (err) {
    await stop();
    throw err;
  }
  let stopped: Promise<void> | undefined;
  const masterOf = async (key: string) => {
    for (const node of nodes) {
      const port = await masterOfVia(node.port, key).catch(() => undefined);
      if (port !== undefined) return port;
    }
    throw new Error(`no node of the cluster answers`);
  };
  return {
    nodes,
    url: nodes[0]!.url,
    masterOf,
    async failover(key) {
      const from = await masterOf(key);
      const node = nodes.find((candidate) => candidate.port === from)!;
      const others = nodes.filter((candidate) => candidate !== node);
      await node.kill('SIGKILL');
      // The others call it failed after the node timeout, and its replica takes its slots.
      let to = from;
      const deadline = Date.now() + 60_000;
      while (to === from) {
        if (Date.now() > deadline) throw new Error(`no replica took over from ${from} within 60 s`);
        await new Promise((resolve) => setTimeout(resolve, 200));
        to = await masterOfVia(others[0]!.port, key).catch(() => from);
      }
      await untilClusterOk(others);
      await node.start();
      await untilClusterOk(nodes);
      await untilReplicasSynced(nodes);
      return { from, to };
    },
    stop: () => (stopped ??= stop()),
  };
}

/** Waits until every replica has loaded its master's data and follows it (`master_link_status:up`). */
async function untilReplicasSynced(nodes: readonly RedisServer[]): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const states = await Promise.all(
      nodes.map((node) => cli(node.port, 'info', 'replication').catch(() => '')),
    );
    if (states.every((state) => state.includes('role:master') || state.includes('master_link_status:up')))
      return;
    if (Date.now() > deadline) throw new Error("the Redis Cluster's replicas did not sync within 30 s");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** The port of the master of `key`'s slot, as the node on `port` sees it. */
async function masterOfVia(port: number, key: string): Promise<number> {
  const redis = new Redis(port, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
  redis.on('error', () => {});
  try {
    const slot = (await redis.call('CLUSTER', 'KEYSLOT', key)) as number;
    const ranges = (await redis.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
    const range = ranges.find(([first, last]) => slot >= first && slot <= last);
    if (!range) throw new Error(`no master serves slot ${slot}`);
    return range[2][1];
  } finally {
    redis.disconnect();
  }
}

async function cli(port: number, ...args: string[]): Promise<string> {
  return (await run('redis-cli', ['-p', String(port), ...args])).stdout;
}

/** Waits until every node says the cluster is ok and agrees on the slots (`redis-cli --cluster check`). */
async function untilClusterOk(nodes: readonly RedisServer[]): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    // A node still starting (LOADING) answers with an error: not ok yet.
    const states = await Promise.all(nodes.map((node) => cli(node.port, 'cluster', 'info').catch(() => '')));
    if (states.every((state) => state.includes('cluster_state:ok'))) {
      const check = await run('redis-cli', ['--cluster', 'check', `127.0.0.1:${nodes[0]!.port}`]).catch(
        (err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }),
      );
      if (check.stdout.includes('[OK] All nodes agree about slots configuration')) return;
    }
    if (Date.now() > deadline) throw new Error('the Redis Cluster did not become ok within 30 s');
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
