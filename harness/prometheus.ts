import { spawn, type ChildProcess } from 'node:child_process';
import { aptInstall, has } from './apt.ts';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './net.ts';
import { waitFor } from './wait.ts';

/*
 * A real Prometheus for tests (Debian's `prometheus` package, which brings `promtool` too):
 * installed with apt-get when missing, as .ci/run does, started on a free port with a config of the
 * test's making, and always stopped.
 */

/** Installs Debian's `prometheus` package unless `prometheus` and `promtool` are there already. */
export function ensurePrometheus(): void {
  if (!has('prometheus') || !has('promtool')) aptInstall('prometheus');
}

export interface RunningPrometheus {
  readonly url: string;
  /** A PromQL instant query's result vector: each series' labels and value. */
  query(promql: string): Promise<{ labels: Record<string, string>; value: number }[]>;
  /** Everything it wrote so far. */
  output(): string;
  stop(): Promise<void>;
}

/**
 * Starts `prometheus` on a free port with `config` (YAML, as prometheus.yml holds it) and
 * `files` beside it (rule files, by name), its storage in a temporary directory; resolves once it
 * is ready.
 */
export async function startPrometheus(
  config: string,
  files: Record<string, string> = {},
): Promise<RunningPrometheus> {
  const dir = mkdtempSync(join(tmpdir(), 'prometheus-'));
  writeFileSync(join(dir, 'prometheus.yml'), config);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let output = '';
  const child: ChildProcess = spawn(
    'prometheus',
    [
      `--config.file=${join(dir, 'prometheus.yml')}`,
      `--storage.tsdb.path=${join(dir, 'data')}`,
      `--web.listen-address=127.0.0.1:${port}`,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`prometheus exited with ${child.exitCode}:\n${output}`);
        return fetch(`${url}/-/ready`).then(
          (response) => response.ok,
          () => false,
        );
      },
      { timeoutMs: 30_000, what: 'prometheus ready' },
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return {
    url,
    output: () => output,
    stop,
    async query(promql) {
      const response = await fetch(`${url}/api/v1/query?query=${encodeURIComponent(promql)}`);
      const body = (await response.json()) as {
        status: string;
        error?: string;
        data?: { result: { metric: Record<string, string>; value: [number, string] }[] };
      };
      if (body.status !== 'success') throw new Error(`query ${promql} failed: ${body.error}`);
      return body.data!.result.map(({ metric, value }) => ({ labels: metric, value: Number(value[1]) }));
    },
  };
}
