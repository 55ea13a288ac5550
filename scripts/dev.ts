/**
 * `pnpm dev`: finds (or starts) a Redis, runs every service of the registry (services.ts) and the
 * stream board (`pnpm board`) with readable logs, and stops everything it started on Ctrl-C. A service that dies on its own takes
 * the session down with exit code 1, so nothing is left half-running.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { createServer, Socket } from 'node:net';
import { delimiter, dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { isColorSupported, prettyFactory } from 'pino-pretty';
import { canConnect } from '../harness/net.ts';
import { startRedisCluster, type RedisCluster } from '../harness/redis-cluster.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { portVariableOf, services } from '../services.ts';
import { devSecret } from './dev-secret.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
const STOP_TIMEOUT_MS = 10_000;
const PROBE_TIMEOUT_MS = 2_000;
const LOCAL_HOSTS = new Set(['127.0.0.1', 'localhost', '::1']);
const HOW_TO_GET_REDIS =
  'start one with `docker compose up -d redis` (then REDIS_URL=redis://admin:admin-dev-password@127.0.0.1:6379, see redis/users.acl), or install it (`sudo apt-get install redis-server` / `brew install redis`) so `pnpm dev` can start redis-server itself, or set REDIS_URL to a Redis you can reach';

interface ServiceSpec {
  /** As the registry names it: `payment-service`. */
  name: string;
  dir: string;
  port: number;
  /** The variable that sets `port`. */
  portVariable: string;
  color: number;
  /** The `INSTANCE_ID` it is started with. */
  instance: string;
  /** The script it runs, from `dir`. */
  entry: string;
  /** Its own variables (its port among them). */
  env: Record<string, string>;
}

interface Service {
  spec: ServiceSpec;
  child: ChildProcess;
  /** Settles once the process has exited and its output is drained; never rejects. */
  closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  isClosed: boolean;
}

/** The Redis this session talks to; `stop()` is a no-op unless we started it. */
interface SessionRedis {
  url: string;
  /**
   * What this run started, as its stop is announced: `redis-server this run started on <host:port>`;
   * undefined for a Redis that was there.
   */
  started?: string;
  stop(): Promise<void>;
}

/** The stream board's name in the log and its port unless BOARD_PORT says otherwise (scripts/board/config.ts). */
const BOARD = 'board';
const BOARD_PORT = 8090;

const colors = isColorSupported;
const paint = (code: number, text: string) => (colors ? `\u001b[${code}m${text}\u001b[39m` : text);
/** A service's tag in the log: its name without `-service`, as wide as the widest. */
const shortName = (name: string) => name.replace(/-service$/, '');
const TAG_WIDTH = Math.max(BOARD.length, ...services.map((service) => shortName(service.name).length)) + 1;
const prefix = (name: string, color: number) => paint(color, `${shortName(name).padEnd(TAG_WIDTH)}|`);
const DEV_PREFIX = prefix('dev', 90);

function say(line: string): void {
  process.stdout.write(`${DEV_PREFIX} ${line}\n`);
}

/** Prints the reason and leaves; used only before any child process exists. */
function fail(line: string): never {
  process.stderr.write(`pnpm dev: ${line}\n`);
  process.exit(1);
}

/** Colors for the services' log prefixes, in the registry's order (then round again). */
const COLORS = [36, 35, 33, 32, 34, 31];

/** The port `portVariable` gives, or `fallback`; exits on one that is not a port. */
function portOf(env: NodeJS.ProcessEnv, portVariable: string, fallback: number): number {
  // An empty variable means unset; 0 would let the service pick a port nobody knows.
  const port = Number(env[portVariable] || fallback);
  if (!Number.isInteger(port) || port < 1 || port > 65_535)
    fail(`${portVariable} must be a port number from 1 to 65535, got "${env[portVariable]}"`);
  return port;
}

/**
 * What to start: every service of the registry, on the port its variable gives or its own, then
 * the board, told where the services are (order-service for its timeline and form, each /metrics).
 */
