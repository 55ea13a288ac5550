import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { stagesOf, type Stage } from '../harness/dockerfile.ts';
import { startRedisServer } from '../harness/redis-server.ts';
import { portVariableOf, services } from '../services.ts';

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

/** Each application service and the port it listens on: the registry's. */
const appServices = services;

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
  it('defines Redis, the services of the registry (services.ts) and Prometheus, and nothing else', () => {
    expect(Object.keys(compose.services).sort()).toEqual(
      ['redis', 'prometheus', ...appServices.map((s) => s.name)].sort(),
    );
  });

  it("runs Prometheus on the repository's scrape config and rules, which scrape each service of the registry at its port", () => {
    const prometheus = service('prometheus');
    expect(prometheus.volumes).toContain('./prometheus:/etc/prometheus:ro');
    expect(prometheus.command).toContain('--config.file=/etc/prometheus/prometheus.yml');
    expect(prometheus.ports).toEqual(['127.0.0.1:${PROMETHEUS_PORT:-9090}:9090']);
    const config = parse(readFileSync(new URL('prometheus/prometheus.yml', repoRoot), 'utf8')) as {
      rule_files: string[];
      scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
    };
    expect(config.rule_files).toEqual(['alerts.yml']);
    expect(
      config.scrape_configs.map(({ job_name, static_configs }) => [job_name, static_configs[0]!.targets]),
    ).toEqual(appServices.map(({ name, port }) => [name, [`${name}:${port}`]]));
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
    for (const { name, port } of appServices) {
      const svc = service(name);
      // The variable `pnpm dev` reads too: PAYMENT_PORT moves payment-service in both.
      expect(svc.ports, name).toEqual([`127.0.0.1:\${${portVariableOf(name)}:-${port}}:${port}`]);
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
    const consumers = appServices.filter((s) => s.consumes.length > 0).map((s) => s.name);
    expect(consumers.length).toBeGreaterThan(0);
    for (const name of consumers) {
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

  it('runs each service from its bundle with node as the main process, so SIGTERM reaches it', () => {
    for (const { name } of appServices) {
      const svc = service(name);
      // Exec form, node itself: no shell, no pnpm, no tsx in between.
      expect(svc.command, name).toEqual(['node', '--enable-source-maps', `dist/${name}.mjs`]);
      // The bundle path is relative to the image's WORKDIR, which no service moves.
      expect(svc.working_dir, name).toBeUndefined();
    }
  });

  it('builds every service from the Dockerfile', () => {
    for (const { name } of appServices) {
      expect(service(name).build, name).toBe('.');
    }
  });
});

describe('Dockerfile', () => {
  const stages = stagesOf(dockerfile);
  const buildStage = stages.find((stage) => stage.name === 'build');
  const finalStage = stages.at(-1)!;
  const argsOf = (stage: Stage | undefined, keyword: string) =>
    (stage?.instructions ?? []).filter((i) => i.keyword === keyword).map((i) => i.args);
  const indexOf = (stage: Stage | undefined, keyword: string, args: string) =>
    (stage?.instructions ?? []).findIndex((i) => i.keyword === keyword && i.args === args);

  it('has two stages on node:20-slim: `build`, then the image that runs', () => {
    expect(stages.map((stage) => [stage.from, stage.name])).toEqual([
      ['node:20-slim', 'build'],
      ['node:20-slim', undefined],
    ]);
  });

  it('installs in the build stage from the lockfile alone, then bundles with pnpm build', () => {
    // The pinned pnpm is the one root package.json declares (corepack is not used).
    const packageManager = readPackageJson('').packageManager;
    expect(packageManager).toMatch(/^pnpm@\d+\.\d+\.\d+$/);
    expect(argsOf(buildStage, 'RUN')[0]).toBe(`npm i -g ${packageManager}`);
    expect(dockerfile.match(/pnpm@[\w.-]+/g)).toEqual([packageManager]);
    expect(readPackageJson('').scripts?.build).toBeDefined();

    // In this order: what `pnpm fetch` reads, the fetch (a layer that only a dependency change
    // rebuilds), the whole context, the install from the fetched store, the bundles.
    const steps = [
      ['COPY', 'pnpm-lock.yaml pnpm-workspace.yaml ./'],
      ['RUN', 'pnpm fetch'],
      ['COPY', '. .'],
      ['RUN', 'pnpm install --offline --frozen-lockfile'],
      ['RUN', 'pnpm build'],
    ] as const;
    const at = steps.map(([keyword, args]) => indexOf(buildStage, keyword, args));
    expect(
      at.every((i) => i >= 0),
      JSON.stringify(steps),
    ).toBe(true);
    expect([...at].sort((a, b) => a - b)).toEqual(at);

    // The build needs the devDependencies (esbuild, tsx): nothing asks for production ones only.
    expect(argsOf(buildStage, 'ENV').join('\n')).not.toMatch(/NODE_ENV/);
    expect(argsOf(buildStage, 'RUN').join('\n')).not.toMatch(/--prod\b|-P\b/);
  });

  it('names no package or service, so a new one needs no edit', () => {
    const packages = readdirSync(new URL('packages/', repoRoot), { withFileTypes: true })
      .filter((entry) => entry.isDirectory())
      .map((entry) => entry.name);
    expect(packages).toEqual(expect.arrayContaining(appServices.map((s) => s.name)));

    const instructions = stages.flatMap((stage) => stage.instructions);
    const copies = instructions.filter((i) => i.keyword === 'COPY').map((i) => i.args);
    expect(copies.filter((args) => /\bpackages\//.test(args))).toEqual([]);
    // Only the default CMD names one service, the one started when no command is given.
    const named = instructions.filter(
      (i) => i.keyword !== 'CMD' && packages.some((pkg) => i.args.includes(pkg)),
    );
    expect(named).toEqual([]);
  });

  it('ships only the bundles, from the build stage, in an image that runs as a non-root user in production mode', () => {
    expect(finalStage.from).toBe('node:20-slim');
    const keywords = finalStage.instructions.map((i) => i.keyword);
    // No RUN: nothing is installed, and the image holds no pnpm, npm install or build.
    expect(keywords).not.toContain('RUN');
    expect(keywords).not.toContain('ADD');

    // One COPY: the build stage's dist/ (where `pnpm build` writes), into WORKDIR/dist/.
    const buildWorkdir = argsOf(buildStage, 'WORKDIR').at(-1);
    expect(argsOf(finalStage, 'COPY')).toEqual([`--from=build ${buildWorkdir}/dist/ dist/`]);
    expect(argsOf(finalStage, 'WORKDIR')).toEqual(['/app']);
    expect(keywords.indexOf('WORKDIR')).toBeLessThan(keywords.indexOf('COPY'));

    const finalText = finalStage.instructions.map((i) => `${i.keyword} ${i.args}`).join('\n');
    expect(finalText).not.toMatch(/pnpm|tsx|node_modules|esbuild|vitest|devDependencies/);

    expect(argsOf(finalStage, 'USER')).toEqual(['node']);
    expect(argsOf(finalStage, 'ENV')).toContain('NODE_ENV=production');
    // No EXPOSE: the one image runs any service, on the PORT compose gives it.
    expect(keywords).not.toContain('EXPOSE');
  });

  it('runs a bundle that `pnpm build` makes, in CMD and in each compose service', () => {
    const cmds = argsOf(finalStage, 'CMD');
    expect(cmds).toHaveLength(1);
    // Exec form (JSON): node is PID 1 and gets SIGTERM from `docker stop`.
    const cmd = JSON.parse(cmds[0]!) as string[];
    expect(cmd).toEqual(service('order-service').command);

    const outdir = mkdtempSync(join(tmpdir(), 'bundles-'));
    try {
      execFileSync(process.execPath, ['--import', 'tsx', 'scripts/build.ts', '--outdir', outdir], {
        cwd: fileURLToPath(repoRoot),
        stdio: 'pipe',
      });
      const built = readdirSync(outdir);
      for (const command of [cmd, ...appServices.map(({ name }) => service(name).command ?? [])]) {
        const bundle = command.at(-1)!;
        expect(bundle, command.join(' ')).toMatch(/^dist\/[^/]+\.mjs$/);
        expect(built, command.join(' ')).toContain(bundle.slice('dist/'.length));
      }
    } finally {
      rmSync(outdir, { recursive: true, force: true });
    }
  });
});
