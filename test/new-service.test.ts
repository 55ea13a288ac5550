import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../harness/net.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { waitFor } from '../harness/wait.ts';
import { consumersOf, portVariableOf, services } from '../services.ts';

/*
 * Recipe 2 of docs/recipes.md, followed as a newcomer would: in a copy of the repository, the
 * files and lines it shows for a shipping-service are written where it says, `pnpm install` runs,
 * and then the new service must typecheck, pass the registry's checks, and run under `pnpm dev`
 * beside the others, shipping a paid order. The code comes from the page itself, so the recipe
 * cannot drift from what works.
 */

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const RECIPE = readFileSync(join(ROOT, 'docs', 'recipes.md'), 'utf8');
const run = promisify(execFile);

/** Where an `insert=` block goes in each file: before the first line that matches. */
const INSERT_BEFORE: Record<string, RegExp> = {
  'services.ts': /^\] as const satisfies/m,
  'docker-compose.yml': /^volumes:/m,
};

interface Step {
  kind: 'file' | 'insert' | 'append';
  path: string;
  text: string;
}

/** The fenced blocks of recipe 2 that say where they go: ```lang file=|insert=|append=<path>. */
function recipeSteps(): Step[] {
  const start = RECIPE.indexOf('\n## 2.');
  const end = RECIPE.indexOf('\n## 3.', start);
  const section = RECIPE.slice(start, end);
  return [...section.matchAll(/^```\w+ (file|insert|append)=(\S+)\n([\s\S]*?)^```$/gm)].map((m) => ({
    kind: m[1] as Step['kind'],
    path: m[2]!,
    text: m[3]!,
  }));
}

function apply(copy: string, step: Step): void {
  const path = join(copy, step.path);
  if (step.kind === 'file') {
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, step.text);
  } else if (step.kind === 'append') {
    appendFileSync(path, step.text);
  } else {
    const anchor = INSERT_BEFORE[step.path];
    if (!anchor) throw new Error(`the test does not know where to insert into ${step.path}`);
    const text = readFileSync(path, 'utf8');
    const at = text.search(anchor);
    if (at < 0) throw new Error(`${step.path} has no line matching ${anchor}`);
    writeFileSync(path, text.slice(0, at) + step.text + text.slice(at));
  }
}

