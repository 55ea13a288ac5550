import { describe, expect, expectTypeOf, it } from 'vitest';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import type { DeliveryContext } from '../../src/index.ts';
import { contractSuite, settle, testStream } from './setup.ts';

/*
 * What every subscription does, whatever its options: published entries arrive, an entry is acked
 * once its handler succeeds and only then, a failed one comes back, every group gets every entry,
 * the consumers of one group share them, and closing under load loses none.
 */

const suite = contractSuite();
const { start, publishRange, pendingCount, deadLetters, groupCreated } = suite;

describe('subscribe', () => {
  it('delivers published events with the type inferred from the stream', async () => {
    const stream = testStream();
    const seen: number[] = [];
    start(stream, (event, context) => {
      expectTypeOf(event).toEqualTypeOf<{ n: number; note?: string | undefined }>();
      expectTypeOf(context).toEqualTypeOf<DeliveryContext>();
      seen.push(event.n);
    });

    await publishRange(stream, 5);

    await waitFor(() => seen.length === 5, { what: '5 events' });
    expect(seen).toEqual([0, 1, 2, 3, 4]);
  });

  it('acks an entry only after its handler resolves', async () => {
    const stream = testStream();
    const release = deferred();
    const started = deferred();
    start(stream, async () => {
      started.resolve();
      await release.promise;
    });
    await suite.publisher.publish(stream, { n: 1 });

    await started.promise;
    expect(await pendingCount(stream)).toBe(1);
    release.resolve();

    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the ack' });
  });

  it('acks each entry while the rest of its batch is still being handled', async () => {
    const stream = testStream();
    await publishRange(stream, 2);
    const secondStarted = deferred();
    const release = deferred();
    start(stream, async (event) => {
      if (event.n === 1) {
        secondStarted.resolve();
        await release.promise;
      }
    });

    await secondStarted.promise;

    // Entry 0 is acked although entry 1, read in the same batch, is still running.
    await waitFor(async () => (await pendingCount(stream)) === 1, { what: 'the ack of entry 0' });
    release.resolve();
    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the ack of entry 1' });
  });

  describe('when the handler throws', () => {
    it('leaves the entry pending and delivers it again', async () => {
      const stream = testStream();
      const deliveries: number[] = [];
      start(stream, (_event, { deliveryCount }) => {
        deliveries.push(deliveryCount);
        if (deliveryCount < 3) throw new Error('not yet');
      });

      await suite.publisher.publish(stream, { n: 1 });

      await waitFor(() => deliveries.length === 3, { what: 'three deliveries' });
      expect(deliveries).toEqual([1, 2, 3]);
      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the ack' });
      expect(await deadLetters(stream)).toEqual([]);
    });
  });

  it('gives every entry to each of two groups', async () => {
    const stream = testStream();
    const byGroup = { payments: [] as number[], notifications: [] as number[] };
    start(stream, (event) => void byGroup.payments.push(event.n), { group: 'payments' });
    start(stream, (event) => void byGroup.notifications.push(event.n), { group: 'notifications' });

    await publishRange(stream, 20);

    const expected = Array.from({ length: 20 }, (_, n) => n);
    await waitFor(() => byGroup.payments.length === 20 && byGroup.notifications.length === 20);
    await settle();
    expect(byGroup.payments).toEqual(expected);
    expect(byGroup.notifications).toEqual(expected);
  });

  it('splits the entries between two consumers of one group, none handled twice', async () => {
    const stream = testStream();
    const byConsumer = { a: [] as number[], b: [] as number[] };
    const slowly = (list: number[]) => async (event: { n: number }) => {
      list.push(event.n);
      await new Promise((resolve) => setTimeout(resolve, 2));
    };
    start(stream, slowly(byConsumer.a), { consumer: 'a' });
    start(stream, slowly(byConsumer.b), { consumer: 'b' });
    await groupCreated(stream);

    await publishRange(stream, 200);

    await waitFor(() => byConsumer.a.length + byConsumer.b.length === 200, { what: '200 events' });
    await settle();
    const all = [...byConsumer.a, ...byConsumer.b].sort((x, y) => x - y);
    expect(all).toEqual(Array.from({ length: 200 }, (_, n) => n));
    expect(byConsumer.a.length).toBeGreaterThan(0);
    expect(byConsumer.b.length).toBeGreaterThan(0);
  });
});

describe('close() under load', () => {
  it('acks every entry whose handler finished and leaves the rest to another consumer, none handled twice', async () => {
    const stream = testStream();
    await publishRange(stream, 60);
    const finished: number[] = [];
    const slow = (into: number[]) => async (event: { n: number }) => {
      await new Promise((resolve) => setTimeout(resolve, 10));
      into.push(event.n);
    };
    const first = start(stream, slow(finished), { consumer: 'first', count: 20 });
    await waitFor(() => finished.length >= 15);

    await first.close();

    const stillPending = await pendingCount(stream);
    const afterwards: number[] = [];
    start(stream, slow(afterwards), { consumer: 'second', claimIdleMs: 100 });
    await waitFor(
      async () => finished.length + afterwards.length === 60 && (await pendingCount(stream)) === 0,
      {
        what: 'all 60 handled',
      },
    );
    await settle();
    expect(stillPending).toBeGreaterThan(0);
    expect([...finished, ...afterwards].sort((x, y) => x - y)).toEqual(
      Array.from({ length: 60 }, (_, n) => n),
    );
  });
});
