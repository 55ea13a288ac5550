import { describe, expect, it } from 'vitest';
import { runPool } from '../../src/consumer/pool.ts';

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('runPool', () => {
  it('runs items one after another, in their order, with a concurrency of 1', async () => {
    const log: string[] = [];

    const result = await runPool(
      [1, 2, 3],
      1,
      async (n) => {
        log.push(`start ${n}`);
        await tick();
        log.push(`end ${n}`);
      },
      () => false,
    );

    expect(log).toEqual(['start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3']);
    expect(result).toEqual({ started: 3 });
  });

  it('runs at most `concurrency` items at once, and every item once', async () => {
    let running = 0;
    let most = 0;
    const seen: number[] = [];

    await runPool(
      Array.from({ length: 20 }, (_, i) => i),
      4,
      async (n) => {
        running += 1;
        most = Math.max(most, running);
        await tick();
        seen.push(n);
        running -= 1;
      },
      () => false,
    );

    expect(most).toBe(4);
    expect(seen.sort((a, b) => a - b)).toEqual(Array.from({ length: 20 }, (_, i) => i));
  });

  it('starts nothing after an item throws, waits for those running, and reports the first error', async () => {
    const started: number[] = [];
    const finished: number[] = [];

    const result = await runPool(
      [1, 2, 3, 4, 5],
      2,
      async (n) => {
        started.push(n);
        await tick();
        if (n === 2) throw new Error('boom');
        await tick();
        finished.push(n);
      },
      () => false,
    );

    expect(started).toEqual([1, 2]);
    expect(finished).toEqual([1]);
    expect(result.started).toBe(2);
    expect((result.error as Error).message).toBe('boom');
  });

  it('starts nothing more once stopped', async () => {
    let stopped = false;
    const started: number[] = [];

    const result = await runPool(
      [1, 2, 3],
      1,
      (n) => {
        started.push(n);
        stopped = n === 2;
      },
      () => stopped,
    );

    expect(started).toEqual([1, 2]);
    expect(result).toEqual({ started: 2 });
  });

  it('settles at once for no items', async () => {
    expect(
      await runPool(
        [],
        3,
        () => {},
        () => false,
      ),
    ).toEqual({ started: 0 });
  });
});
