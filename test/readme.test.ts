import { spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { exitOf } from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';

/* The README's stream-kit sample must keep compiling and doing what the README says it does. */

const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
// Inside stream-kit's package, so that `@msa/stream-kit` and `zod` resolve as for any dependant.
const sampleFile = new URL(`../packages/stream-kit/test/.readme-sample-${process.pid}.ts`, import.meta.url);

let redis: RedisServer;
beforeAll(async () => {
  redis = await startRedisServer();
});
afterAll(async () => {
  rmSync(sampleFile, { force: true });
  await redis?.stop();
});

function streamKitSample(): string {
  const section = readme.slice(readme.indexOf('## stream-kit in 30 lines'));
  const match = /```ts\n([\s\S]*?)```/.exec(section);
  if (!match?.[1]) throw new Error('no ts code block under "stream-kit in 30 lines" in README.md');
  return match[1];
}

describe('the README stream-kit sample', () => {
  it('publishes, handles the event, and stops cleanly on SIGTERM', async () => {
    writeFileSync(sampleFile, streamKitSample());
    const child = spawn(process.execPath, ['--import', 'tsx', sampleFile.pathname], {
      env: { ...process.env, REDIS_URL: redis.url },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    onTestFailed(() => console.error(`--- README sample output ---\n${output}`));
    try {
      await waitFor(() => /shipping o-1 \(\d+-\d+, delivery 1\)/.test(output), {
        timeoutMs: 20_000,
        what: "the sample's handler to run",
      });
      expect(output).toMatch(/^published \d+-\d+$/m);

      child.kill('SIGTERM');
      expect(await exitOf(child)).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
