import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { answersHealthz, freePort } from './net.ts';
import type { ServiceName } from '../services.ts';
import { waitFor } from './wait.ts';

export { groupOf, type ServiceName } from '../services.ts';

/** A service started as a real process, the way `pnpm --filter ... start` starts it. */
export interface RunningService {
  readonly name: ServiceName;
  readonly url: string;
  readonly process: ChildProcess;
  /** Everything it wrote to stdout and stderr so far. */
  output(): string;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves to the exit code (null if killed). */
  stop(graceMs?: number): Promise<number | null>;
}

const running = new Set<ChildProcess>();
// Whatever happens to the test run, leave no service holding a port behind.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export function packageDir(name: ServiceName): string {
  return fileURLToPath(new URL(`../packages/${name}/`, import.meta.url));
}

/** Spawns `node --import tsx src/main.ts` in the service's package; resolves once it exits. */
export function spawnService(name: ServiceName, env: ServiceEnv): ChildProcess {
  // Tests place orders by the hundred from one address: no rate limits unless a test sets them
  // (undefined: as shipped).
  return spawnEntry(packageDir(name), 'src/main.ts', {
    RATE_LIMIT_PER_USER: '0',
    RATE_LIMIT_PER_ADDRESS: '0',
    ...env,
  });
}

/** A process's environment over this one's; a variable set to undefined is left unset. */
export type ServiceEnv = Record<string, string | undefined>;

/** Spawns `node --import tsx <entry>` in `cwd`, killed when the test run exits. */
export function spawnEntry(cwd: string, entry: string, env: ServiceEnv): ChildProcess {
  const merged: ServiceEnv = { ...process.env, LOG_LEVEL: 'info', ...env };
  for (const [name, value] of Object.entries(merged)) if (value === undefined) delete merged[name];
  const child = spawn(process.execPath, ['--import', 'tsx', entry], {
    cwd,
    env: merged,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  return child;
}

export function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

export async function startService(
  name: ServiceName,
  env: { REDIS_URL: string } & ServiceEnv,
  { healthPort }: { healthPort?: number } = {},
): Promise<RunningService> {
  // A PORT given in env (a service started again where it was) is waited on there.
  const port = Number(env.PORT) || (await freePort());
  const child = spawnService(name, { ...env, PORT: String(port) });
  // With INTERNAL_PORT, /healthz answers there: `healthPort`.
  const handle = await untilHealthy(child, healthPort ?? port, name);
  return { name, ...handle, url: `http://127.0.0.1:${port}` };
}

/** The handle of a process that listens on `port`, once its /healthz answers; stopped if it never does. */
async function untilHealthy(child: ChildProcess, port: number, what: string): Promise<RunningBoard> {
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const handle: RunningBoard = {
    url: `http://127.0.0.1:${port}`,
    process: child,
    output: () => output,
    async stop(graceMs = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      const exited = exitOf(child);
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode}:\n${output}`);
        return answersHealthz(port);
      },
      { timeoutMs: 20_000, what: `${what} /healthz` },
    );
  } catch (err) {
    await handle.stop(1_000);
    throw err;
  }
  return handle;
}

/** The stream board (`pnpm board`) started as a real process on a free port, as `RunningService` minus its name. */
export type RunningBoard = Omit<RunningService, 'name'>;

/**
 * Starts `scripts/board/main.ts` with `env` (REDIS_URL, BOARD_TOKEN, ORDER_SERVICE_URL, ...) on a
 * free `BOARD_PORT`; resolves once its /healthz answers.
 */
export async function startBoard(env: { REDIS_URL: string } & Record<string, string>): Promise<RunningBoard> {
  const port = await freePort();
  const root = fileURLToPath(new URL('..', import.meta.url));
  return untilHealthy(
    spawnEntry(root, 'scripts/board/main.ts', { BOARD_PORT: String(port), ...env }),
    port,
    'the board',
  );
}
