import { describe, expect, it } from 'vitest';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import { NonRetryableError, RetryLaterError, type SubscribeOptions } from '../../src/index.ts';
import { contractSuite, testStream } from './setup.ts';

/*
 * What a failure costs an entry: a throw brings it back after a delay that doubles, up to
 * maxDeliveries runs of its handler, then it is dead-lettered; a NonRetryableError dead-letters it
 * at once; a RetryLaterError brings it back without counting the run. Only runs of the handler
 * count, not the deliveries Redis counted without one.
 */

const suite = contractSuite();
const { start, startAtDefaults, deadLetters, pendingCount, crashedConsumerHolding } = suite;

describe('when the handler throws', () => {
  it('moves the entry to the dead-letter stream after maxDeliveries and goes on', async () => {
    const stream = testStream();
    const handled: number[] = [];
    let attempts = 0;
    start(
      stream,
      (event) => {
        if (event.n === 0) {
          attempts += 1;
          throw new Error('payment gateway down');
        }
        handled.push(event.n);
      },
      { maxDeliveries: 3 },
    );

    const poisonId = await suite.publisher.publish(stream, { n: 0 });
    await suite.publisher.publish(stream, { n: 1 });

    const [dead] = await waitFor(
      async () => {
        const letters = await deadLetters(stream);
        return letters.length > 0 && letters;
      },
      { what: 'a dead letter' },
    );
    expect(attempts).toBe(3);
    expect(dead).toMatchObject({
      n: '0',
      'dlq:id': poisonId,
      'dlq:group': 'g',
      'dlq:deliveries': '3',
      'dlq:reason': 'failed 3 runs of its handler: payment gateway down',
    });
    expect(handled).toEqual([1]);
    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'no pending entries' });
  });

  it('moves the entry to the dead-letter stream at once for a NonRetryableError', async () => {
    const stream = testStream();
    let attempts = 0;
    start(stream, () => {
      attempts += 1;
      throw new NonRetryableError('unknown product');
    });

    await suite.publisher.publish(stream, { n: 7 });

    const letters = await waitFor(async () => {
      const found = await deadLetters(stream);
      return found.length > 0 && found;
    });
    expect(attempts).toBe(1);
    expect(letters[0]).toMatchObject({ n: '7', 'dlq:reason': 'non-retryable: unknown product' });
    expect(await pendingCount(stream)).toBe(0);
  });

  it('delivers an entry again after RetryLaterError without counting the run', async () => {
    const stream = testStream();
    const runs: number[] = [];
    let waits = 0;
    startAtDefaults(
      stream,
      (_event, { deliveryCount }) => {
        if (waits < 4) {
          waits += 1;
          throw new RetryLaterError('its lease is held by another consumer');
        }
        runs.push(deliveryCount);
      },
      { maxDeliveries: 2, retryDelayMs: 20 },
    );

    await suite.publisher.publish(stream, { n: 0 });

    await waitFor(() => runs.length === 1);
    expect(runs).toEqual([1]);
    expect(await suite.redis.xlen(`${stream.name}:dlq`)).toBe(0);
  });
});

describe('when a handler keeps failing', () => {
  it.each<[string, Partial<SubscribeOptions>]>([
    ['claimIdleMs at its default', { retryDelayMs: 100 }],
    // Retry delays that outlast claimIdleMs: a reclaim pass must not cut them short.
    ['claimIdleMs 150', { retryDelayMs: 100, claimIdleMs: 150 }],
  ])(
    'waits retryDelayMs before the second delivery, doubling after each one, with %s',
    async (_claim, options) => {
      const stream = testStream();
      const at: number[] = [];
      start(
        stream,
        () => {
          at.push(Date.now());
          if (at.length < 4) throw new Error('still down');
        },
        options,
      );

      await suite.publisher.publish(stream, { n: 1 });

      await waitFor(() => at.length === 4, { what: 'four deliveries' });
      const gaps = at.slice(1).map((t, i) => t - at[i]!);
      expect(gaps[0]).toBeGreaterThanOrEqual(100);
      expect(gaps[1]).toBeGreaterThanOrEqual(200);
      expect(gaps[2]).toBeGreaterThanOrEqual(400);
    },
  );
});

describe('when entries were delivered without their handler finishing', () => {
  it('dead-letters an entry whose handler ran maxDeliveries times and never finished', async () => {
    const stream = testStream();
    await suite.publisher.publish(stream, { n: 0 });
    // Five consumers in turn take the entry and stall in its handler until they are closed
    // (the way a process that dies in the handler leaves it): five runs, none finished.
    const runs: number[] = [];
    for (let i = 1; i <= 5; i += 1) {
      const began = deferred();
      const sub = start(
        stream,
        (_event, { deliveryCount }) => {
          runs.push(deliveryCount);
          began.resolve();
          return new Promise<void>(() => {});
        },
        { consumer: `stalls-${i}`, claimIdleMs: 100, closeTimeoutMs: 20, maxDeliveries: 5 },
      );
      await began.promise;
      await sub.close();
    }
    expect(runs).toEqual([1, 2, 3, 4, 5]);
    const seen: number[] = [];

    start(stream, (event) => void seen.push(event.n), { claimIdleMs: 100, maxDeliveries: 5 });

    const letters = await waitFor(async () => {
      const found = await deadLetters(stream);
      return found.length > 0 && found;
    });
    expect(letters).toEqual([
      expect.objectContaining({
        n: '0',
        'dlq:reason':
          'not acked after 5 runs of its handler (its consumers died or stalled before finishing)',
      }),
    ]);
    expect(seen).toEqual([]);
  });

  it('counts the runs of its handler, not the deliveries Redis counted without one', async () => {
    const stream = testStream();
    await crashedConsumerHolding(stream);
    const [[firstId]] = (await suite.redis.xrange(stream.name, '-', '+', 'COUNT', 1)) as [[string, string[]]];
    // Each XCLAIM counts a delivery, as reads and claims do while Redis refuses every write.
    for (let i = 0; i < 6; i += 1) await suite.redis.xclaim(stream.name, 'g', `crashed-${i}`, 0, firstId);
    const seen: [number, number][] = [];

    start(stream, (event, { deliveryCount }) => void seen.push([event.n, deliveryCount]), {
      claimIdleMs: 100,
      maxDeliveries: 5,
    });

    await waitFor(() => seen.length === 3);
    // The crashed consumer may have run each once: this is the second run of each.
    expect(seen.sort()).toEqual([
      [0, 2],
      [1, 2],
      [2, 2],
    ]);
    expect(await deadLetters(stream)).toEqual([]);
  });
});
