import { execFile, spawn, type ChildProcess } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { sentLogKey } from '@msa/notification-service';
import { signToken } from '@msa/stream-kit/service';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, onTestFailed } from 'vitest';
import { parse } from 'yaml';
import { stagesOf, type Stage } from '../harness/dockerfile.ts';
import { answersHealthz, freePort } from '../harness/net.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { entryFields } from '../harness/streams.ts';
import { waitFor } from '../harness/wait.ts';

/*
 * The production image, run for real without a Docker engine. The build context is made as Docker
 * makes it (.dockerignore applied to this working copy); the Dockerfile's build stage is replayed
 * in it (its COPY, WORKDIR and RUN: `pnpm fetch`, `pnpm install --offline`, `pnpm build`); the final
 * stage's COPY takes the bundles into an empty app directory with no node_modules in it or above it.
 * The services are then started there the way docker-compose.yml starts them (its `command`, the
 * image's ENV and the service's `environment`), against a redis-server of this file's own that loads
 * redis/users.acl as compose's Redis does, so each logs in as its own user. Only the base image
 * (node:20-slim, here this machine's Node 20) and `USER node` are not reproduced.
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const run = promisify(execFile);

interface ComposeService {
  command?: string[];
  environment?: Record<string, string | number>;
  healthcheck?: { test?: string[] };
}
const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8')) as {
  services: Record<string, ComposeService>;
};
const appServices = ['order-service', 'payment-service', 'notification-service'] as const;
type AppService = (typeof appServices)[number];

/** What this test sets in the shell compose runs from: the variables compose requires (`${X:?...}`). */
const COMPOSE_SHELL: Record<string, string> = {
  AUTH_SECRET: 'the-image-test-secret-of-32-characters-or-more',
};

/**
 * A value of compose's `environment` as compose interpolates it from `COMPOSE_SHELL`: `${X:-default}`
 * is X or `default`, `${X:?message}` is X (compose refuses to start without it).
 */
function composeValue(value: string | number): string {
  return String(value).replace(
    /\$\{(\w+):([-?])((?:\$\([^)]*\)|[^}])*)\}/g,
    (_, name: string, kind: string, rest: string) => {
      const set = COMPOSE_SHELL[name];
      if (set !== undefined) return set;
      if (kind === '-') return rest;
      throw new Error(`compose would refuse to start: ${name} is unset (${rest})`);
    },
  );
}

function composeService(name: string): ComposeService {
  const found = compose.services[name];
  if (!found) throw new Error(`docker-compose.yml has no service "${name}"`);
  return found;
}

// ---------------------------------------------------------------------------------------------
// The build context: .dockerignore as Docker reads it. Patterns are paths relative to the context
// (a leading or trailing `/` is dropped), `*` and `?` stay within a path segment, `**` spans any
// number of them, `!` lets back in what an earlier pattern left out, and the last pattern that
// matches a path or one of its parent directories decides.

interface IgnoreRule {
  pattern: string;
  letIn: boolean;
  regex: RegExp;
}