function serviceSpecs(env: NodeJS.ProcessEnv): ServiceSpec[] {
  const specs = services.map((service, i): ServiceSpec => {
    const portVariable = portVariableOf(service.name);
    const port = portOf(env, portVariable, service.port);
    return {
      name: service.name,
      dir: `packages/${service.name}`,
      port,
      portVariable,
      color: COLORS[i % COLORS.length]!,
      // Told to the service, which answers it on /healthz: a service of another run on the port is not ours.
      instance: `dev-${process.pid}-${service.name}`,
      entry: 'src/main.ts',
      env: { PORT: String(port) },
    };
  });
  const boardPort = portOf(env, 'BOARD_PORT', BOARD_PORT);
  const order = specs.find((spec) => spec.name === 'order-service')!;
  specs.push({
    name: BOARD,
    dir: '.',
    port: boardPort,
    portVariable: 'BOARD_PORT',
    color: COLORS[specs.length % COLORS.length]!,
    instance: `dev-${process.pid}-${BOARD}`,
    entry: 'scripts/board/main.ts',
    env: {
      BOARD_PORT: String(boardPort),
      ORDER_SERVICE_URL: `http://127.0.0.1:${order.port}`,
      BOARD_METRICS: specs.map((spec) => `${spec.name}=http://127.0.0.1:${spec.port}/metrics`).join(','),
    },
  });
  return specs;
}

