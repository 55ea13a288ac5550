import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { startRedisServer } from '../harness/redis-server.ts';

/** The parts of the Compose file format these tests look at. */
interface Healthcheck {
  test?: string[] | string;
  interval?: string;
  timeout?: string;
  retries?: number;
  start_period?: string;
}

interface ComposeService {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  command?: string[];
  working_dir?: string;
  environment?: Record<string, string | number>;
  ports?: string[];
  volumes?: string[];
  depends_on?: Record<string, { condition?: string }>;
  healthcheck?: Healthcheck;
  restart?: string;
  stop_signal?: string;
  stop_grace_period?: string;
}

interface ComposeFile {
  services: Record<string, ComposeService>;
  volumes?: Record<string, unknown>;
}

interface PackageJson {
  packageManager?: string;
  scripts?: Record<string, string>;
}

const repoRoot = new URL('../', import.meta.url);
const compose = parse(readFileSync(new URL('docker-compose.yml', repoRoot), 'utf8')) as ComposeFile;
const dockerfile = readFileSync(new URL('Dockerfile', repoRoot), 'utf8');

function readPackageJson(dir: string): PackageJson {
  return JSON.parse(readFileSync(new URL(`${dir}package.json`, repoRoot), 'utf8')) as PackageJson;
}

/** Each application service and the port it listens on. */
const appServices = [
  { name: 'order-service', port: 8080 },
  { name: 'payment-service', port: 8081 },
  { name: 'notification-service', port: 8082 },
] as const;

function service(name: string): ComposeService {
  const found = compose.services[name];
  if (!found) throw new Error(`docker-compose.yml has no service "${name}"`);
  return found;
}

/** True when `flag` is directly followed by `value` in an exec-form command. */
function hasOption(command: string[], flag: string, value: string): boolean {
  const i = command.indexOf(flag);
  return i >= 0 && command[i + 1] === value;
}

