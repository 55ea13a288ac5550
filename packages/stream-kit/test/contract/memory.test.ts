import v8 from 'node:v8';
import vm from 'node:vm';
import { describe, expect, it } from 'vitest';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import { contractSuite, testStream } from './setup.ts';

/*
 * A subscription's footprint stays flat however long it runs. In a file of its own: it turns on
 * `--expose-gc` in its worker and measures the whole heap.
 */

const suite = contractSuite();
const { start } = suite;

describe('memory', () => {
  it('keeps its heap flat over thousands of reads', async () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const heapAfterGc = () => {
      gc();
      return process.memoryUsage().heapUsed;
    };
    const stream = testStream();
    for (let start = 0; start < 20_000; start += 500) {
      await suite.publisher.publishMany(
        stream,
        Array.from({ length: 500 }, (_, i) => ({ n: start + i })),
      );
    }
    let handled = 0;
    const warmedUp = deferred();
    // One entry per read: 20,000 steps of the loop.
    start(
      stream,
      () => {
        handled += 1;
        if (handled === 2_000) warmedUp.resolve();
      },
      { count: 1 },
    );
    await warmedUp.promise;
    const early = heapAfterGc();

    await waitFor(() => handled === 20_000, { timeoutMs: 60_000 });

    // A few hundred bytes kept per step would add megabytes here.
    expect(heapAfterGc() - early).toBeLessThan(1_500_000);
  }, 90_000);
});
