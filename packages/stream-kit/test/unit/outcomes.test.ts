import { describe, expect, it } from 'vitest';
import { ServerClock } from '../../src/clock.ts';
import { AckBatcher } from '../../src/consumer/acks.ts';
import { Delivery, type Outcome } from '../../src/consumer/delivery.ts';
import { LeaseKeeper } from '../../src/consumer/leases.ts';
import { OutcomeApplier, type OutcomeParts } from '../../src/consumer/outcomes.ts';
import { redeliver } from '../../src/consumer/reclaim.ts';
import { retryDelay, RetrySchedule } from '../../src/consumer/retry-policy.ts';
import { RunCounts } from '../../src/consumer/runs.ts';
import { DeadLetterError, listDeadLetters } from '../../src/dead-letters.ts';
import { defaultDeadLetterStream } from '../../src/stream.ts';
import { commandCalls, pendingEntry, pendingOf, readAs, unitSuite } from './redis.ts';

const suite = unitSuite();

/**
 * An applier on a fresh group whose consumer holds one entry with `fields`, claimed once more
 * (run 2, its count in Redis) and tracked, as the loop holds an entry it redelivers.
 */
async function applierHolding(fields: (string | Buffer)[], { handlerAcks = false } = {}) {
  const part = await suite.part();
  const { stream, group, consumer, ctx } = part;
  const id = (await suite.admin.xadd(stream.name, '*', ...fields))!;
  await readAs(suite.admin, stream.name, group, consumer);
  const leases = new LeaseKeeper(ctx, 60_000, () => false);
  suite.afterTest(() => leases.close());
  const parts: OutcomeParts = {
    leases,
    acks: new AckBatcher(ctx),
    runs: new RunCounts(ctx),
    retries: new RetrySchedule(1_000),
  };
  const claimed = (await parts.runs.claim(id, 0))!;
  leases.track(id);
  const deadLetterStream = defaultDeadLetterStream(stream);
  const applier = new OutcomeApplier(ctx, parts, { handlerAcks, deadLetterStream });
  return {
    ...part,
    id,
    flat: claimed.fields,
    run: claimed.run,
    parts,
    applier,
    deadLetterStream,
    pending: () => pendingEntry(suite.admin, stream.name, group, id),
    runCount: async () => {
      // Run counts are deleted without awaiting the answer: one command after it on the same
      // connection answers after it.
      await ctx.redis.ping();
      return suite.admin.get(parts.runs.key(id));
    },
  };
}

/** Whether the retry schedule still remembers `id` (a forgotten one is worked out afresh). */
function remembers(retries: RetrySchedule, id: string): boolean {
  return retries.dueAt(id, 1, 0, 0) !== retryDelay(1_000, 1);
}

