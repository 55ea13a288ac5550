import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, waitForPort } from './net.ts';

/**
 * A private `redis-server` child process: used by `pnpm dev` when no Redis answers, and by the
 * tests, which never touch a shared Redis.
 */
export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /**
   * Stops the server (SIGTERM, or `signal`: SIGKILL for a crash) and starts it again on the same
   * port, after `downMs` (its data is lost unless AOF is on).
   */
  restart(downMs?: number, signal?: NodeJS.Signals): Promise<void>;
  /** Ends the server with `signal` (a crash: SIGKILL), keeping its data directory for `start()`. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** Starts a server ended by `kill()` again, on the same port and directory. */
  start(): Promise<void>;
  /** Stops the server and removes its data directory. Safe to call twice. */
  stop(): Promise<void>;
}

export interface RedisServerOptions {
  /** @defaultValue a free port */
  port?: number;
  /** Extra `redis-server` arguments, e.g. `['--appendonly', 'yes']`. */
  args?: string[];
  /** Where redis-server's own output goes. @defaultValue 'ignore' */
  stdio?: 'ignore' | 'inherit';
  /**
   * Run it in a process group of its own, so that Ctrl-C in a terminal does not reach it and its
   * owner can stop it last, after the clients that need it. @defaultValue false
   */
  detached?: boolean;
}

/** Servers of this process still running (not detached ones): killed if it exits first. */
const attached = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of attached) child.kill('SIGKILL');
});

export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisServer> {
  const port = options.port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'redis-'));
  let child: ChildProcess | undefined;
  let stopped: Promise<void> | undefined;

  async function launch() {
    const args = [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--dir',
      dir,
      '--save',
      '',
      '--appendonly',
      'no',
    ];
    const started = spawn('redis-server', [...args, ...(options.args ?? [])], {
      stdio: options.stdio ?? 'ignore',
      detached: options.detached ?? false,
    });
    child = started;
    if (!options.detached) {
      attached.add(started);
      started.once('exit', () => attached.delete(started));
    }
    const exited = new Promise<never>((_, reject) => {
      child!.once('error', reject);
      child!.once('exit', (code) =>
        reject(new Error(`redis-server exited with code ${code} on port ${port}`)),
      );
    });
    exited.catch(() => {});
    await Promise.race([waitForPort(port, 10_000), exited]);
  }

  async function halt(signal: NodeJS.Signals = 'SIGTERM') {
    const proc = child;
    child = undefined;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }

  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill: (signal) => halt(signal),
    start: () => launch(),
    async restart(downMs = 0, signal: NodeJS.Signals = 'SIGTERM') {
      await halt(signal);
      await new Promise((resolve) => setTimeout(resolve, downMs));
      await launch();
    },
    stop() {
      return (stopped ??= halt().then(() => rmSync(dir, { recursive: true, force: true })));
    },
  };
}
