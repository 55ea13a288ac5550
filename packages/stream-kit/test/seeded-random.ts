import { randomInt } from 'node:crypto';
import { relative } from 'node:path';
import { onTestFailed } from 'vitest';

/*
 * Randomness a failing test can replay. A test that draws at random (delays, failures, which
 * consumer to stop) takes its seed from `testSeed()` and draws from `mulberry32(seed)` or
 * `keyedRandom(seed, ...)` (harness/random.ts), never from Math.random. Random unique names
 * (randomUUID) need none.
 */

/**
 * The seed of the running test: `SEED` from the environment if set, else a fresh one. Should the
 * test fail, its failure names the seed and the command that replays it. Call it inside a test.
 */
export function testSeed(): number {
  const given = process.env.SEED;
  const seed = given === undefined || given === '' ? randomInt(2 ** 31) : Number(given);
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) {
    throw new Error(`SEED must be an integer from 0 to 2^32 - 1, not "${given}"`);
  }
  onTestFailed(({ task }) => {
    const replay = `replay it with: SEED=${seed} pnpm exec vitest run ${relative(process.cwd(), task.file.filepath)}`;
    console.error(`"${task.name}" failed with seed ${seed}; ${replay}`);
    // Also at the end of the first error, so that the failure summary says it too.
    const [first] = task.result?.errors ?? [];
    if (first) first.message += `\n(seed ${seed}; ${replay})`;
  });
  return seed;
}
