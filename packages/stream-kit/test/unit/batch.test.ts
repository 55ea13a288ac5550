import { describe, expect, it } from 'vitest';
import { batchCalls, type BatchFunction } from '../../src/batch.ts';
import { isRedisFault } from '../../src/connection.ts';
import { runPool } from '../../src/consumer/pool.ts';

/** A batch function that doubles numbers, fails an item `bad` on its own, and keeps its calls. */
function doubling(fail?: (items: readonly number[]) => Error | undefined) {
  const calls: number[][] = [];
  const run: BatchFunction<number, number> = async (items) => {
    calls.push([...items]);
    const failure = fail?.(items);
    if (failure) throw failure;
    return items.map((n) => (n < 0 ? new Error(`bad item ${n}`) : n * 2));
  };
  return { run, calls };
}

describe('batchCalls', () => {
  it('sends the calls of one tick as one call of the batch function, each caller its own result', async () => {
    const { run, calls } = doubling();
    const double = batchCalls(run);

    const results = await Promise.all([1, 2, 3].map(double));

    expect(results).toEqual([2, 4, 6]);
    expect(calls).toEqual([[1, 2, 3]]);
  });

  it('waits for every handler the pool starts in the same tick, past their own awaits', async () => {
    const { run, calls } = doubling();
    const double = batchCalls(run);

    await runPool(
      [1, 2, 3, 4],
      4,
      async (n) => {
        await Promise.resolve();
        await double(n);
      },
      () => false,
    );

    expect(calls).toEqual([[1, 2, 3, 4]]);
  });

  it('sends calls of a later tick in a call of their own', async () => {
    const { run, calls } = doubling();
    const double = batchCalls(run);

    await double(1);
    await Promise.all([double(2), double(3)]);

    expect(calls).toEqual([[1], [2, 3]]);
  });

  it('splits a tick into calls of at most maxBatchSize items', async () => {
    const { run, calls } = doubling();
    const double = batchCalls(run, { maxBatchSize: 2 });

    expect(await Promise.all([1, 2, 3, 4, 5].map(double))).toEqual([2, 4, 6, 8, 10]);

    expect(calls).toEqual([[1, 2], [3, 4], [5]]);
  });

  it('never puts items of different keys in one call', async () => {
    const { run, calls } = doubling();
    const double = batchCalls(run, { keyOf: (n) => (n % 2 ? 'odd' : 'even') });

    await Promise.all([1, 2, 3, 4].map(double));

    expect(calls).toEqual([
      [1, 3],
      [2, 4],
    ]);
  });

  it('rejects a maxBatchSize below 1', () => {
    expect(() => batchCalls(doubling().run, { maxBatchSize: 0 })).toThrow(RangeError);
  });

  describe('when one item fails on its own', () => {
    it('rejects its caller alone, with its error, and resolves the others from the same call', async () => {
      const { run, calls } = doubling();
      const double = batchCalls(run);

      const outcomes = await Promise.allSettled([1, -1, 3].map(double));

      expect(outcomes).toEqual([
        { status: 'fulfilled', value: 2 },
        { status: 'rejected', reason: new Error('bad item -1') },
        { status: 'fulfilled', value: 6 },
      ]);
      expect(calls).toHaveLength(1);
    });
  });

  describe('when the whole call fails', () => {
    it('runs the items again one at a time, so each caller gets the error its own item causes', async () => {
      // 7 breaks any call it is part of, not only its own item.
      const { run, calls } = doubling((items) => (items.includes(7) ? new Error('7 breaks it') : undefined));
      const double = batchCalls(run);

      const outcomes = await Promise.allSettled([1, 7, 3].map(double));

      expect(outcomes).toEqual([
        { status: 'fulfilled', value: 2 },
        { status: 'rejected', reason: new Error('7 breaks it') },
        { status: 'fulfilled', value: 6 },
      ]);
      expect(calls).toEqual([[1, 7, 3], [1], [7], [3]]);
    });

    it('rejects every caller with an error from Redis or the connection as it is, without running them again', async () => {
      const lost = new Error('Connection is closed.');
      const { run, calls } = doubling(() => lost);
      const double = batchCalls(run);

      const outcomes = await Promise.allSettled([1, 2].map(double));

      expect(outcomes).toEqual([
        { status: 'rejected', reason: lost },
        { status: 'rejected', reason: lost },
      ]);
      expect(outcomes.every((outcome) => outcome.status === 'rejected' && isRedisFault(outcome.reason))).toBe(
        true,
      );
      expect(calls).toEqual([[1, 2]]);
    });

    it('answers a single item with the error of its call', async () => {
      const { run, calls } = doubling(() => new Error('broken'));
      const double = batchCalls(run);

      await expect(double(1)).rejects.toThrow('broken');

      expect(calls).toEqual([[1]]);
    });

    it('treats an answer of the wrong length as a failure of the whole call', async () => {
      const calls: number[][] = [];
      const double = batchCalls<number, number>(async (items) => {
        calls.push([...items]);
        return items.length > 1 ? [0] : [items[0]! * 2];
      });

      expect(await Promise.all([1, 2].map(double))).toEqual([2, 4]);
      expect(calls).toEqual([[1, 2], [1], [2]]);
    });
  });
});
