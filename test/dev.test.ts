import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { canConnect, freePort } from '../harness/net.ts';
import { startRedisServer } from '../harness/redis-server.ts';
import { waitFor } from '../harness/wait.ts';
import { portVariableOf, services } from '../services.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

interface DevRun {
  child: ChildProcess;
  output(): { stdout: string; stderr: string };
  /** Settles with the exit code, or rejects (with the output so far) after `timeoutMs`. */
  exit(timeoutMs: number): Promise<number | null>;
}

const started: DevRun[] = [];
const tempDirs: string[] = [];
/** Ports of redis-servers `pnpm dev` may have started: they run in a process group of their own. */
const redisPorts: number[] = [];

/** Runs `pnpm dev` as a real process, in its own process group so cleanup can kill all of it. */
function startDev(env: NodeJS.ProcessEnv): DevRun {
  const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/dev.ts'], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const closed = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  const run: DevRun = {
    child,
    output: () => ({ stdout, stderr }),
    exit(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new Error(
                `pnpm dev still running after ${timeoutMs} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`,
              ),
            ),
          timeoutMs,
        );
      });
      return Promise.race([closed, late]).finally(() => clearTimeout(timer));
    },
  };
  started.push(run);
  return run;
}

afterEach(async () => {
  // Whatever the test did, kill the whole group: dev and its services...
  for (const run of started.splice(0)) {
    try {
      process.kill(-run.child.pid!, 'SIGKILL');
    } catch {
      // ESRCH: everything has already exited, which is the expected case.
    }
  }
  // ...and the redis-server, which is in a group of its own.
  for (const port of redisPorts.splice(0)) await shutdownRedis(port);
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** SHUTDOWN NOSAVE to whatever Redis listens on `port`, if any. */
function shutdownRedis(port: number): Promise<void> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1', () => socket.end('SHUTDOWN NOSAVE\r\n'));
    socket.on('error', () => resolve());
    socket.on('close', () => resolve());
  });
}

/**
 * A free port for each service of the registry and for the board (last), and the variables that
 * give them to `pnpm dev`.
 */
async function servicePorts(): Promise<{ ports: number[]; env: Record<string, string> }> {
  const ports = await Promise.all([...services, 'board'].map(() => freePort()));
  const env = Object.fromEntries(
    [...services.map((service) => portVariableOf(service.name)), 'BOARD_PORT'].map((variable, i) => [
      variable,
      String(ports[i]),
    ]),
  );
  return { ports, env };
}

/** What `GET /healthz` on `port` answers, or undefined while nothing does. */
async function healthz(port: number): Promise<{ status?: string; instance?: string } | undefined> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1_000) });
    return res.ok ? ((await res.json()) as { status?: string; instance?: string }) : undefined;
  } catch {
    return undefined;
  }
}

/** Rejects once `dev` exits, with its output: to race against a wait for something it should do first. */
function exitsEarly(dev: DevRun): Promise<never> {
  const early = dev.exit(45_000).then((code) => {
    throw new Error(
      `pnpm dev exited early with code ${code}\n${dev.output().stdout}\n${dev.output().stderr}`,
    );
  });
  early.catch(() => {});
  return early;
}

/** Resolves once `dev` prints its banner; rejects, with its output, if it exits first. */
async function untilBanner(dev: DevRun): Promise<void> {
  await Promise.race([
    waitFor(() => dev.output().stdout.includes('all services and the board are up'), {
      timeoutMs: 45_000,
      intervalMs: 200,
      what: 'the banner',
    }),
    exitsEarly(dev),
  ]);
}

/** The PIDs of the processes `parent` started, by the directory each runs in. */
function childrenByDirectory(parent: number): Map<string, number> {
  const found = new Map<string, number>();
  for (const pid of readdirSync('/proc').filter((entry) => /^\d+$/.test(entry))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // The parent PID is the 2nd field after the command, which is in parentheses and may hold spaces.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === parent) found.set(readlinkSync(`/proc/${pid}/cwd`), Number(pid));
    } catch {
      // The process ended meanwhile.
    }
  }
  return found;
}

