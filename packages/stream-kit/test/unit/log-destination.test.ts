import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { logDestination } from '../../src/service/env.ts';

const env = fileURLToPath(new URL('../../src/service/env.ts', import.meta.url));
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
 * What a process that writes `lines` through the destination (flushed on exit, as the services do),
 * then ends as `end` says, leaves on its stdout.
 */
async function outputOf(lines: number, end: string): Promise<string> {
  const script = join(dir, `${Math.random().toString(36).slice(2)}.mts`);
  writeFileSync(
    script,
    `import { logDestination } from ${JSON.stringify(env)};
const log = logDestination(process.stdout);
process.on('exit', () => log.flush());
for (let i = 0; i < ${lines}; i += 1) log.write(\`line \${i}\\n\`);
${end}
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'ignore'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  await new Promise((resolve) => child.once('close', resolve));
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
});
