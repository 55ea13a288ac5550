import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

/*
 * `drained` against a real pipe: a process writes more than the pipe holds to a reader that lags
 * behind (the lines wait in its memory, as a service's log lines do), then exits.
 */

const shutdown = fileURLToPath(new URL('../../src/service/shutdown.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'drained-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const LINES = 2_000;
const LINE = `${'x'.repeat(199)}\n`;

/** Bytes a reader that starts reading 1 s late gets from a process that writes LINES lines, then exits. */
async function bytesReadFrom(exit: 'after drained' | 'at once'): Promise<number> {
  // .mts: an ES module wherever the temporary directory is, for its top-level await.
  const script = join(dir, `${exit.replaceAll(' ', '-')}.mts`);
  writeFileSync(
    script,
    `import { drained } from ${JSON.stringify(shutdown)};
for (let i = 0; i < ${LINES}; i += 1) process.stdout.write(${JSON.stringify(LINE)});
${exit === 'after drained' ? 'await drained(process.stdout);' : ''}
process.exit(0);
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  child.stdout.pause();
  const closed = new Promise((resolve) => child.once('close', resolve));
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  let bytes = 0;
  child.stdout.on('data', (chunk: Buffer) => (bytes += chunk.length));
  child.stdout.resume();
  await closed;
  return bytes;
}

describe('drained', () => {
  it('holds the exit until every line waiting for a lagging reader is out', async () => {
    expect(await bytesReadFrom('after drained')).toBe(LINES * LINE.length);
  });

  it('is needed: process.exit drops the lines still waiting', async () => {
    expect(await bytesReadFrom('at once')).toBeLessThan(LINES * LINE.length);
  });
});
