import { describe, expect, it } from 'vitest';
import { deferred, waitFor } from '../../../../harness/wait.ts';
import { contractSuite, settle, testStream } from './setup.ts';

/*
 * The consumer group: created by the first subscription, at the start of the stream or at '$';
 * and when it disappears (XGROUP DESTROY here; a FLUSHALL in redis-trouble.test.ts), recreated
 * where it stood at the last look, so that the entries it had handed out and not seen acked are
 * handed out again, and acked ones are not.
 */

const suite = contractSuite();
const { start, publishRange, groupCreated } = suite;

describe('when the group does not exist yet', () => {
  it('reads the entries published before the group existed', async () => {
    const stream = testStream();
    await publishRange(stream, 3);
    const seen: number[] = [];

    start(stream, (event) => void seen.push(event.n));

    await waitFor(() => seen.length === 3, { what: 'the earlier entries' });
    expect(seen).toEqual([0, 1, 2]);
  });

  it("skips earlier entries when the group starts at '$'", async () => {
    const stream = testStream();
    await publishRange(stream, 3);
    const seen: number[] = [];
    start(stream, (event) => void seen.push(event.n), { startId: '$' });
    await groupCreated(stream);

    await suite.publisher.publish(stream, { n: 99 });

    await waitFor(() => seen.length === 1);
    expect(seen).toEqual([99]);
  });
});

describe('when the consumer group disappears', () => {
  it('recreates the group where it was at its last look and keeps consuming', async () => {
    const stream = testStream();
    const seen: number[] = [];
    // A reclaim pass (every claimIdleMs / 2) notes where the group stands.
    start(stream, (event) => void seen.push(event.n), { claimIdleMs: 100 });
    await suite.publisher.publish(stream, { n: 1 });
    await waitFor(() => seen.length === 1);
    await new Promise((resolve) => setTimeout(resolve, 200));

    await suite.redis.xgroup('DESTROY', stream.name, 'g');
    await suite.publisher.publish(stream, { n: 2 });

    await waitFor(() => seen.includes(2), { what: 'the entry after NOGROUP' });
    await settle();
    // Entry 1 was acked before the last look: it is not handed out again.
    expect(seen).toEqual([1, 2]);
  });

  it('hands out again the entries a crashed consumer held, and not those acked before', async () => {
    const stream = testStream();
    const seen: number[] = [];
    const gate = deferred();
    const atGate = deferred();
    // claimIdleMs 4 s: a look at the group every 2 s, and no takeover of the crashed
    // consumer's entries before the group is destroyed.
    start(
      stream,
      async (event) => {
        if (event.n === 2) {
          atGate.resolve();
          await gate.promise;
        }
        seen.push(event.n);
      },
      { consumer: 'alive', claimIdleMs: 4_000 },
    );
    await groupCreated(stream);
    await publishRange(stream, 3);
    await atGate.promise;
    // While the live consumer is busy with entry 2, another reads entries 3 and 4 and dies.
    await suite.publisher.publish(stream, { n: 3 });
    await suite.publisher.publish(stream, { n: 4 });
    const taken = (await suite.redis.xreadgroup('GROUP', 'g', 'crashed', 'STREAMS', stream.name, '>')) as [
      string,
      unknown[],
    ][];
    expect(taken[0]![1]).toHaveLength(2);
    gate.resolve();
    await waitFor(() => seen.length === 3);
    // Time for a look at the group after entry 2 was acked.
    await new Promise((resolve) => setTimeout(resolve, 2_300));

    await suite.redis.xgroup('DESTROY', stream.name, 'g');
    await suite.publisher.publish(stream, { n: 5 });

    await waitFor(() => seen.includes(5), { what: 'the entry after NOGROUP' });
    await settle();
    expect(seen).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('recreates it before an entry still waiting for a retry, so that entry is not lost', async () => {
    const stream = testStream();
    const attempts: number[] = [];
    start(
      stream,
      (event) => {
        attempts.push(event.n);
        if (event.n === 0 && attempts.filter((n) => n === 0).length === 1) throw new Error('once');
      },
      { retryDelayMs: 500 },
    );
    await publishRange(stream, 2);
    await waitFor(() => attempts.includes(1));

    await suite.redis.xgroup('DESTROY', stream.name, 'g');
    await suite.publisher.publish(stream, { n: 2 });

    await waitFor(() => attempts.filter((n) => n === 0).length === 2, { what: 'entry 0 again' });
    await waitFor(() => attempts.includes(2));
  });

  it('recreates it where the group stood even before reading anything new', async () => {
    const stream = testStream();
    await publishRange(stream, 3);
    const handledByFirst: number[] = [];
    const first = start(stream, (event) => void handledByFirst.push(event.n), { consumer: 'first' });
    await waitFor(() => handledByFirst.length === 3);
    await waitFor(async () => {
      const [group] = (await suite.redis.xinfo('GROUPS', stream.name)) as string[][];
      return group?.includes('0-0') === false;
    });
    await first.close();
    const seen: number[] = [];
    start(stream, (event) => void seen.push(event.n), { consumer: 'second' });
    // Its connection blocked in XREADGROUP shows it is past start-up and waiting for new entries.
    await waitFor(
      async () =>
        ((await suite.redis.client('LIST')) as string)
          .split('\n')
          .some((line) => line.includes(' name=stream-kit:g:second ') && line.includes('cmd=xreadgroup')),
      { what: 'the second subscription to start reading' },
    );

    await suite.redis.xgroup('DESTROY', stream.name, 'g');
    await suite.publisher.publish(stream, { n: 3 });

    await waitFor(() => seen.length > 0, { what: 'the entry after NOGROUP' });
    await settle();
    expect(seen).toEqual([3]);
  });
});
