import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { logDestination } from '../../src/service/env.ts';

const env = fileURLToPath(new URL('../../src/service/env.ts', import.meta.url));
const shutdown = fileURLToPath(new URL('../../src/service/shutdown.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'log-destination-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A stream that records each write it makes: the lines of each, in order. */
function recorder() {
  const writes: string[][] = [];
  const out = new Writable({
    decodeStrings: false,
    write(chunk: string, _encoding, done) {
      writes.push([chunk]);
      done();
    },
    writev(chunks, done) {
      writes.push(chunks.map(({ chunk }) => chunk as string));
      done();
    },
  });
  return { out, writes };
}

const nextTick = () => new Promise((resolve) => setImmediate(resolve));

/**
 * What a process that writes `lines` through the destination (flushed on exit, as the services do,
 * unless `flushOnExit` is false), then ends as `end` says, leaves on its stdout; `lagMs`: how long
 * the reader waits before it reads.
 */
async function outputOf(
  lines: number,
  end: string,
  { flushOnExit = true, lagMs = 0 }: { flushOnExit?: boolean; lagMs?: number } = {},
): Promise<string> {
  const script = join(dir, `${Math.random().toString(36).slice(2)}.mts`);
  writeFileSync(
    script,
    `import { logDestination } from ${JSON.stringify(env)};
import { drained } from ${JSON.stringify(shutdown)};
const log = logDestination(process.stdout);
${flushOnExit ? "process.on('exit', () => log.flush());" : ''}
for (let i = 0; i < ${lines}; i += 1) log.write(\`line \${i}\\n\`);
${end}
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  const closed = new Promise((resolve) => child.once('close', resolve));
  let output = '';
  // The listener first: Node resumes a child's stdout that has none when the child exits, and
  // what it read then would be lost.
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stdout.pause();
  await new Promise((resolve) => setTimeout(resolve, lagMs));
  child.stdout.resume();
  await closed;
  return output;
}

const lines = (n: number) => Array.from({ length: n }, (_, i) => `line ${i}\n`).join('');

describe('logDestination', () => {
  it("writes a tick's lines together, in one write, once the tick is over", async () => {
    const { out, writes } = recorder();
    const log = logDestination(out);
    for (let i = 0; i < 100; i += 1) log.write(`a${i}\n`);
    expect(writes).toEqual([]);
    await nextTick();
    expect(writes).toEqual([[Array.from({ length: 100 }, (_, i) => `a${i}\n`).join('')]]);
    log.write('b\n');
    log.write('c\n');
    await nextTick();
    expect(writes.slice(1)).toEqual([['b\nc\n']]);
  });

  it('lets flush() on exit write the lines of the last tick when the process exits in it', async () => {
    expect(await outputOf(50, 'process.exit(0);')).toBe(lines(50));
  });

  it('lets flush() on exit write the lines of the last tick when an uncaught exception ends the process', async () => {
    expect(await outputOf(50, "throw new Error('boom');")).toBe(lines(50));
  });

  it('writes every line of a long run to a pipe, in order', async () => {
    expect(await outputOf(20_000, 'await new Promise((resolve) => setTimeout(resolve, 10));')).toBe(
      lines(20_000),
    );
  });

  it("has drained wait for the tick's lines too, before stdout's, for a reader that lags behind", async () => {
    // No flush on exit here: only drained can have written them. More than a pipe holds, so that
    // the writes wait for the reader, and process.exit would drop what still waits.
    const output = await outputOf(20_000, 'await drained(log);\nprocess.exit(0);', {
      flushOnExit: false,
      lagMs: 1_000,
    });

    expect(output).toBe(lines(20_000));
  });
});
