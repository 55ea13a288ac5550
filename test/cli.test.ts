import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

/* `pnpm fault`, `pnpm bench` and `pnpm build` called wrong, or asked for help, as real processes. (`pnpm dlq`: dlq.test.ts; `pnpm tail`: tail.test.ts.) */

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function cli(script: string, ...args: string[]) {
  return promisify(execFile)(process.execPath, ['--import', 'tsx', script, ...args], { cwd: ROOT }).then(
    ({ stdout, stderr }) => ({ code: 0, stdout, stderr }),
    (err: { code: number; stdout: string; stderr: string }) => err,
  );
}

describe.each([
  ['pnpm fault', 'scripts/fault/main.ts', 'usage: pnpm fault'],
  ['pnpm bench', 'scripts/bench/main.ts', 'usage: pnpm bench'],
  ['pnpm build', 'scripts/build.ts', 'usage: pnpm build'],
])('%s', (name, script, usage) => {
  it('prints its usage on stdout and exits 0 for --help', async () => {
    const { code, stdout, stderr } = await cli(script, '--help');

    expect([code, stderr]).toEqual([0, '']);
    expect(stdout).toMatch(new RegExp(`^${usage}`));
  });

  it('says what is wrong, shows its usage and exits 2 for an unknown flag, before doing anything', async () => {
    const { code, stdout, stderr } = await cli(script, '--order', '5');

    expect([code, stdout]).toEqual([2, '']);
    expect(stderr.split('\n').slice(0, 2)).toEqual([
      expect.stringMatching(new RegExp(`^${name}: Unknown option '--order'`)),
      expect.stringMatching(new RegExp(`^${usage}`)),
    ]);
  });
});

describe('pnpm fault', () => {
  it.each([
    [['--orders', 'abc'], '--orders must be a whole number of at least 1, got "abc"'],
    [['--orders', '0'], '--orders must be a whole number of at least 1, got "0"'],
    [['--seed=-1'], '--seed must be a whole number of at least 0, got "-1"'],
    [['--claim-idle-ms', '5'], '--claim-idle-ms must be a whole number of at least 100, got "5"'],
  ])('refuses %j with what is wrong and exits 2, before starting anything', async (args, problem) => {
    const { code, stdout, stderr } = await cli('scripts/fault/main.ts', ...args);

    expect([code, stdout]).toEqual([2, '']);
    expect(stderr.split('\n')[0]).toBe(`pnpm fault: ${problem}`);
  });
});
