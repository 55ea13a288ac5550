import { describe, expect, it } from 'vitest';
import { freePort } from '../../../../harness/net.ts';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import { subscribe } from '../../src/index.ts';
import { contractSuite, settle, testStream } from './setup.ts';

/*
 * Subscription.close(): it waits for the running handler (up to closeTimeoutMs) and acks its
 * entry, starts no handler after it resolves, leaves the rest pending for the group, keeps the
 * lease of what still runs meanwhile, returns promptly from a blocked read or an unreachable
 * Redis, and is safe to call twice. (With concurrency and read-ahead: concurrency.test.ts; under
 * load: delivery.test.ts.)
 */

const suite = contractSuite();
const { start, publishRange, pendingCount, groupCreated } = suite;

describe('close()', () => {
  it('waits for the running handler and acks its entry', async () => {
    const stream = testStream();
    const release = deferred();
    const started = deferred();
    const sub = start(stream, async () => {
      started.resolve();
      await release.promise;
    });
    await suite.publisher.publish(stream, { n: 1 });
    await started.promise;

    let closed = false;
    const closing = sub.close().then(() => (closed = true));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(closed).toBe(false);
    release.resolve();
    await closing;

    expect(await pendingCount(stream)).toBe(0);
  });

  it('leaves entries not yet handled pending and calls no handler after it resolves', async () => {
    const stream = testStream();
    const started = deferred();
    const release = deferred();
    let calls = 0;
    // Published first, so the subscription reads all five in its first batch.
    await publishRange(stream, 5);
    const sub = start(stream, async () => {
      calls += 1;
      started.resolve();
      await release.promise;
    });
    await started.promise;

    const closing = sub.close();
    release.resolve();
    await closing;
    const callsAtClose = calls;
    await new Promise((resolve) => setTimeout(resolve, 300));

    expect(calls).toBe(callsAtClose);
    expect(callsAtClose).toBe(1);
    expect(await pendingCount(stream)).toBe(4);
  });

  it('keeps the lease on the entry being handled while it waits, so no other consumer runs it meanwhile', async () => {
    const stream = testStream();
    const runs: string[] = [];
    let running = 0;
    let overlapped = false;
    const slow = (consumer: string) => async () => {
      runs.push(consumer);
      overlapped ||= running > 0;
      running += 1;
      await new Promise((resolve) => setTimeout(resolve, 1_500));
      running -= 1;
    };
    const first = start(stream, slow('a'), { consumer: 'a', claimIdleMs: 300 });
    await suite.publisher.publish(stream, { n: 1 });
    await waitFor(() => runs.length === 1);
    start(stream, slow('b'), { consumer: 'b', claimIdleMs: 300 });

    await first.close();

    await settle();
    expect({ runs, overlapped }).toEqual({ runs: ['a'], overlapped: false });
    expect(await pendingCount(stream)).toBe(0);
  });

  it('gives up on a handler that outlives closeTimeoutMs and leaves its entry pending', async () => {
    const stream = testStream();
    const started = deferred();
    const sub = start(
      stream,
      async () => {
        started.resolve();
        await new Promise(() => {});
      },
      { closeTimeoutMs: 100 },
    );
    await suite.publisher.publish(stream, { n: 1 });
    await started.promise;

    const began = Date.now();
    await sub.close();

    expect(Date.now() - began).toBeLessThan(2_000);
    expect(await pendingCount(stream)).toBe(1);
  });

  it('returns promptly when Redis cannot be reached', async () => {
    const sub = subscribe('g', 'c1', testStream(), () => {}, {
      connection: `redis://127.0.0.1:${await freePort()}`,
    });
    await new Promise((resolve) => setTimeout(resolve, 300));

    const began = Date.now();
    await sub.close();

    expect(Date.now() - began).toBeLessThan(2_000);
  });

  it('returns promptly from a blocked read and is safe to call twice', async () => {
    const stream = testStream();
    const sub = start(stream, () => {}, { blockMs: 60_000 });
    await groupCreated(stream);

    const began = Date.now();
    await Promise.all([sub.close(), sub.close()]);
    await sub.close();

    expect(Date.now() - began).toBeLessThan(5_000);
  });
});