function globToRegex(pattern: string): RegExp {
  let source = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (pattern.startsWith('**/', i)) {
      source += '(?:.*/)?';
      i += 2;
    } else if (pattern.startsWith('**', i)) {
      source += '.*';
      i += 1;
    } else if (c === '*') source += '[^/]*';
    else if (c === '?') source += '[^/]';
    else source += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${source}$`);
}

function readDockerignore(text: string): IgnoreRule[] {
  return text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const letIn = line.startsWith('!');
      const pattern = posix.normalize((letIn ? line.slice(1) : line).trim()).replace(/^\/+|\/+$/g, '');
      return { pattern, letIn, regex: globToRegex(pattern) };
    });
}

function leftOut(rules: IgnoreRule[], path: string): boolean {
  const segments = path.split('/');
  const selfAndParents = segments.map((_, i) => segments.slice(0, i + 1).join('/'));
  let out = false;
  for (const rule of rules) {
    if (selfAndParents.some((p) => rule.regex.test(p))) out = !rule.letIn;
  }
  return out;
}

/** True when a `!` rule could let in something below the directory `dir`. */
function mayLetInBelow(rules: IgnoreRule[], dir: string): boolean {
  const dirSegments = dir.split('/');
  return rules.some((rule) => {
    if (!rule.letIn) return false;
    const segments = rule.pattern.split('/');
    if (segments.includes('**')) return true;
    return (
      segments.length > dirSegments.length &&
      dirSegments.every((segment, i) => globToRegex(segments[i]!).test(segment))
    );
  });
}

/** The files of the working copy that `docker build .` sends, as paths relative to ROOT. */
function buildContext(): string[] {
  const rules = readDockerignore(readFileSync(join(ROOT, '.dockerignore'), 'utf8'));
  const files: string[] = [];
  const walk = (dir: string) => {
    for (const entry of readdirSync(join(ROOT, dir), { withFileTypes: true })) {
      const path = dir === '' ? entry.name : `${dir}/${entry.name}`;
      if (entry.isDirectory()) {
        if (!leftOut(rules, path) || mayLetInBelow(rules, path)) walk(path);
      } else if (!leftOut(rules, path)) {
        files.push(path);
      }
    }
  };
  walk('');
  return files.sort();
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile's stages, and a replay of the instructions this Dockerfile uses.

/** A stage's file system: container paths live under `root`. */
interface StageFs {
  root: string;
  workdir: string;
  env: Record<string, string>;
  cmd?: string[];
}

async function replay(
  stage: Stage,
  fs: StageFs,
  context: string,
  stages: Map<string, StageFs>,
): Promise<void> {
  const inStage = (path: string, base: string) =>
    join(fs.root, path.startsWith('/') ? path : join(base, path));
  for (const { keyword, args } of stage.instructions) {
    switch (keyword) {
      case 'WORKDIR':
        fs.workdir = posix.resolve(fs.workdir, args);
        mkdirSync(inStage(fs.workdir, '/'), { recursive: true });
        break;
      case 'ENV': {
        const [, name = '', value = ''] = /^(\w+)=(\S*)$/.exec(args) ?? [];
        expect(name, `ENV ${args}`).not.toBe('');
        fs.env[name] = value;
        break;
      }
      case 'COPY': {
        const words = args.split(/\s+/);
        const from = words.find((w) => w.startsWith('--from='))?.slice('--from='.length);
        const paths = words.filter((w) => !w.startsWith('--'));
        const destArg = paths.pop()!;
        const dest = inStage(destArg, fs.workdir);
        const source = from === undefined ? undefined : stages.get(from);
        if (from !== undefined && !source) throw new Error(`COPY --from=${from}: no such stage`);
        for (const path of paths) {
          const src = source ? join(source.root, path) : join(context, path);
          // A directory's contents go into dest; a file goes into dest/ when dest ends with / or
          // several sources share it.
          const intoDir = statSync(src).isFile() && (paths.length > 1 || destArg.endsWith('/'));
          cpSync(src, intoDir ? join(dest, posix.basename(path)) : dest, { recursive: true });
        }
        break;
      }
      case 'RUN':
        // pnpm itself is installed here already, at the version the compose test pins.
        if (/^npm i(nstall)? -g pnpm@/.test(args)) break;
        await run('sh', ['-c', args], {
          cwd: inStage(fs.workdir, '/'),
          env: { ...process.env, ...fs.env },
          maxBuffer: 64 * 1024 * 1024,
        }).catch((err: { stdout?: string; stderr?: string; message: string }) => {
          throw new Error(`RUN ${args} failed: ${err.message}\n${err.stdout ?? ''}${err.stderr ?? ''}`);
        });
        break;
      case 'CMD':
        fs.cmd = JSON.parse(args) as string[];
        break;
      case 'USER':
      case 'EXPOSE':
        break;
      default:
        throw new Error(`this test does not know how to replay ${keyword} ${args}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------

let scratch: string;
let context: string[];
let image: StageFs;
let appDir: string;
let redisServer: RedisServer | undefined;
let admin: Redis | undefined;

beforeAll(async () => {
  scratch = mkdtempSync(join(tmpdir(), 'image-'));
  context = buildContext();
  const contextDir = join(scratch, 'context');
  for (const file of context) {
    mkdirSync(dirname(join(contextDir, file)), { recursive: true });
    cpSync(join(ROOT, file), join(contextDir, file));
  }

  const stages = stagesOf(readFileSync(join(ROOT, 'Dockerfile'), 'utf8'));
  const named = new Map<string, StageFs>();
  let last: StageFs | undefined;
  for (const [i, stage] of stages.entries()) {
    const fs: StageFs = { root: join(scratch, `stage-${i}`), workdir: '/', env: {} };
    mkdirSync(fs.root);
    await replay(stage, fs, contextDir, named);
    named.set(String(i), fs);
    if (stage.name) named.set(stage.name, fs);
    last = fs;
  }
  image = last!;
  appDir = join(image.root, image.workdir);

  // As compose's Redis: the ACL file, each service its own user; this test reads as the admin its
  // health check uses.
  redisServer = await startRedisServer({ args: ['--aclfile', join(ROOT, 'redis/users.acl')] });
  const [, user, pass] =
    /--user (\S+) --pass (\S+)/.exec(composeService('redis').healthcheck?.test?.[1] ?? '') ?? [];
  admin = new Redis(redisServer.port, '127.0.0.1', { username: user!, password: pass! });
}, 120_000);

afterAll(async () => {
  admin?.disconnect();
  await redisServer?.stop();
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** A process started from the image, and everything it wrote. */
interface Started {
  name: string;
  port: number;
  child: ChildProcess;
  output: () => string;
}
const started = new Set<Started>();

beforeEach(() => {
  started.clear();
  // Runs after afterEach: the output is kept until the next test starts.
  onTestFailed(() => {
    for (const s of started) console.error(`--- ${s.name} output ---\n${s.output()}`);
  });
});

afterEach(async () => {
  // Whatever the test did or failed to do, no bundle outlives it.
  await Promise.all(
    [...started].map(async ({ child }) => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = exitOf(child);
        child.kill('SIGKILL');
        await exited;
      }
    }),
  );
});

function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/**
 * Starts `argv` in the image's WORKDIR as the container would: the image's ENV, then `service`'s
 * compose environment with its REDIS_URL pointed at this file's redis-server and a free PORT, and
 * nothing else from this process (no NODE_PATH, no NODE_OPTIONS). Resolves once /healthz answers.
 */
async function startFromImage(
  name: string,
  argv: string[],
  service: AppService,
  { without = [] }: { without?: string[] } = {},
): Promise<Started> {
  const port = await freePort();
  const redisUrl = new URL(String(composeService(service).environment?.REDIS_URL));
  redisUrl.host = `127.0.0.1:${redisServer!.port}`;
  const env = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    ...image.env,
    ...Object.fromEntries(
      Object.entries(composeService(service).environment ?? {})
        .filter(([k]) => !without.includes(k))
        .map(([k, v]) => [k, composeValue(v)]),
    ),
    REDIS_URL: redisUrl.href,
    PORT: String(port),
  };
  const [binary, ...args] = argv;
  // The image's `node` is Node 20; so is the one running this test.
  const child = spawn(binary === 'node' ? process.execPath : binary!, args, {
    cwd: appDir,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const s: Started = { name, port, child, output: () => output };
  started.add(s);
  await waitFor(
    async () => {
      if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}:\n${output}`);
      return answersHealthz(port);
    },
    { timeoutMs: 20_000, what: `${name} /healthz` },
  );
  return s;
}

function startService(service: AppService): Promise<Started> {
  return startFromImage(service, composeService(service).command ?? [], service);
}

/** The npm packages a source map lists sources of, e.g. `zod`, `@ioredis/commands`. */
function bundledPackages(sources: string[]): Set<string> {
  return new Set(
    sources.flatMap((source) => /.*node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(source)?.[1] ?? []),
  );
}

/** Every package named only in devDependencies, in the root or any workspace package. */
function devOnlyPackages(): string[] {
  const manifests = [
    'package.json',
    ...readdirSync(join(ROOT, 'packages')).map((p) => `packages/${p}/package.json`),
  ]
    .filter((path) => existsSync(join(ROOT, path)))
    .map(
      (path) =>
        JSON.parse(readFileSync(join(ROOT, path), 'utf8')) as {
          dependencies?: Record<string, string>;
          devDependencies?: Record<string, string>;
        },
    );
  const runtime = new Set(manifests.flatMap((m) => Object.keys(m.dependencies ?? {})));
  return [...new Set(manifests.flatMap((m) => Object.keys(m.devDependencies ?? {})))].filter(
    (n) => !runtime.has(n),
  );
}

describe('the production image, replayed without Docker', () => {
  it("is built from a context of the manifests, the packages' sources, the build script and the contracts order-service serves only", () => {
    const needed =
      /^(package\.json|pnpm-lock\.yaml|pnpm-workspace\.yaml|tsconfig\.json|scripts\/build\.ts|docs\/contracts\/(openapi|asyncapi)\.json|packages\/[^/]+\/(package\.json|src\/.+))$/;
    expect(context.filter((file) => !needed.test(file))).toEqual([]);
    expect(context).toEqual(expect.arrayContaining(['pnpm-lock.yaml', 'scripts/build.ts']));
    for (const pkg of readdirSync(join(ROOT, 'packages'))) {
      const src = join(ROOT, 'packages', pkg, 'src');
      const sources = readdirSync(src, { recursive: true })
        .map(String)
        .filter((file) => statSync(join(src, file)).isFile())
        .map((file) => `packages/${pkg}/src/${file}`);
      expect(context, pkg).toEqual(expect.arrayContaining([`packages/${pkg}/package.json`, ...sources]));
    }
  });

  it('holds one bundle per packages/*-service and per operator command (its src/main-<command>.ts), and no test, bench or dev-tool code', () => {
    const services = readdirSync(join(ROOT, 'packages')).filter((name) => name.endsWith('-service'));
    expect(services).toEqual(expect.arrayContaining([...appServices]));
    const commands = services.flatMap((name) =>
      readdirSync(join(ROOT, 'packages', name, 'src'))
        .map((file) => /^main-(.+)\.ts$/.exec(file)?.[1])
        .filter((command) => command !== undefined)
        .map((command) => `${name}-${command}`),
    );
    expect(commands).toContain('order-service-rebuild');
    const files = readdirSync(appDir, { recursive: true }).map(String).sort();
    expect(files).toEqual(
      [
        'dist',
        ...[...services, ...commands].flatMap((name) => [`dist/${name}.mjs`, `dist/${name}.mjs.map`]),
      ].sort(),
    );

    const devOnly = devOnlyPackages();
    expect(devOnly).toEqual(
      expect.arrayContaining(['vitest', 'autocannon', 'bullmq', 'esbuild', 'pino-pretty']),
    );
    for (const name of services) {
      const code = readFileSync(join(appDir, 'dist', `${name}.mjs`), 'utf8');
      expect(code, name).not.toMatch(/vitest|autocannon|bullmq|supertest|fast-check/);

      const { sources } = JSON.parse(readFileSync(join(appDir, 'dist', `${name}.mjs.map`), 'utf8')) as {
        sources: string[];
      };
      const ours = sources.filter((source) => !source.includes('node_modules/'));
      expect(ours.length, name).toBeGreaterThan(0);
      // The service's own src/ and stream-kit's (and the contracts order-service serves): no tests,
      // harness, scripts, bench.
      expect(
        ours.filter(
          (source) =>
            !/(^|\/)packages\/[^/]+\/src\//.test(source) &&
            !/(^|\/)docs\/contracts\/(openapi|asyncapi)\.json$/.test(source),
        ),
        name,
      ).toEqual([]);
      expect(
        [...bundledPackages(sources)].filter((pkg) => devOnly.includes(pkg) || pkg === 'tsx'),
        name,
      ).toEqual([]);
      expect([...bundledPackages(sources)], name).toEqual(
        expect.arrayContaining(['express', 'ioredis', 'pino', 'zod']),
      );
    }
  });

  it('runs the services from their bundles with no node_modules, as compose starts them: an order placed over HTTP is paid and notified by mail and SMS', async () => {
    for (let dir = appDir; ; dir = dirname(dir)) {
      expect(existsSync(join(dir, 'node_modules')), dir).toBe(false);
      if (dirname(dir) === dir) break;
    }
    const [order] = await Promise.all(appServices.map(startService));

    const userId = `image-${Date.now()}`;
    const place = (headers: Record<string, string>) =>
      fetch(`http://127.0.0.1:${order!.port}/orders`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ userId, productId: 'book-1', price: 1000 }),
      });
    // NODE_ENV=production, with compose's development secret: a token is needed, and one it signed does.
    expect((await place({})).status).toBe(401);
    const secret = COMPOSE_SHELL.AUTH_SECRET!;
    const response = await place({ authorization: `Bearer ${await signToken(secret, { userId })}` });
    expect(response.status).toBe(202);
    const { orderId } = (await response.json()) as { orderId: string };

    const payment = await waitFor(
      async () => (await entryFields(admin!, 'payment-events')).find((entry) => entry.orderId === orderId),
      { timeoutMs: 15_000, what: 'the payment event' },
    );
    expect(payment).toMatchObject({ type: 'payment-completed', orderId, userId, price: '1000' });

    const sent = await waitFor(
      async () => {
        const log = (await admin!.lrange(sentLogKey(userId), 0, -1)).map(
          (item) => JSON.parse(item) as { channel: string; event: string; orderId: string },
        );
        return log.length >= 2 && log;
      },
      { timeoutMs: 15_000, what: 'mail and SMS in the sent log' },
    );
    expect(
      sent
        .map(({ channel, event, orderId: id }) => ({ channel, event, id }))
        .sort((a, b) => a.channel.localeCompare(b.channel)),
    ).toEqual([
      { channel: 'mail', event: 'order-created', id: orderId },
      { channel: 'sms', event: 'payment-completed', id: orderId },
    ]);
  });

  it("refuses to start under the image's NODE_ENV=production without auth, naming the variable to set", async () => {
    for (const service of ['order-service', 'notification-service'] as const) {
      const failed = startFromImage(service, composeService(service).command ?? [], service, {
        without: ['AUTH_SECRET'],
      });
      await expect(failed).rejects.toThrow(
        /exited with 1:[\s\S]*AUTH_JWKS_URL: required with NODE_ENV=production/,
      );
    }
  });

  it("passes compose's health checks and stops with exit code 0 on SIGTERM, the image's default CMD too", async () => {
    const running = await Promise.all([
      startFromImage('CMD', image.cmd ?? [], 'order-service'),
      ...appServices.map(startService),
    ]);

    for (const s of running) {
      const service = s.name === 'CMD' ? 'order-service' : (s.name as AppService);
      const [kind, binary, flag, script] = composeService(service).healthcheck?.test ?? [];
      expect([kind, binary, flag]).toEqual(['CMD', 'node', '-e']);
      const pointed = script!.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${s.port}`);
      await expect(run(process.execPath, ['-e', pointed], { cwd: appDir }), s.name).resolves.toBeDefined();
    }

    const codes = await Promise.all(
      running.map(({ child }) => {
        const exited = exitOf(child);
        child.kill('SIGTERM');
        return exited;
      }),
    );
    expect(codes).toEqual(running.map(() => 0));
  });
});
