import { describe, expect, it } from 'vitest';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import { contractSuite, settle, testStream } from './setup.ts';

/*
 * `concurrency` handlers at once (one by default, in stream order), a batch of `count` read ahead
 * while one is handled, and what close() does with both: waits for what runs, hands back what it
 * never started.
 */

const suite = contractSuite();
const { start, publishRange, pendingCount, groupCreated } = suite;

describe('with concurrency', () => {
  it('runs up to `concurrency` handlers at once, never more, and holds at most two batches', async () => {
    const stream = testStream();
    await publishRange(stream, 40);
    const handled: number[] = [];
    let running = 0;
    let mostRunning = 0;
    let mostHeld = 0;
    start(
      stream,
      async (event) => {
        running += 1;
        mostRunning = Math.max(mostRunning, running);
        // Delivered to this consumer and not yet acked: what it holds.
        mostHeld = Math.max(mostHeld, await pendingCount(stream));
        await new Promise((resolve) => setTimeout(resolve, 20));
        running -= 1;
        handled.push(event.n);
      },
      { count: 10, concurrency: 4 },
    );

    await waitFor(async () => handled.length === 40 && (await pendingCount(stream)) === 0, {
      what: 'all 40 handled and acked',
    });
    expect(mostRunning).toBe(4);
    // The batch being handled, and the next one read ahead.
    expect(mostHeld).toBeLessThanOrEqual(20);
    expect([...handled].sort((x, y) => x - y)).toEqual(Array.from({ length: 40 }, (_, n) => n));
  });

  it('reads the next batch while a full one is handled, and handles each entry once', async () => {
    const stream = testStream();
    await publishRange(stream, 10);
    const handled: number[] = [];
    start(
      stream,
      async (event) => {
        // Entry 0 waits until the second batch of five is delivered too: only a read ahead,
        // sent while this batch is being handled, can deliver it.
        if (event.n === 0) await waitFor(async () => (await pendingCount(stream)) === 10);
        handled.push(event.n);
      },
      { count: 5 },
    );

    await waitFor(async () => handled.length === 10 && (await pendingCount(stream)) === 0);
    await settle();
    expect(handled).toEqual(Array.from({ length: 10 }, (_, n) => n));
  });

  it('leaves a batch read ahead pending at close(), for the next run to handle once', async () => {
    const stream = testStream();
    await publishRange(stream, 20);
    const handled: number[] = [];
    const release = deferred();
    const first = start(
      stream,
      async (event) => {
        if (event.n === 0) {
          await waitFor(async () => (await pendingCount(stream)) === 10);
          await release.promise;
        }
        handled.push(event.n);
      },
      { count: 5 },
    );
    await groupCreated(stream);
    await waitFor(async () => (await pendingCount(stream)) === 10);

    const closing = first.close();
    release.resolve();
    await closing;
    expect(handled).toEqual([0]);
    start(stream, (event) => void handled.push(event.n), { count: 5 });

    await waitFor(async () => handled.length === 20 && (await pendingCount(stream)) === 0);
    await settle();
    expect([...handled].sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, n) => n));
  });

  it('hands back at close() the entries it read but never started, for another consumer to take at once', async () => {
    const stream = testStream();
    await publishRange(stream, 30);
    const release = deferred();
    const handled: string[] = [];
    // Both would wait 10 s before taking over entries left by the other.
    const options = { count: 10, claimIdleMs: 10_000 };
    const first = start(
      stream,
      async (event) => {
        handled.push(`a${event.n}`);
        await release.promise;
      },
      { ...options, consumer: 'a' },
    );
    await waitFor(async () => handled.length === 1 && (await pendingCount(stream)) === 20);

    const closing = first.close();
    release.resolve();
    await closing;
    start(stream, (event) => void handled.push(`b${event.n}`), { ...options, consumer: 'b' });

    // Well within claimIdleMs: the 19 handed back are taken over at b's first reclaim pass.
    await waitFor(async () => handled.length === 30 && (await pendingCount(stream)) === 0, {
      timeoutMs: 5_000,
    });
    expect(handled.filter((name) => name.startsWith('a'))).toEqual(['a0']);
  });

  it('keeps the stream order with the default of one handler at a time', async () => {
    const stream = testStream();
    await publishRange(stream, 30);
    const handled: number[] = [];
    start(
      stream,
      async (event) => {
        // Later entries finish faster: only one at a time keeps them in order.
        await new Promise((resolve) => setTimeout(resolve, 30 - event.n));
        handled.push(event.n);
      },
      { count: 10 },
    );

    await waitFor(() => handled.length === 30);
    expect(handled).toEqual(Array.from({ length: 30 }, (_, n) => n));
  });

  it('retries a failed entry while the others of its batch are acked', async () => {
    const stream = testStream();
    await publishRange(stream, 8);
    const deliveries = new Map<number, number>();
    start(
      stream,
      (event) => {
        deliveries.set(event.n, (deliveries.get(event.n) ?? 0) + 1);
        if (event.n === 3 && deliveries.get(3) === 1) throw new Error('first try fails');
      },
      { concurrency: 4 },
    );

    await waitFor(async () => deliveries.get(3) === 2 && (await pendingCount(stream)) === 0, {
      what: 'entry 3 retried and everything acked',
    });
    expect([...deliveries].sort(([a], [b]) => a - b)).toEqual(
      Array.from({ length: 8 }, (_, n) => [n, n === 3 ? 2 : 1]),
    );
  });

  it('waits at close() for every running handler, acks them, and leaves the rest pending', async () => {
    const stream = testStream();
    await publishRange(stream, 10);
    const release = deferred();
    const started: number[] = [];
    const sub = start(
      stream,
      async (event) => {
        started.push(event.n);
        await release.promise;
      },
      { concurrency: 3 },
    );
    await waitFor(() => started.length === 3);

    const closing = sub.close();
    await settle();
    expect(started).toHaveLength(3);
    release.resolve();
    await closing;

    expect(await pendingCount(stream)).toBe(7);
  });

  it('keeps the lease of every running handler, so no other consumer takes one', async () => {
    const stream = testStream();
    const runs: number[] = [];
    const handler = async (event: { n: number }) => {
      runs.push(event.n);
      await new Promise((resolve) => setTimeout(resolve, 1_200));
    };
    start(stream, handler, { consumer: 'a', claimIdleMs: 300, concurrency: 3 });
    await groupCreated(stream);
    await publishRange(stream, 3);
    await waitFor(() => runs.length === 3);
    start(stream, handler, { consumer: 'b', claimIdleMs: 300, concurrency: 3 });

    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the three acked' });
    await settle();
    expect([...runs].sort()).toEqual([0, 1, 2]);
  });
});