/** Whether this process could listen on `port` as the services do (every address of the host). */
function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen({ port, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/**
 * Exits with one line unless every service has a port of its own that nobody holds: a service
 * started on a taken port would die with EADDRINUSE, while whatever holds it (another `pnpm dev`,
 * say) answered for it.
 */
async function checkPorts(specs: ServiceSpec[]): Promise<void> {
  for (const [i, spec] of specs.entries()) {
    const other = specs.slice(0, i).find((earlier) => earlier.port === spec.port);
    if (other)
      fail(
        `${other.portVariable} and ${spec.portVariable} are both ${spec.port}: each service needs a port of its own`,
      );
  }
  const free = await Promise.all(specs.map((spec) => portIsFree(spec.port)));
  const taken = specs.filter((_, i) => !free[i]);
  if (taken.length > 0)
    fail(
      `${taken.map((spec) => `port ${spec.port} (${spec.portVariable}, ${spec.name})`).join(', ')} ${taken.length > 1 ? 'are' : 'is'} taken, by another \`pnpm dev\` or another program: stop it, or set ${taken.map((spec) => spec.portVariable).join(', ')} to a free port`,
    );
}

// ---- Redis ------------------------------------------------------------------------------------

/** The URL without its password, for log lines. */
function redact(url: URL): string {
  if (!url.password) return url.href;
  const copy = new URL(url.href);
  copy.password = '***';
  return copy.href;
}

/**
 * What answers at `host:port`: `'redis'`, `'nothing'` (refused or unreachable), or `'other'`
 * (something that does not reply to PING like Redis). A Redis that wants a password still counts:
 * its `-NOAUTH` reply proves it is Redis, and the services authenticate with the URL.
 */
function probe(host: string, port: number, tls: boolean): Promise<'redis' | 'locked' | 'nothing' | 'other'> {
  // A raw PING cannot go through TLS without a client; being reachable has to do there.
  if (tls) return canConnect(port, host, PROBE_TIMEOUT_MS).then((ok) => (ok ? 'redis' : 'nothing'));
  return new Promise((resolve) => {
    const socket = new Socket();
    let connected = false;
    let reply = '';
    const done = (result: 'redis' | 'locked' | 'nothing' | 'other') => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(PROBE_TIMEOUT_MS, () => done(connected ? 'other' : 'nothing'));
    socket.once('error', () => done(connected ? 'other' : 'nothing'));
    socket.once('close', () => done(connected ? 'other' : 'nothing'));
    socket.on('data', (chunk) => {
      reply += chunk.toString('latin1');
      if (!reply.includes('\r\n')) return;
      done(/^\+PONG/.test(reply) ? 'redis' : /^(-NOAUTH|-DENIED)/.test(reply) ? 'locked' : 'other');
    });
    socket.connect(port, host, () => {
      connected = true;
      socket.write('PING\r\n');
    });
  });
}

function onPath(binary: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => {
    if (!dir) return false;
    try {
      const file = join(dir, binary);
      accessSync(file, constants.X_OK);
      return statSync(file).isFile();
    } catch {
      return false;
    }
  });
}

/** Uses the Redis at `rawUrl` if one answers, else starts a throw-away local one, else exits 1. */
async function ensureRedis(rawUrl: string): Promise<SessionRedis> {
  let url: URL;
  try {
    url = new URL(rawUrl);
  } catch {
    fail(`REDIS_URL is not a URL: "${rawUrl}"`);
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:')
    fail(`REDIS_URL must start with redis:// or rediss://, got "${redact(url)}"`);
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
  const port = Number(url.port || 6379);

  const found = await probe(host, port, url.protocol === 'rediss:');
  // A Redis that wants a password (or a user) is fine if the URL brings one.
  if (found === 'locked' && !url.password)
    fail(
      `the Redis at ${redact(url)} wants a password: put a user and password in REDIS_URL (docker compose's Redis: redis://admin:admin-dev-password@${host}:${port})`,
    );
  if (found === 'redis' || found === 'locked') {
    say(`using Redis at ${redact(url)}`);
    return { url: url.href, stop: async () => {} };
  }
  if (found === 'other')
    fail(
      `something listens on ${host}:${port} but does not answer PING like Redis; free the port or set REDIS_URL to your Redis`,
    );
  if (!LOCAL_HOSTS.has(host) || !onPath('redis-server'))
    fail(`no Redis answers at ${redact(url)}: ${HOW_TO_GET_REDIS}`);

  if (process.env.REDIS_CLUSTER === 'true') return startLocalCluster(url);
  let server: RedisServer;
  try {
    // Out of the terminal's process group: Ctrl-C stops the services first, and them only.
    server = await startRedisServer({ port, detached: true });
  } catch (err) {
    fail(
      `no Redis answered at ${redact(url)} and redis-server would not start on port ${port}: ${(err as Error).message}`,
    );
  }
  // The embedded server binds 127.0.0.1 and has no password; keep the database number and options.
  const sessionUrl = new URL(url.href);
  sessionUrl.hostname = '127.0.0.1';
  sessionUrl.username = '';
  sessionUrl.password = '';
  say(
    `no Redis answered at ${redact(url)}; started redis-server on 127.0.0.1:${port} for this session (it keeps no data: everything is gone when pnpm dev stops)`,
  );
  return {
    url: sessionUrl.href,
    started: `redis-server this run started on 127.0.0.1:${port}`,
    stop: () => server.stop(),
  };
}

/**
 * With REDIS_CLUSTER=true and no Redis at `url`: a throw-away Redis Cluster of three masters on
 * free ports (the cluster bus needs a port per node besides), made as an operator makes one.
 */
async function startLocalCluster(url: URL): Promise<SessionRedis> {
  let cluster: RedisCluster;
  try {
    cluster = await startRedisCluster({ masters: 3, detached: true });
  } catch (err) {
    fail(
      `no Redis answered at ${redact(url)} and a local Redis Cluster would not start: ${(err as Error).message}`,
    );
  }
  const ports = cluster.nodes.map((node) => node.port).join(', ');
  say(
    `no Redis answered at ${redact(url)}; started a Redis Cluster of three masters on 127.0.0.1 ports ${ports} for this session (it keeps no data)`,
  );
  return {
    url: cluster.url,
    started: `Redis Cluster this run started on 127.0.0.1 ports ${ports}`,
    stop: () => cluster.stop(),
  };
}

// ---- Services ---------------------------------------------------------------------------------

type Prettify = (line: string) => string;

/** Pretty-prints pino JSON lines; anything else passes through as it came. Every line gets `tag`. */
function formatLine(line: string, tag: string, prettify: Prettify): string {
  let text = line;
  if (line.startsWith('{')) {
    try {
      text = prettify(line).replace(/\r?\n$/, '');
    } catch {
      text = line;
    }
  }
  return text
    .split('\n')
    .map((part) => `${tag} ${part}`)
    .join('\n')
    .concat('\n');
}

function pipeLines(input: Readable, output: NodeJS.WritableStream, tag: string, prettify: Prettify): void {
  createInterface({ input, crlfDelay: Infinity }).on('line', (line) =>
    output.write(formatLine(line, tag, prettify)),
  );
}

/**
 * The services' auth: the identity provider's keys if AUTH_JWKS_URL is set, else the development
 * secret (AUTH_SECRET, or the one kept in .dev/auth-secret, made on the first run), which `pnpm
 * token` signs with. The board gets it too: it signs the tokens of the orders it looks up and places.
 */
function authEnvironment(env: NodeJS.ProcessEnv): Record<string, string> {
  if (env.AUTH_JWKS_URL) return {};
  return { AUTH_SECRET: devSecret(env, { create: true })! };
}

function startService(spec: ServiceSpec, redisUrl: string, prettify: Prettify): Service {
  const child = spawn(process.execPath, ['--import', 'tsx', spec.entry], {
    cwd: join(ROOT, spec.dir),
    env: {
      ...process.env,
      ...authEnvironment(process.env),
      REDIS_URL: redisUrl,
      INSTANCE_ID: spec.instance,
      ...spec.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const tag = prefix(spec.name, spec.color);
  pipeLines(child.stdout!, process.stdout, tag, prettify);
  pipeLines(child.stderr!, process.stderr, tag, prettify);
  const service: Service = {
    spec,
    child,
    isClosed: false,
    closed: new Promise((resolve) => {
      // 'error' without 'close' means the process never started.
      child.once('error', (err) => {
        process.stderr.write(`${tag} could not start: ${err.message}\n`);
        resolve({ code: null, signal: null });
      });
      child.once('close', (code, signal) => resolve({ code, signal }));
    }),
  };
  void service.closed.then(() => (service.isClosed = true));
  return service;
}

/** SIGTERM, then SIGKILL if the service has not exited after {@link STOP_TIMEOUT_MS}. */
async function stopService(service: Service): Promise<void> {
  if (service.isClosed) return;
  service.child.kill('SIGTERM');
  const timer = setTimeout(() => {
    say(`${service.spec.name} did not stop within ${STOP_TIMEOUT_MS / 1000} s; killing it`);
    service.child.kill('SIGKILL');
  }, STOP_TIMEOUT_MS);
  await service.closed;
  clearTimeout(timer);
}

/**
 * Whether the service on `spec.port` is the one this run started: its /healthz answers with the
 * `INSTANCE_ID` it was given. Another run's service on that port (it took the port after the check)
 * answers too, but as another instance.
 */
async function answersAsOurs(spec: ServiceSpec): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${spec.port}/healthz`, { signal: AbortSignal.timeout(1_000) });
    const body = (await res.json()) as { instance?: unknown };
    return res.ok && body.instance === spec.instance;
  } catch {
    return false;
  }
}

/** Resolves once every service this run started answers /healthz; says once if that takes long, but keeps waiting. */
async function waitUntilHealthy(specs: ServiceSpec[]): Promise<void> {
  const slowAt = Date.now() + 30_000;
  let saidSlow = false;
  let pending = specs;
  for (;;) {
    const healthy = await Promise.all(pending.map(answersAsOurs));
    pending = pending.filter((_, i) => !healthy[i]);
    if (pending.length === 0) return;
    if (!saidSlow && Date.now() > slowAt) {
      saidSlow = true;
      say(
        `still waiting for ${pending.map((spec) => `${spec.name} (:${spec.port})`).join(', ')} to answer /healthz`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

/** What the banner says of the board's writes. */
function boardNote(): string {
  return process.env.BOARD_TOKEN
    ? '  (replay, discard and the order form need BOARD_TOKEN, entered on the page)'
    : '  (read-only: set BOARD_TOKEN to replay, discard and place orders from it)';
}

function banner(specs: ServiceSpec[], redisUrl: string): string {
  const order = specs.find((spec) => spec.name === 'order-service') ?? specs[0]!;
  const width = Math.max(...specs.map((spec) => spec.name.length)) + 1;
  return [
    'all services and the board are up',
    ...specs.map(
      (spec) =>
        `  ${spec.name.padEnd(width)} http://localhost:${spec.port}${spec.name === BOARD ? `/${boardNote()}` : ''}`,
    ),
    `  ${'redis'.padEnd(width)} ${redact(new URL(redisUrl))}`,
    process.env.AUTH_JWKS_URL
      ? 'try, with a token of your identity provider (AUTH_JWKS_URL) in TOKEN:'
      : 'try (`pnpm token <userId>` signs a token with the development secret):',
    ...(process.env.AUTH_JWKS_URL ? [] : ['  TOKEN=$(pnpm -s token u1)']),
    `  curl -X POST localhost:${order.port}/orders -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"productId":"p1","price":1000}'`,
    `  curl localhost:${order.port}/orders -H "authorization: Bearer $TOKEN"`,
    'Ctrl-C stops everything.',
  ].join(`\n${DEV_PREFIX} `);
}

// ---- Session ----------------------------------------------------------------------------------

/** Everything this run started, so that one `shutdown()` can undo it in reverse order. */
const session: { redis?: Promise<SessionRedis>; services: Service[]; stopping?: Promise<never> } = {
  services: [],
};

/** Stops the services, then Redis (they need it to close cleanly), then exits. Safe to call twice. */
function shutdown(code: number): Promise<never> {
  return (session.stopping ??= (async () => {
    await Promise.all(session.services.map(stopService));
    try {
      // Awaiting the start too: a signal during it must not orphan a half-started redis-server.
      const redis = await session.redis;
      if (redis?.started) say(`stopping the ${redis.started}`);
      await redis?.stop();
    } catch (err) {
      process.stderr.write(`pnpm dev: could not stop redis-server: ${(err as Error).message}\n`);
      code = 1;
    }
    process.exit(code);
  })());
}

function onSignal(signal: NodeJS.Signals): void {
  if (session.stopping) {
    // A second Ctrl-C means "now": do not wait for graceful shutdowns any more.
    for (const service of session.services) service.child.kill('SIGKILL');
    return;
  }
  say(`${signal}: stopping the services`);
  void shutdown(0);
}

/** A service that exits while we are not stopping is a failure: take the rest down with it. */
function watch(service: Service): void {
  void service.closed.then(({ code, signal }) => {
    if (session.stopping) return;
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    process.stderr.write(`pnpm dev: ${service.spec.name} ${how}; stopping the others\n`);
    void shutdown(1);
  });
}

async function main(): Promise<void> {
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // Output that goes away (`pnpm dev | head`, a closed terminal) ends the session as Ctrl-C does:
  // unhandled, the EPIPE would crash this process and leave the services running without it.
  for (const output of [process.stdout, process.stderr]) output.on('error', () => void shutdown(0));
  const specs = serviceSpecs(process.env);
  await checkPorts(specs);
  session.redis = ensureRedis(process.env.REDIS_URL || DEFAULT_REDIS_URL);
  const redis = await session.redis;
  if (session.stopping) return;

  const prettify = prettyFactory({
    colorize: colors,
    translateTime: 'SYS:HH:MM:ss.l',
    singleLine: true,
    // The tag in front says which service; `instance` is the one this run gave it.
    ignore: 'pid,hostname,name,instance',
  });
  for (const spec of specs) {
    const service = startService(spec, redis.url, prettify);
    session.services.push(service);
    watch(service);
  }
  await waitUntilHealthy(specs);
  if (!session.stopping) say(banner(specs, redis.url));
}

main().catch((err: unknown) => {
  process.stderr.write(`pnpm dev: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  void shutdown(1);
});