describe('docker-compose.yml', () => {
  it('defines Redis and the three services, and nothing else', () => {
    expect(Object.keys(compose.services).sort()).toEqual([
      'notification-service',
      'order-service',
      'payment-service',
      'redis',
    ]);
  });

  it('runs Redis with AOF persistence and a healthcheck that pings as the admin user', () => {
    const redis = service('redis');
    expect(redis.image).toBe('redis:7-alpine');

    const command = redis.command;
    expect(Array.isArray(command)).toBe(true);
    const args = command as string[];
    expect(args[0]).toBe('redis-server');
    expect(hasOption(args, '--appendonly', 'yes')).toBe(true);
    expect(hasOption(args, '--appendfsync', 'always')).toBe(true);

    // /data (where the AOF lives) is a named volume, declared at the top level.
    const dataVolume = (redis.volumes ?? []).find((v) => v.endsWith(':/data'));
    expect(dataVolume).toBeDefined();
    const volumeName = dataVolume!.split(':')[0]!;
    expect(volumeName).toMatch(/^[a-z][\w-]*$/);
    expect(Object.keys(compose.volumes ?? {})).toContain(volumeName);

    // On this machine only, and movable off a local Redis's 6379.
    expect(redis.ports).toEqual(['127.0.0.1:${REDIS_HOST_PORT:-6379}:6379']);

    // redis-cli exits 0 whatever Redis answers (NOAUTH included): the check must look for PONG.
    const healthcheck = redis.healthcheck;
    const [kind, script] = healthcheck?.test as string[];
    expect(kind).toBe('CMD-SHELL');
    expect(script).toMatch(/^redis-cli --user admin --pass \S+ --no-auth-warning ping \| grep -qx PONG$/);
    expect(healthcheck?.interval).toMatch(/^\d+s$/);
    expect(healthcheck?.timeout).toMatch(/^\d+s$/);
    expect(healthcheck?.start_period).toMatch(/^\d+s$/);
    expect(healthcheck?.retries).toBeGreaterThan(0);
  });

  it('starts each service only once Redis is healthy', () => {
    for (const { name } of appServices) {
      expect(service(name).depends_on, name).toEqual({ redis: { condition: 'service_healthy' } });
    }
  });

  it('publishes each service on 127.0.0.1 only, on a host port its variable can move, with REDIS_URL pointing at the redis service', () => {
    const variables: Record<string, string> = {
      'order-service': 'ORDER_PORT',
      'payment-service': 'PAYMENT_PORT',
      'notification-service': 'NOTIFICATION_PORT',
    };
    for (const { name, port } of appServices) {
      const svc = service(name);
      expect(svc.ports, name).toEqual([`127.0.0.1:\${${variables[name]}:-${port}}:${port}`]);
      const url = new URL(String(svc.environment?.REDIS_URL));
      expect(`${url.protocol}//${url.host}${url.pathname}`, name).toBe('redis://redis:6379');
      expect(String(svc.environment?.PORT), name).toBe(String(port));
    }
  });

  it('loads the ACL file from the repository, read-only, and logs each service in as its own user', () => {
    const redis = service('redis');
    const args = redis.command ?? [];
    const aclPath = args[args.indexOf('--aclfile') + 1];
    expect(args).toContain('--aclfile');
    expect(aclPath).toMatch(/^\/.+\.acl$/);
    expect(redis.volumes).toContain(`./redis/users.acl:${aclPath}:ro`);
    expect(existsSync(new URL('redis/users.acl', repoRoot))).toBe(true);

    for (const { name } of appServices) {
      const url = new URL(String(service(name).environment?.REDIS_URL));
      expect(url.username, name).toBe(name);
      expect(url.password, name).not.toBe('');
    }
  });

  it('works against a redis-server loading redis/users.acl: healthcheck, and each service URL', async () => {
    const aclFile = fileURLToPath(new URL('redis/users.acl', repoRoot));
    const server = await startRedisServer({ args: ['--aclfile', aclFile] });
    const clients: Redis[] = [];
    try {
      // The healthcheck as the container runs it, pointed at this server instead of 6379.
      const [, script] = service('redis').healthcheck?.test as string[];
      const healthcheck = (command: string) =>
        execFileSync('sh', ['-c', command.replace(/^redis-cli /, `redis-cli -p ${server.port} `)], {
          stdio: 'pipe',
        });
      expect(() => healthcheck(script!)).not.toThrow();
      expect(() => healthcheck(script!.replace(/--pass \S+/, '--pass wrong'))).toThrow();

      for (const { name } of appServices) {
        const url = new URL(String(service(name).environment?.REDIS_URL));
        url.host = `127.0.0.1:${server.port}`;
        const client = new Redis(url.href, { maxRetriesPerRequest: 0, retryStrategy: () => null });
        clients.push(client);
        // Logged in as the user the URL names (the default user is off), with its password.
        expect(await client.ping(), name).toBe('PONG');
      }
    } finally {
      for (const client of clients) client.disconnect();
      await server.stop();
    }
  });

  it('leaves CONSUMER_NAME unset so scaled consumers get unique names', () => {
    for (const name of ['payment-service', 'notification-service']) {
      expect(Object.keys(service(name).environment ?? {}), name).not.toContain('CONSUMER_NAME');
    }
  });

  it('checks each service through its /readyz endpoint, as a load balancer should route', () => {
    for (const { name, port } of appServices) {
      const healthcheck = service(name).healthcheck;
      const test = healthcheck?.test;
      expect(Array.isArray(test), name).toBe(true);
      const [kind, binary, flag, script] = test as string[];
      expect([kind, binary, flag], name).toEqual(['CMD', 'node', '-e']);
      expect(script, name).toContain(`fetch('http://127.0.0.1:${port}/readyz')`);
      expect(script, name).toContain('process.exit(1)');
      expect(healthcheck?.retries, name).toBeGreaterThan(0);
      expect(healthcheck?.start_period, name).toMatch(/^\d+s$/);
    }
  });

  it('restarts services unless stopped and stops them with SIGTERM and a grace period', () => {
    for (const { name } of appServices) {
      const svc = service(name);
      expect(svc.restart, name).toBe('unless-stopped');
      expect(svc.stop_signal, name).toBe('SIGTERM');
      expect(svc.stop_grace_period, name).toMatch(/^\d+s$/);
    }
  });

  it("runs each service's start script with node as the main process, so SIGTERM reaches it", () => {
    for (const { name } of appServices) {
      const dir = `packages/${name}/`;
      expect(existsSync(new URL(dir, repoRoot)), dir).toBe(true);
      expect(service(name).working_dir, name).toBe(`/app/${dir.slice(0, -1)}`);
      expect(service(name).command?.join(' '), name).toBe(readPackageJson(dir).scripts?.start);
    }
  });

  it('builds every service from the Dockerfile, which installs from the lockfile', () => {
    for (const { name } of appServices) {
      expect(service(name).build, name).toBe('.');
    }

    expect(dockerfile).toMatch(/^FROM node:20-slim\b/m);
    expect(dockerfile).toMatch(/^RUN pnpm install --frozen-lockfile --prod=false$/m);
    expect(dockerfile).toMatch(/^USER node$/m);
    expect(dockerfile).toMatch(/^ENV NODE_ENV=production$/m);

    // The pinned pnpm is the one root package.json declares (corepack is not used).
    const packageManager = readPackageJson('').packageManager;
    expect(packageManager).toMatch(/^pnpm@\d+\.\d+\.\d+$/);
    expect(dockerfile).toContain(`npm i -g ${packageManager}`);
    expect(dockerfile.match(/pnpm@[\w.-]+/g)).toEqual([packageManager]);
  });

  it('copies the lockfile and every workspace manifest before installing, and sources after', () => {
    const lines = dockerfile.split('\n');
    const installAt = lines.findIndex((l) => l.startsWith('RUN pnpm install'));
    const lineOf = (pattern: RegExp) => lines.findIndex((l) => pattern.test(l));
    expect(installAt).toBeGreaterThan(0);

    for (const file of ['package.json', 'pnpm-lock.yaml', 'pnpm-workspace.yaml']) {
      const at = lines.findIndex((l) => l.startsWith('COPY ') && l.split(/\s+/).includes(file));
      expect(at, file).toBeGreaterThanOrEqual(0);
      expect(at, file).toBeLessThan(installAt);
    }

    const packages = readdirSync(new URL('packages/', repoRoot), { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name);
    expect(packages).toEqual(expect.arrayContaining(appServices.map((s) => s.name)));
    for (const pkg of packages) {
      const manifestPattern = new RegExp(`^COPY .*\\bpackages/${pkg}/package\\.json\\b`);
      const at = lineOf(manifestPattern);
      expect(at, pkg).toBeGreaterThanOrEqual(0);
      expect(at, pkg).toBeLessThan(installAt);
    }

    expect(lineOf(/^COPY (--chown=\S+ )?\. \.$/)).toBeGreaterThan(installAt);
  });
});