describe('pnpm dev', () => {
  it(
    'starts its own redis-server when none answers, and stops everything on Ctrl-C',
    { timeout: 60_000 },
    async () => {
      const redisPort = await freePort();
      const { ports: servicePortList, env } = await servicePorts();
      redisPorts.push(redisPort);
      const dev = startDev({ REDIS_URL: `redis://127.0.0.1:${redisPort}`, ...env });

      await untilBanner(dev);
      // The banner came once each port answered as the instance this run started.
      const answers = await Promise.all(servicePortList.map(healthz));
      expect(answers.map((answer) => answer?.instance)).toEqual(
        [...services.map((service) => service.name), 'board'].map((name) => `dev-${dev.child.pid}-${name}`),
      );
      expect(dev.output().stdout).toMatch(
        new RegExp(`board +http://localhost:${servicePortList.at(-1)}/ +\\(read-only: set BOARD_TOKEN`),
      );
      expect(await canConnect(redisPort, '127.0.0.1')).toBe(true);

      // Ctrl-C in a terminal: SIGINT to the whole foreground process group.
      process.kill(-dev.child.pid!, 'SIGINT');
      const code = await dev.exit(20_000);

      expect(code, dev.output().stderr).toBe(0);
      expect(dev.output().stdout).not.toMatch(/shutdown timed out|did not stop/);
      expect(dev.output().stdout).toContain(
        `stopping the redis-server this run started on 127.0.0.1:${redisPort}`,
      );
      for (const port of [redisPort, ...servicePortList]) {
        expect(await canConnect(port, '127.0.0.1'), `port ${port} still accepts connections`).toBe(false);
      }
    },
  );

  it(
    'with REDIS_CLUSTER=true and no Redis, starts a Redis Cluster of three masters, carries an order through it, and stops it all on Ctrl-C',
    { timeout: 90_000 },
    async () => {
      const { ports, env } = await servicePorts();
      const dev = startDev({
        REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
        REDIS_CLUSTER: 'true',
        ...env,
      });

      await untilBanner(dev);
      const nodes =
        /started a Redis Cluster of three masters on 127\.0\.0\.1 ports ([\d, ]+) for this session/.exec(
          dev.output().stdout,
        );
      expect(nodes, dev.output().stdout).not.toBeNull();
      const nodePorts = nodes![1]!.split(', ').map(Number);
      redisPorts.push(...nodePorts);
      expect(nodePorts).toHaveLength(3);
      const orderPort = ports[services.findIndex((service) => service.name === 'order-service')]!;
      const notificationPort =
        ports[services.findIndex((service) => service.name === 'notification-service')]!;
      // As the banner says: a token from `pnpm token`, signed with the secret pnpm dev made or found.
      expect(dev.output().stdout).toContain('TOKEN=$(pnpm -s token u1)');
      const place = (headers: Record<string, string>) =>
        fetch(`http://127.0.0.1:${orderPort}/orders`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...headers },
          body: JSON.stringify({ productId: 'p', price: 5 }),
        });
      expect((await place({})).status).toBe(401);
      const { stdout: token } = await promisify(execFile)(
        process.execPath,
        ['--import', 'tsx', 'scripts/token.ts', 'dev-cluster'],
        { cwd: ROOT, env: { ...process.env, AUTH_SECRET: '' } },
      );
      const authorization = `Bearer ${token.trim()}`;
      expect((await place({ authorization })).status).toBe(202);
      await waitFor(
        async () => {
          const res = await fetch(`http://127.0.0.1:${notificationPort}/notifications`, {
            headers: { authorization },
          });
          const { notifications } = (await res.json()) as { notifications: unknown[] };
          return notifications.length === 2;
        },
        { timeoutMs: 15_000, what: 'mail and SMS through the cluster' },
      );

      process.kill(-dev.child.pid!, 'SIGINT');
      expect(await dev.exit(20_000), dev.output().stderr).toBe(0);
      expect(dev.output().stdout).toContain(
        `stopping the Redis Cluster this run started on 127.0.0.1 ports ${nodes![1]}`,
      );
      for (const port of [...nodePorts, ...ports]) {
        expect(await canConnect(port, '127.0.0.1'), `port ${port} still accepts connections`).toBe(false);
      }
    },
  );

  it(
    'reports in one line a service that is killed, stops the others, and stops the Redis it started',
    { timeout: 60_000 },
    async () => {
      const redisPort = await freePort();
      const { ports, env } = await servicePorts();
      redisPorts.push(redisPort);
      const dev = startDev({ REDIS_URL: `redis://127.0.0.1:${redisPort}`, ...env });
      await untilBanner(dev);
      const payment = childrenByDirectory(dev.child.pid!).get(join(ROOT, 'packages', 'payment-service'));
      expect(payment, 'the payment-service process').toBeDefined();

      process.kill(payment!, 'SIGKILL');
      const code = await dev.exit(20_000);

      expect(code).toBe(1);
      const { stdout, stderr } = dev.output();
      expect(stderr.split('\n').filter((line) => line.startsWith('pnpm dev:'))).toEqual([
        'pnpm dev: payment-service was killed by SIGKILL; stopping the others',
      ]);
      expect(stdout).toContain(`stopping the redis-server this run started on 127.0.0.1:${redisPort}`);
      for (const port of [redisPort, ...ports]) {
        expect(await canConnect(port, '127.0.0.1'), `port ${port} still accepts connections`).toBe(false);
      }
    },
  );

  it(
    'stops everything when its output goes away (pnpm dev | head), leaving no service running',
    { timeout: 60_000 },
    async () => {
      const redisPort = await freePort();
      const { ports, env } = await servicePorts();
      redisPorts.push(redisPort);
      const dev = startDev({ REDIS_URL: `redis://127.0.0.1:${redisPort}`, ...env, LOG_LEVEL: 'info' });
      await untilBanner(dev);

      // The reader goes, as `head` does once it has its lines; the next access line meets EPIPE.
      dev.child.stdout!.destroy();
      await fetch(`http://127.0.0.1:${ports[0]}/healthz`);
      const code = await dev.exit(20_000);

      expect(code).toBe(0);
      expect(dev.output().stderr).not.toMatch(/EPIPE|Unhandled/);
      for (const port of [redisPort, ...ports]) {
        expect(await canConnect(port, '127.0.0.1'), `port ${port} still accepts connections`).toBe(false);
      }
    },
  );

  it(
    'reports in one line, with its exit code, a service that cannot start, and shows no banner',
    { timeout: 60_000 },
    async () => {
      const redisPort = await freePort();
      redisPorts.push(redisPort);
      // Every consumer (order-service too, for its read model) refuses it at start, so whichever
      // exits first is reported, and only it.
      const dev = startDev({
        REDIS_URL: `redis://127.0.0.1:${redisPort}`,
        ...(await servicePorts()).env,
        CLAIM_IDLE_MS: 'soon',
      });

      const code = await dev.exit(30_000);

      expect(code).toBe(1);
      const { stdout, stderr } = dev.output();
      const reports = stderr.split('\n').filter((line) => line.startsWith('pnpm dev:'));
      expect(reports, stderr).toHaveLength(1);
      expect(reports[0]).toMatch(
        /^pnpm dev: (order|payment|notification)-service exited with code 1; stopping the others$/,
      );
      expect(stderr).toContain('CLAIM_IDLE_MS');
      expect(stdout).not.toContain('all services and the board are up');
    },
  );

  it(
    'refuses, in one line and before starting anything, two services on one port',
    { timeout: 60_000 },
    async () => {
      const port = String(await freePort());
      const redisPort = await freePort();
      redisPorts.push(redisPort);
      const dev = startDev({
        REDIS_URL: `redis://127.0.0.1:${redisPort}`,
        ORDER_PORT: port,
        PAYMENT_PORT: port,
      });

      const code = await dev.exit(10_000);

      expect(code).toBe(1);
      expect(dev.output().stderr).toBe(
        `pnpm dev: ORDER_PORT and PAYMENT_PORT are both ${port}: each service needs a port of its own\n`,
      );
      expect(await canConnect(redisPort, '127.0.0.1')).toBe(false);
    },
  );

  it(
    'refuses, in one line and before starting anything, a port another program holds (a second pnpm dev)',
    { timeout: 60_000 },
    async () => {
      const holder = createServer();
      await new Promise<void>((resolve) => holder.listen(0, resolve));
      const held = (holder.address() as AddressInfo).port;
      const redisPort = await freePort();
      redisPorts.push(redisPort);
      try {
        const dev = startDev({
          REDIS_URL: `redis://127.0.0.1:${redisPort}`,
          ORDER_PORT: String(await freePort()),
          PAYMENT_PORT: String(held),
          NOTIFICATION_PORT: String(await freePort()),
        });

        const code = await dev.exit(10_000);

        expect(code).toBe(1);
        const { stdout, stderr } = dev.output();
        expect(stderr).toBe(
          `pnpm dev: port ${held} (PAYMENT_PORT, payment-service) is taken, by another \`pnpm dev\` or another program: stop it, or set PAYMENT_PORT to a free port\n`,
        );
        expect(stdout).not.toContain('all services and the board are up');
        expect(await canConnect(redisPort, '127.0.0.1')).toBe(false);
      } finally {
        holder.close();
      }
    },
  );

  it(
    'says in one line to put a password in REDIS_URL when the Redis there wants one',
    { timeout: 60_000 },
    async () => {
      const locked = await startRedisServer({ args: ['--requirepass', 'secret'] });
      try {
        const dev = startDev({ REDIS_URL: locked.url });

        const code = await dev.exit(10_000);

        expect(code).toBe(1);
        expect(dev.output().stderr).toMatch(/wants a password: put a user and password in REDIS_URL/);
      } finally {
        await locked.stop();
      }
    },
  );

  it(
    'says in one line how to get Redis when none answers and no redis-server is on PATH',
    { timeout: 60_000 },
    async () => {
      // Not the directory of node itself: on many systems that is /usr/bin, next to redis-server.
      const bin = mkdtempSync(join(tmpdir(), 'dev-path-'));
      tempDirs.push(bin);
      symlinkSync(process.execPath, join(bin, 'node'));
      const dev = startDev({ REDIS_URL: `redis://127.0.0.1:${await freePort()}`, PATH: bin });

      const code = await dev.exit(10_000);

      expect(code).not.toBe(0);
      const { stderr } = dev.output();
      const line = stderr.split('\n').find((l) => l.includes('docker compose'));
      expect(line, stderr).toBeDefined();
      expect(line).toContain('redis-server');
    },
  );
});