/** The repository as committed plus uncommitted changes, without node_modules or ignored files. */
async function copyRepository(to: string): Promise<void> {
  const { stdout } = await run('git', ['ls-files', '-co', '--exclude-standard', '-z'], { cwd: ROOT });
  const files = stdout.split('\0').filter(Boolean);
  for (const file of files) {
    mkdirSync(dirname(join(to, file)), { recursive: true });
    try {
      writeFileSync(join(to, file), readFileSync(join(ROOT, file)));
    } catch (err) {
      // A file deleted but not yet committed is still listed.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}

describe('recipe 2 of docs/recipes.md, adding a shipping-service', () => {
  let copy: string;
  let redisServer: RedisServer | undefined;
  let dev: ChildProcess | undefined;
  let devOutput = '';
  const steps = recipeSteps();

  beforeAll(async () => {
    copy = mkdtempSync(join(tmpdir(), 'recipe-'));
    await copyRepository(copy);
    for (const step of steps) apply(copy, step);
    // As the recipe says: `pnpm install`, which adds the package to the lockfile (CI would refuse
    // to change it by default), from the local store where it can.
    await run('pnpm', ['install', '--prefer-offline', '--no-frozen-lockfile'], { cwd: copy });
  }, 120_000);

  afterAll(async () => {
    if (dev?.pid && dev.exitCode === null && dev.signalCode === null) {
      try {
        process.kill(-dev.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    await redisServer?.stop();
    if (copy) rmSync(copy, { recursive: true, force: true });
  });

  it('shows every file and line the new service needs', () => {
    expect(steps.map((step) => `${step.kind} ${step.path}`)).toEqual([
      'file packages/shipping-service/package.json',
      'file packages/shipping-service/src/config.ts',
      'file packages/shipping-service/src/ship.ts',
      'file packages/shipping-service/src/app.ts',
      'file packages/shipping-service/src/main.ts',
      'insert services.ts',
      'append redis/users.acl',
      'insert docker-compose.yml',
      'append prometheus/prometheus.yml',
    ]);
  });

  it('gives code that typechecks', { timeout: 120_000 }, async () => {
    writeFileSync(
      join(copy, 'tsconfig.recipe.json'),
      JSON.stringify({
        extends: './tsconfig.json',
        include: ['packages/shipping-service/src', 'services.ts'],
      }),
    );

    await expect(
      run('pnpm', ['exec', 'tsc', '--noEmit', '-p', 'tsconfig.recipe.json'], { cwd: copy }).then(
        () => 'no errors',
        (err: { stdout: string }) => err.stdout,
      ),
    ).resolves.toBe('no errors');
  });

  it(
    'passes the checks that hold the ACL file, docker-compose.yml and the packages to the registry',
    { timeout: 180_000 },
    async () => {
      const report = join(copy, 'registry-checks.json');
      await run(
        'pnpm',
        [
          'exec',
          'vitest',
          'run',
          'test/architecture.test.ts',
          'test/compose.test.ts',
          'test/security.test.ts',
          '-t',
          'registry|SHA-256|docker-compose',
          '--reporter=json',
          `--outputFile=${report}`,
        ],
        { cwd: copy },
      ).catch(() => {});
      const results = (
        JSON.parse(readFileSync(report, 'utf8')) as {
          testResults: {
            assertionResults: { fullName: string; status: string; failureMessages: string[] }[];
          }[];
        }
      ).testResults.flatMap((file) => file.assertionResults);
      const ran = results.filter((result) => result.status !== 'skipped' && result.status !== 'pending');

      expect(
        ran
          .filter((result) => result.status !== 'passed')
          .map((r) => `${r.fullName}: ${r.failureMessages[0]}`),
      ).toEqual([]);
      // The new service was among those checked, under its own Redis user.
      expect(ran.map((result) => result.fullName)).toEqual(
        expect.arrayContaining([
          expect.stringContaining('shipping-service may add to and read exactly the streams the registry'),
          expect.stringContaining('defines Redis, the services of the registry'),
          expect.stringContaining('scrape each service of the registry at its port'),
          expect.stringContaining('lists every service package under packages/'),
        ]),
      );
    },
  );

  it('runs under pnpm dev beside the others and ships a paid order', { timeout: 120_000 }, async () => {
    redisServer = await startRedisServer();
    const ports = await Promise.all([...services.map(() => freePort()), freePort(), freePort()]);
    const names = [...services.map((service) => service.name), 'shipping-service'];
    const env = {
      ...Object.fromEntries(names.map((name, i) => [portVariableOf(name), String(ports[i])])),
      BOARD_PORT: String(ports.at(-1)),
    };
    dev = spawn(process.execPath, ['--import', 'tsx', 'scripts/dev.ts'], {
      cwd: copy,
      env: { ...process.env, ...env, REDIS_URL: redisServer.url, LOG_LEVEL: 'warn', NO_COLOR: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    dev.stdout!.on('data', (chunk: Buffer) => (devOutput += chunk.toString()));
    dev.stderr!.on('data', (chunk: Buffer) => (devOutput += chunk.toString()));

    await waitFor(() => devOutput.includes('all services and the board are up') || dev!.exitCode !== null, {
      timeoutMs: 60_000,
      what: 'pnpm dev to say all services and the board are up',
    });
    expect(devOutput).toMatch(new RegExp(`shipping-service +http://localhost:${ports[services.length]}`));

    // A token as the banner says, signed with the secret pnpm dev made in the copy.
    const { stdout: token } = await promisify(execFile)(
      process.execPath,
      ['--import', 'tsx', 'scripts/token.ts', 'newcomer'],
      { cwd: copy, env: { ...process.env, AUTH_SECRET: '' } },
    );
    const response = await fetch(`http://127.0.0.1:${ports[0]}/orders`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token.trim()}` },
      body: JSON.stringify({ userId: 'newcomer', productId: 'p-1', price: 1200 }),
    });
    expect(response.status).toBe(202);
    const { orderId } = (await response.json()) as { orderId: string };

    const redis = new Redis(redisServer.url);
    try {
      const shipment = await waitFor(
        async () => {
          const keys = await redis.keys('shipping-service:shipment:*');
          const values = keys.length > 0 ? await redis.mget(...keys) : [];
          return values.find((value) => value?.includes(orderId));
        },
        { timeoutMs: 20_000, what: `a shipment for order ${orderId}` },
      );
      expect(JSON.parse(shipment!)).toMatchObject({ orderId, userId: 'newcomer', productId: 'p-1' });
      const groups = (await redis.xinfo('GROUPS', 'payment-events')) as unknown[][];
      expect(groups.map((group) => group[1]).sort()).toEqual(
        [...consumersOf('payment-events').map(({ group }) => group), 'shipping-service-group'].sort(),
      );
    } finally {
      redis.disconnect();
    }

    process.kill(-dev.pid!, 'SIGINT');
    const code = await new Promise<number | null>((resolve) => {
      if (dev!.exitCode !== null) resolve(dev!.exitCode);
      else dev!.once('exit', (exitCode) => resolve(exitCode));
    });
    expect(code, devOutput).toBe(0);
  });
});
