/**
 * Chain rows (section 7): the CPU time the whole chain spends per order — order-service,
 * payment-service, notification-service and their Redis — beside a bare chain of three small
 * processes that do the same hops with plain ioredis and none of the guarantees
 * (bare-chain-*.ts): HTTP → XADD order-events, and XREADGROUP of both streams → the order's hash
 * (HSET) + XACK, the read model; XREADGROUP → XADD payment-events + XACK; XREADGROUP of both
 * streams → record (RPUSH + SET) + XACK. Each chain has a redis-server of its
 * own, so that `INFO cpu` is its alone, and both carry the same open-loop HTTP load, taking turns.
 * Each process's part is printed beside the total, so that the next bottleneck is visible. The
 * load generator (this process, which also reads the services' logs) is not counted. Every order
 * carries its user's bearer token, to both chains alike (the bare one ignores it).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { Agent } from 'node:http';
import { fileURLToPath } from 'node:url';
import type { RedisClient } from '@msa/stream-kit';
import { Cluster, Redis } from 'ioredis';
import { freePort, waitForPort } from '../../harness/net.ts';
import { startRedisCluster, type RedisCluster } from '../../harness/redis-cluster.ts';
import { startRedisServer, type RedisServer } from '../../harness/redis-server.ts';
import { exitOf, startService, type RunningService, type ServiceName } from '../../harness/services.ts';
import { waitFor } from '../../harness/wait.ts';
import { assertNodeProcess, cpuShares, cpuSpent, processCpuMs, redisCpuMs, type CpuShare } from './cpu.ts';
import { BENCH_AUTH_ENV, bearerOf, poster, type Services } from './services-load.ts';
import { now, offer, order, sleep, type BenchOptions, type Row } from './support.ts';

const SECTION = '7. chain CPU per order';
const BARE = 'bare ioredis chain: CPU per order (3 processes + Redis)';
const SERVICES = 'services: CPU per order (3 services + Redis)';
const CLUSTER = 'services on a Redis Cluster of 3 masters: CPU per order (3 services + 3 masters)';

/** The processes of a chain, by role; both chains name them alike, so that they can be compared. */
const ROLES = ['order', 'payment', 'notification'] as const;
type Role = (typeof ROLES)[number];

/** The streams and groups both chains use: the real names, so that keys and entries are the same size. */
const GROUPS: Record<string, string[]> = {
  'order-events': ['payment-service-group', 'notification-service-group', 'order-service-group'],
  'payment-events': ['notification-service-group', 'order-service-group'],
};

/** A process of a chain: a service, or a bare-chain script. */
interface Member {
  role: Role;
  label: string;
  process: ChildProcess;
  /** Where the order process answers HTTP. */
  url?: string;
  output(): string;
  stop(): Promise<unknown>;
}

interface Chain {
  post: Services['post'];
  members: Member[];
  /** A connection to the chain's own redis-server (or cluster), for the checks. */
  admin: RedisClient;
  /** Where `INFO cpu` is read: the redis-server, or each master of the cluster, by name. */
  redisNodes: { name: string; redis: Redis }[];
  /** The sent logs' key of user `user`: one on one Redis, one per stream's slot on a cluster. */
  sentLogs(user: number): string[];
  /** Orders answered 202 so far, the warm-up's included: what the streams must hold. */
  placed: number;
  /**
   * Closes the client's idle connections. A chain idles while the other one takes its turn (8 s,
   * longer than the servers' 5 s keep-alive timeout): a request sent on a connection the server is
   * closing at that moment fails with "socket hang up" (2 of 3,200 orders, once).
   */
  hangUpIdle(): void;
  stop(): Promise<void>;
}

const root = fileURLToPath(new URL('../..', import.meta.url));