describe('OutcomeApplier', () => {
  describe('deadLetter', () => {
    it('copies the entry to the dead-letter stream with where it came from and why, then acks it', async () => {
      const held = await applierHolding(['n', '7', 'note', 'x']);
      held.parts.retries.failed(held.id, 1);

      await held.applier.deadLetter(held.id, held.flat, held.run, 'invalid entry: n: too big');

      expect(await listDeadLetters(suite.admin, held.stream)).toEqual([
        {
          id: expect.any(String),
          entryId: held.id,
          group: held.group,
          consumer: held.consumer,
          deliveries: 2,
          reason: 'invalid entry: n: too big',
          fields: { n: '7', note: 'x' },
        },
      ]);
      const [[, raw]] = (await suite.admin.xrange(held.deadLetterStream, '-', '+')) as [[string, string[]]];
      expect(raw.slice(raw.indexOf('dlq:stream'), raw.indexOf('dlq:stream') + 2)).toEqual([
        'dlq:stream',
        held.stream.name,
      ]);
      expect(await pendingOf(suite.admin, held.stream.name, held.group)).toEqual([]);
      expect(await held.runCount()).toBeNull();
      expect(held.parts.leases.holds(held.id)).toBe(false);
      expect(remembers(held.parts.retries, held.id)).toBe(false);
      expect(held.log.at('warn')).toMatchObject([
        {
          obj: {
            entryId: held.id,
            deadLetterStream: held.deadLetterStream,
            reason: 'invalid entry: n: too big',
          },
          msg: 'entry moved to the dead-letter stream',
        },
      ]);
    });

    it("keeps the entry's bytes as they are, UTF-8 or not", async () => {
      const bytes = Buffer.from([0x31, 0xff, 0xfe]);
      const held = await applierHolding(['n', bytes]);

      await held.applier.deadLetter(
        held.id,
        held.flat,
        held.run,
        'invalid entry: field "n" is not valid UTF-8',
      );

      const [[, raw]] = (await suite.admin.xrangeBuffer(held.deadLetterStream, '-', '+')) as [
        [Buffer, Buffer[]],
      ];
      expect(raw.slice(0, 2)).toEqual([Buffer.from('n'), bytes]);
    });

    describe('when the dead-letter stream refuses the write for a reason of its own', () => {
      it('leaves the entry pending, does not count the run and schedules a retry', async () => {
        const held = await applierHolding(['n', '7']);
        await suite.admin.set(held.deadLetterStream, 'not a stream');
        const xacksBefore = await commandCalls(suite.admin, 'xack');
        const before = Date.now();

        await held.applier.deadLetter(held.id, held.flat, held.run, 'non-retryable: no');

        expect(await commandCalls(suite.admin, 'xack')).toBe(xacksBefore);
        expect((await held.pending())?.[1]).toBe(held.consumer);
        expect(held.parts.runs.hasUncounted).toBe(true);
        await held.parts.runs.writeBack();
        expect(await held.runCount()).toBe('1');
        expect(held.parts.retries.nextAt).toBeGreaterThanOrEqual(before + retryDelay(1_000, held.run));
        expect(held.parts.retries.nextAt).toBeLessThanOrEqual(Date.now() + retryDelay(1_000, held.run));
        expect(held.log.at('warn')).toMatchObject([
          {
            obj: {
              entryId: held.id,
              err: expect.objectContaining({ message: expect.stringMatching(/^WRONGTYPE/) }),
            },
            msg: 'cannot write to the dead-letter stream; entry stays pending',
          },
        ]);
      });
    });

    describe('when Redis itself refuses the write', () => {
      it('throws the fault, leaving the entry pending and its retry to the loop', async () => {
        const held = await applierHolding(['n', '7']);

        const writing = suite.outOfMemory(() =>
          held.applier.deadLetter(held.id, held.flat, held.run, 'non-retryable: no'),
        );

        const err = await writing.then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toBeInstanceOf(Error);
        expect(err).not.toBeInstanceOf(DeadLetterError);
        expect((err as Error).message).toMatch(/^OOM/);
        expect((await held.pending())?.[1]).toBe(held.consumer);
        expect(await suite.admin.exists(held.deadLetterStream)).toBe(0);
        expect(held.parts.retries.nextAt).toBe(0);
        expect(held.parts.runs.hasUncounted).toBe(false);
        expect(await held.runCount()).toBe('2');
      });
    });
  });

  describe('apply', () => {
    it('acks the entry, deletes its run count and lets go of it', async () => {
      const held = await applierHolding(['n', '7']);
      held.parts.retries.failed(held.id, 1);

      held.applier.apply(held.id, held.run, { kind: 'ack' });
      await held.parts.acks.flush();

      expect(await pendingOf(suite.admin, held.stream.name, held.group)).toEqual([]);
      expect(await held.runCount()).toBeNull();
      expect(held.parts.leases.holds(held.id)).toBe(false);
      expect(remembers(held.parts.retries, held.id)).toBe(false);
    });

    it('with handlerAcks, queues no XACK: an entry its handler did not ack stays pending', async () => {
      const held = await applierHolding(['n', '7'], { handlerAcks: true });
      const xacksBefore = await commandCalls(suite.admin, 'xack');

      held.applier.apply(held.id, held.run, { kind: 'ack' });
      await held.parts.acks.flush();

      expect(await commandCalls(suite.admin, 'xack')).toBe(xacksBefore);
      expect((await held.pending())?.[1]).toBe(held.consumer);
      expect(held.parts.leases.holds(held.id)).toBe(false);
    });

    it('with handlerAcks, deletes the run count of an entry its handler acked', async () => {
      const held = await applierHolding(['n', '7'], { handlerAcks: true });
      await suite.admin.xack(held.stream.name, held.group, held.id);

      held.applier.apply(held.id, held.run, { kind: 'ack' });

      expect(await held.runCount()).toBeNull();
    });

    it('with handlerAcks, keeps the run count of an entry its handler did not ack', async () => {
      const held = await applierHolding(['n', '7'], { handlerAcks: true });

      held.applier.apply(held.id, held.run, { kind: 'ack' });

      expect(await held.runCount()).toBe('2');
    });

    it('schedules the retry of a run that counts, keeping its count and lease', async () => {
      const held = await applierHolding(['n', '7']);
      const before = Date.now();

      held.applier.apply(held.id, held.run, { kind: 'retry', counts: true });
      await held.parts.acks.flush();

      expect(held.parts.retries.nextAt).toBeGreaterThanOrEqual(before + retryDelay(1_000, held.run));
      expect(held.parts.runs.hasUncounted).toBe(false);
      expect(await held.runCount()).toBe('2');
      expect((await held.pending())?.[1]).toBe(held.consumer);
      expect(held.parts.leases.holds(held.id)).toBe(true);
    });

    it('takes a run that does not count off the count', async () => {
      const held = await applierHolding(['n', '7']);

      held.applier.apply(held.id, held.run, { kind: 'retry', counts: false });
      await held.parts.runs.writeBack();

      expect(await held.runCount()).toBe('1');
      expect(held.parts.retries.nextAt).toBeGreaterThan(0);
    });
  });

  /*
   * A handler subscribed with handlerAcks that resolves without acking leaves its entry pending:
   * its run count must stay, or every redelivery would be run 2 and it would never be
   * dead-lettered.
   */
  it('with handlerAcks, counts on the runs of an entry its handler resolves without acking, and dead-letters it after maxDeliveries', async () => {
    const held = await applierHolding(['n', '7'], { handlerAcks: true });
    const maxDeliveries = 3;
    const delivery = new Delivery(held.ctx, () => {}, maxDeliveries, new ServerClock(held.ctx.redis), {
      epoch: () => 0,
      holds: () => true,
    });
    const runs: number[] = [];
    const outcomes: Outcome['kind'][] = [];
    // Run 2 was claimed by applierHolding: apply it, then redeliver as the loop's pending pass would.
    held.applier.apply(held.id, held.run, { kind: 'ack' });
    held.parts.runs.done(held.id);
    await held.parts.acks.flush();

    for (let pass = 0; pass < 3; pass += 1) {
      await redeliver(held.ctx, held.parts, held.id, 0, async (fields, run) => {
        runs.push(run);
        const outcome = await delivery.run(held.id, fields, run, false);
        outcomes.push(outcome.kind);
        if (outcome.kind === 'dead-letter')
          await held.applier.deadLetter(held.id, fields, run, outcome.reason);
        else held.applier.apply(held.id, run, outcome);
      });
      await held.parts.acks.flush();
    }

    expect(runs).toEqual([3, 4]);
    expect(outcomes).toEqual(['ack', 'dead-letter']);
    expect(await listDeadLetters(suite.admin, held.stream)).toMatchObject([
      { entryId: held.id, reason: expect.stringMatching(/^not acked after 3 runs/) },
    ]);
  });
});