/** A bare-chain script as a process: `node --import tsx`, as the harness starts the services. */
function spawnBare(role: Role, env: Record<string, string>): Member & { exited: Promise<number | null> } {
  const child = spawn(process.execPath, ['--import', 'tsx', `scripts/bench/bare-chain-${role}.ts`], {
    cwd: root,
    env: { ...process.env, NODE_ENV: 'production', ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  // If the bench dies first (an uncaught error, a signal), the process must not linger.
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  child.once('exit', () => process.off('exit', kill));
  let stderr = '';
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  const exited = exitOf(child);
  return {
    role,
    label: `bare ${role}`,
    process: child,
    exited,
    output: () => stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Throws if a process of the chain has exited: waiting on would only time out. */
function checkAlive(chain: Pick<Chain, 'members'>) {
  for (const { label, process: child, output } of chain.members) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`${label} exited (${child.exitCode ?? child.signalCode}):\n${output().slice(-3_000)}`);
  }
}

/**
 * Starts every one of `starts` and checks that each is a Node process itself (the pid whose CPU
 * is read); if one fails, stops those that started and throws its error.
 */
async function startAll(starts: Promise<Member>[]): Promise<Member[]> {
  const started = await Promise.allSettled(starts);
  const members = started.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const failed = started.find((result) => result.status === 'rejected');
  try {
    if (failed) throw failed.reason;
    for (const member of members) assertNodeProcess(member.process.pid!, member.label);
  } catch (err) {
    await Promise.all(members.map((member) => member.stop()));
    throw err;
  }
  return members;
}

/**
 * A chain's HTTP client, its admin connection and a stop() that ends every process of it; on
 * `cluster`, a cluster client, and each master read for its CPU.
 */
function chainOf(members: Member[], redisUrl: string, cluster?: RedisCluster): Chain {
  const agent = new Agent({ keepAlive: true });
  const admin: RedisClient = cluster
    ? new Cluster([{ host: '127.0.0.1', port: cluster.nodes[0]!.port }], {
        redisOptions: { maxRetriesPerRequest: 1 },
      })
    : new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  admin.on('error', () => {});
  const redisNodes = cluster
    ? cluster.nodes.map((node) => ({ name: `redis :${node.port}`, redis: new Redis(node.port) }))
    : [{ name: 'redis', redis: admin as Redis }];
  return {
    post: poster(`${members[0]!.url}/orders`, agent),
    members,
    admin,
    redisNodes,
    sentLogs: (user) =>
      cluster
        ? ['{order-events}', '{payment-events}'].map((tag) => `notification-service:sent:${tag}:user-${user}`)
        : [`notification-service:sent:user-${user}`],
    placed: 0,
    // No request is in flight between windows (each starts on a drained chain): every socket is idle.
    hangUpIdle: () => agent.destroy(),
    async stop() {
      agent.destroy();
      await Promise.all(members.map((member) => member.stop()));
      admin.disconnect();
      for (const { redis } of redisNodes) redis.disconnect();
    },
  };
}

async function startServicesChain(redisUrl: string, cluster?: RedisCluster): Promise<Chain> {
  const start = (role: Role): Promise<Member> => {
    const name: ServiceName = `${role}-service`;
    // As shipped and deployed (the Dockerfile's NODE_ENV, the default LOG_LEVEL info: a line per
    // order in order-service and payment-service, one per mail and SMS in notification-service):
    // logging is part of what an order costs in production. With NODE_ENV=production a service
    // starts only with auth: the bench's secret, so order-service verifies each order's token. No
    // rate limits: 400 orders a second from one address are far over the default ones.
    // prettier-ignore
    return startService(name, {
      REDIS_URL: redisUrl, LOG_LEVEL: 'info', NODE_ENV: 'production', ...BENCH_AUTH_ENV,
      RATE_LIMIT_PER_USER: '0', RATE_LIMIT_PER_ADDRESS: '0', ...(cluster ? { REDIS_CLUSTER: 'true' } : {}),
    }).then(
      (service: RunningService) => ({
        role,
        label: name,
        process: service.process,
        url: service.url,
        output: service.output,
        stop: () => service.stop(5_000),
      }),
    );
  };
  return chainOf(await startAll(ROLES.map(start)), redisUrl, cluster);
}

async function startBareChain(redisUrl: string): Promise<Chain> {
  // The groups first, from the stream's start, as stream-kit makes them: no order is missed
  // however the three processes' starts interleave.
  const setup = new Redis(redisUrl);
  try {
    for (const [stream, groups] of Object.entries(GROUPS))
      for (const group of groups) await setup.xgroup('CREATE', stream, group, '0', 'MKSTREAM');
  } finally {
    setup.disconnect();
  }
  const start = async (role: Role): Promise<Member> => {
    const port = await freePort();
    const member = spawnBare(role, { REDIS_URL: redisUrl, PORT: String(port) });
    if (role !== 'order') return member;
    const died = member.exited.then((code) => {
      throw new Error(`bare-chain-order.ts exited with ${code}:\n${member.output()}`);
    });
    died.catch(() => {});
    try {
      await Promise.race([waitForPort(port, 20_000), died]);
    } catch (err) {
      await member.stop();
      throw err;
    }
    return { ...member, url: `http://127.0.0.1:${port}` };
  };
  return chainOf(await startAll(ROLES.map(start)), redisUrl);
}

/** The CPU ms each process of the chain has used so far, by role, and its Redis's (each master's) by name. */
async function readCpu(chain: Chain): Promise<Record<string, number>> {
  const redis = await Promise.all(
    chain.redisNodes.map(async (node) => [node.name, await redisCpuMs(node.redis)]),
  );
  return {
    ...Object.fromEntries(chain.members.map((m) => [m.role, processCpuMs(m.process.pid!)])),
    ...Object.fromEntries(redis),
  };
}

/** Flat `[key, value, …]` replies (XINFO) as an object. */
function fieldsOf(reply: unknown[]): Record<string, unknown> {
  const fields: Record<string, unknown> = {};
  for (let i = 0; i + 1 < reply.length; i += 2) fields[String(reply[i])] = reply[i + 1];
  return fields;
}

/**
 * Whether every order placed so far is all the way through: each stream holds one entry per
 * order, and each group has been handed its last entry and acked everything (both services and
 * the bare consumers ack an entry only once its work is written).
 */
async function throughAll(chain: Chain): Promise<boolean> {
  for (const [stream, groups] of Object.entries(GROUPS)) {
    const info = fieldsOf((await chain.admin.xinfo('STREAM', stream)) as unknown[]);
    if (Number(info.length) < chain.placed) return false;
    const byName = new Map(
      ((await chain.admin.xinfo('GROUPS', stream)) as unknown[][]).map((reply) => {
        const group = fieldsOf(reply);
        return [String(group.name), group];
      }),
    );
    for (const name of groups) {
      const group = byName.get(name);
      if (!group || group.pending !== 0 || group['last-delivered-id'] !== info['last-generated-id'])
        return false;
    }
  }
  return true;
}

/** Waits until every order placed so far is through the chain; throws after `ms`, or if a process died. */
async function drain(chain: Chain, ms: number): Promise<void> {
  const deadline = now() + ms;
  // Polled only once the load is over, every 5 ms: a few commands, against the hundreds of
  // thousands of µs the window's orders cost Redis.
  while (!(await throughAll(chain))) {
    checkAlive(chain);
    if (now() > deadline) throw new Error(`chain: orders not through ${ms / 1_000} s after the last send`);
    await sleep(5);
  }
}

/** The 100 users of the orders (`order(n)`) and each one's `Bearer <token>`, signed with the bench's secret. */
const bearersOfUsers = async (): Promise<ReadonlyMap<string, string>> =>
  new Map(
    await Promise.all(
      Array.from({ length: 100 }, async (_, n) => {
        const { userId } = order(n);
        return [userId, await bearerOf(userId)] as const;
      }),
    ),
  );

/**
 * POSTs `rate × seconds` orders at `rate` a second (an open loop: each on its schedule, whatever
 * became of the ones before), each with its user's token from `bearers`, and waits for every
 * answer. Throws unless each was a 202. Resolves to the rate achieved.
 */
async function drive(
  chain: Chain,
  bearers: ReadonlyMap<string, string>,
  rate: number,
  seconds: number,
): Promise<number> {
  const total = Math.round(rate * seconds);
  const first = chain.placed;
  let answered = 0;
  const errors: string[] = [];
  const achieved = await offer(rate, seconds, (n) => {
    // One of 100 users per order, as the other rows' orders: each user's sent log grows alike.
    const { userId, productId, price } = order(first + n);
    chain.post(JSON.stringify({ userId, productId, price }), bearers.get(userId)).then(
      ({ status, text }) => {
        answered += 1;
        if (status !== 202) errors.push(`HTTP ${status} ${text}`);
      },
      (err: unknown) => {
        answered += 1;
        errors.push((err as Error).message);
      },
    );
  });
  await waitFor(() => answered === total, { timeoutMs: 15_000, intervalMs: 5, what: 'every answer' });
  if (errors.length > 0) throw new Error(`chain: ${errors.length} of ${total} orders failed: ${errors[0]}`);
  chain.placed += total;
  return achieved;
}

/** What a chain spent over its measured windows. */
interface Tally {
  orders: number;
  /** CPU ms by process. */
  spent: Record<string, number>;
  /** Wall ms of the windows, from the first send to the last order through. */
  ms: number;
  /** The lowest rate the load generator achieved in a window. */
  achieved: number;
  /** CPU ms per order of each window, all processes together. */
  windows: number[];
}

/**
 * One measured window: CPU read, orders sent for `seconds`, CPU read again once every one of them
 * is through. Waiting for the window's orders to be fully through (rather than counting the
 * orders completed within a fixed time) makes the count exact: every CPU ms any process spends on
 * an order of the window falls inside it, and nothing of an earlier order does, since the chain
 * was drained before it began. The cost is the few ms of tail and idle polling after the last
 * send, which is the same for both chains.
 */
async function measure(
  chain: Chain,
  bearers: ReadonlyMap<string, string>,
  tally: Tally,
  rate: number,
  seconds: number,
): Promise<void> {
  await drain(chain, 15_000);
  chain.hangUpIdle();
  const before = await readCpu(chain);
  const began = now();
  const achieved = await drive(chain, bearers, rate, seconds);
  await drain(chain, 15_000);
  const ms = now() - began;
  const spent = cpuSpent(before, await readCpu(chain));
  tally.orders += Math.round(rate * seconds);
  tally.ms += ms;
  tally.achieved = Math.min(tally.achieved, achieved);
  tally.windows.push(cpuShares(spent, Math.round(rate * seconds)).perOrder);
  for (const [name, value] of Object.entries(spent)) tally.spent[name] = (tally.spent[name] ?? 0) + value;
}

/** Throws unless the chain recorded both notifications of every order and dead-lettered nothing. */
async function checkRecorded(chain: Chain): Promise<void> {
  // One key a command: on a cluster the keys live in different slots.
  let recorded = 0;
  for (let user = 0; user < 100; user += 1)
    for (const key of chain.sentLogs(user)) recorded += await chain.admin.llen(key);
  if (recorded !== 2 * chain.placed)
    throw new Error(`chain: ${recorded} notifications recorded for ${chain.placed} orders (2 each)`);
  for (const dlq of ['order-events:dlq', 'payment-events:dlq'])
    if ((await chain.admin.exists(dlq)) > 0)
      throw new Error('chain: the services dead-lettered some entries');
}

/**
 * `order 0.123 ms (31%) · …`, each process's CPU per order and part of the whole; `than`: ratio to
 * the other chain's (`thanName`).
 */
export function sharesNote(
  shares: readonly CpuShare[],
  than?: readonly CpuShare[],
  thanName = 'bare',
): string {
  return shares
    .map(({ name, perOrder, share }) => {
      const other = than?.find((process) => process.name === name)?.perOrder;
      const ratio = other ? `, ${(perOrder / other).toFixed(1)}x ${thanName}` : '';
      return `${name} ${perOrder.toFixed(3)} ms (${(share * 100).toFixed(0)}%${ratio})`;
    })
    .join(' · ');
}

export async function chainRows(server: RedisServer, { quick }: BenchOptions): Promise<Row[]> {
  // Far below the services' highest sustained rate (section 4: about 1,000/s on this 2-core
  // machine), so that neither chain queues and both run as they would under a steady load; the
  // same rate for both, since batching makes the cost per order depend on it.
  const rate = 400;
  const warmUp = quick ? 0.5 : 5;
  const turns = quick ? 1 : 4;
  const seconds = quick ? 1.5 : 8;
  const bareServer = await startRedisServer();
  // Three masters, no replicas: the masters' CPU is the cluster's cost.
  const cluster = await startRedisCluster({ masters: 3 });
  let services: Chain | undefined;
  let bare: Chain | undefined;
  let clustered: Chain | undefined;
  try {
    const [servicesStart, bareStart, clusterStart] = await Promise.allSettled([
      startServicesChain(server.url),
      startBareChain(bareServer.url),
      startServicesChain(cluster.url, cluster),
    ]);
    if (servicesStart.status === 'fulfilled') services = servicesStart.value;
    if (bareStart.status === 'fulfilled') bare = bareStart.value;
    if (clusterStart.status === 'fulfilled') clustered = clusterStart.value;
    for (const start of [servicesStart, bareStart, clusterStart])
      if (start.status === 'rejected') throw start.reason;
    const chains = [services!, bare!, clustered!];
    // The services make their groups as they start; the drain checks read them.
    for (const chain of [services!, clustered!])
      await waitFor(
        async () => {
          for (const [stream, groups] of Object.entries(GROUPS)) {
            const have = (await chain.admin.xinfo('GROUPS', stream).catch(() => [])) as unknown[][];
            const names = have.map((reply) => String(fieldsOf(reply).name));
            if (!groups.every((group) => names.includes(group))) return false;
          }
          return true;
        },
        { timeoutMs: 20_000, what: "the services' consumer groups" },
      );

    const bearers = await bearersOfUsers();
    // The JIT counts calls: the first thousands of orders run slower and are not counted.
    for (const chain of chains) await drive(chain, bearers, rate, warmUp);
    // The two chains take turns, so that whatever else this shared machine does weighs on both.
    const tallies = chains.map((): Tally => ({
      orders: 0,
      spent: {},
      ms: 0,
      achieved: Infinity,
      windows: [],
    }));
    for (let turn = 0; turn < turns; turn += 1)
      for (const [i, chain] of chains.entries()) await measure(chain, bearers, tallies[i]!, rate, seconds);
    for (const chain of chains) await checkRecorded(chain);

    const [servicesCpu, bareCpu, clusterCpu] = tallies.map((tally) => cpuShares(tally.spent, tally.orders));
    const load = (tally: Tally) => {
      const cores = Object.values(tally.spent).reduce((sum, ms) => sum + ms, 0) / tally.ms;
      const short =
        tally.achieved < 0.95 * rate
          ? `, the load generator reached only ${Math.round(tally.achieved)}/s`
          : '';
      return (
        `${rate}/s over HTTP, open loop, ${turns} × ${seconds} s in turns with the other chain after ${warmUp} s of ` +
        `warm-up; ${tally.orders} orders counted, each window until its last order was recorded; ` +
        `${cores.toFixed(2)} cores busy${short}`
      );
    };
    // A turn of each chain, side by side: how far the ratio moves between turns on this machine.
    const ratios = tallies[0]!.windows.map((ms, turn) => ms / tallies[1]!.windows[turn]!);
    // What a core per master would give: the busiest master bounds the cluster's Redis, as the
    // one redis-server bounds its chain's.
    const masters = clusterCpu!.shares.filter(({ name }) => name.startsWith('redis'));
    const busiest = masters.reduce((a, b) => (b.perOrder > a.perOrder ? b : a));
    const clusterRedis = masters.reduce((sum, { perOrder }) => sum + perOrder, 0);
    const oneRedis = servicesCpu!.shares.find(({ name }) => name === 'redis')!.perOrder;
    const spread =
      turns > 1
        ? `; turn by turn ${Math.min(...ratios).toFixed(2)}x to ${Math.max(...ratios).toFixed(2)}x the bare chain`
        : '';
    return [
      {
        section: SECTION,
        name: BARE,
        value: bareCpu!.perOrder,
        unit: 'ms',
        note: `${sharesNote(bareCpu!.shares)}; Express 5 + ioredis, no guarantees, no logs, no auth (the token sent, not read); ${load(tallies[1]!)}`,
      },
      {
        section: SECTION,
        name: SERVICES,
        value: servicesCpu!.perOrder,
        unit: 'ms',
        vs: [{ baseline: BARE, target: 1.5 }],
        note: `${sharesNote(servicesCpu!.shares, bareCpu!.shares)}; as shipped, LOG_LEVEL=info, an HS256 JWT on each order (AUTH_SECRET; 100 users' tokens, each verified, then remembered for 10 s), rate limits off; ${load(tallies[0]!)}${spread}`,
      },
      {
        section: SECTION,
        name: CLUSTER,
        value: clusterCpu!.perOrder,
        unit: 'ms',
        vs: [{ baseline: SERVICES }],
        note:
          `${sharesNote(clusterCpu!.shares, servicesCpu!.shares, 'one Redis')}; the masters together ` +
          `${clusterRedis.toFixed(3)} ms per order against ${oneRedis.toFixed(3)} ms for one Redis; the busiest ` +
          `master does ${((busiest.perOrder / clusterRedis) * 100).toFixed(0)}% of it (order-events and ` +
          `payment-events hash to slots 2609 and 312, one master's), so with a core per master Redis ` +
          `would carry ${(oneRedis / busiest.perOrder).toFixed(1)}x the orders one Redis does; REDIS_CLUSTER=true, ` +
          `otherwise as shipped; ${load(tallies[2]!)}`,
      },
    ];
  } finally {
    await Promise.all([services?.stop(), bare?.stop(), clustered?.stop()]);
    await Promise.all([bareServer.stop(), cluster.stop()]);
  }
}
