import { describe, expect, it } from 'vitest';
import { ServerClock } from '../../src/clock.ts';
import { Delivery, type Tenure, type DeliveryContext, type Handler } from '../../src/consumer/delivery.ts';
import { NonRetryableError, RetryLaterError } from '../../src/errors.ts';
import { commandStats, commandsBetween, unitSuite } from './redis.ts';

const suite = unitSuite();

const ID = '1700000000000-0';
const OOM = "OOM command not allowed when used memory > 'maxmemory'.";

/** Field names and values in turn, as Redis sends them: strings as UTF-8, buffers as they are. */
function flat(...parts: (string | Buffer)[]): Buffer[] {
  return parts.map((part) => (typeof part === 'string' ? Buffer.from(part) : part));
}

/** A tenure whose epoch and lost entries a test sets. */
function testTenure() {
  const state = { epoch: 0, lost: new Set<string>() };
  const tenure: Tenure = {
    epoch: () => state.epoch,
    holds: (id, epoch) => epoch === state.epoch && !state.lost.has(id),
  };
  return { state, tenure };
}

/** A Delivery with at most `maxDeliveries` runs, recording the handler's calls. */
async function deliveryOf(
  handler: Handler<unknown> = () => {},
  maxDeliveries = 3,
  tenure: Tenure = testTenure().tenure,
) {
  const part = await suite.part({ createGroup: false });
  const calls: [event: unknown, context: DeliveryContext][] = [];
  const delivery = new Delivery(
    part.ctx,
    (event, context) => {
      calls.push([event, context]);
      return handler(event, context);
    },
    maxDeliveries,
    new ServerClock(part.ctx.redis),
    tenure,
  );
  return { ...part, delivery, calls };
}

function throwing(err: unknown): Handler<unknown> {
  return () => {
    throw err;
  };
}

describe('Delivery', () => {
  describe('a valid entry', () => {
    it('is acked when the handler resolves, and the handler gets the event and where it came from', async () => {
      const { delivery, calls, stream, group, consumer } = await deliveryOf(async () => {});

      const outcome = await delivery.run(ID, flat('n', '42', 'note', 'hi'), 2, false);

      expect(outcome).toEqual({ kind: 'ack' });
      expect(calls).toHaveLength(1);
      const [event, context] = calls[0]!;
      expect(event).toEqual({ n: 42, note: 'hi' });
      // Its own fields are exactly these: a handler that logs or spreads it sees nothing else.
      expect({ ...context }).toEqual({ id: ID, stream: stream.name, group, consumer, deliveryCount: 2 });
      expect(context.stillHeld()).toBe(true);
    });

    it("tells the handler it no longer holds the entry once the consumer's liveness had a gap since the run began, or the entry was lost", async () => {
      const { state, tenure } = testTenure();
      const seen: boolean[] = [];
      const { delivery } = await deliveryOf(
        async (_event, context) => {
          seen.push(context.stillHeld());
          state.epoch += 1; // a gap while the handler runs
          seen.push(context.stillHeld());
        },
        3,
        tenure,
      );
      await delivery.run(ID, flat('n', '1'), 1, false);
      state.lost.add('2-0');
      const lost = await deliveryOf(
        async (_event, context) => void seen.push(context.stillHeld()),
        3,
        tenure,
      );
      await lost.delivery.run('2-0', flat('n', '1'), 1, false);

      expect(seen).toEqual([true, false, false]);
    });

    it('is acked with a value that holds U+FFFD itself, which is valid UTF-8', async () => {
      const { delivery, calls } = await deliveryOf();

      const outcome = await delivery.run(ID, flat('n', '1', 'note', 'a\uFFFDb'), 1, false);

      expect(outcome).toEqual({ kind: 'ack' });
      expect(calls[0]?.[0]).toEqual({ n: 1, note: 'a\uFFFDb' });
    });
  });

  describe('an invalid entry', () => {
    it('is dead-lettered with the schema issue, without calling the handler', async () => {
      const { delivery, calls } = await deliveryOf();

      const outcome = await delivery.run(ID, flat('n', 'x'), 1, false);

      expect(outcome).toEqual({ kind: 'dead-letter', reason: 'invalid entry: n: must be digits' });
      expect(calls).toEqual([]);
    });

    it('is dead-lettered when a field is missing', async () => {
      const { delivery } = await deliveryOf();

      const outcome = await delivery.run(ID, flat('note', 'no n'), 1, false);

      expect(outcome).toMatchObject({
        kind: 'dead-letter',
        reason: expect.stringMatching(/^invalid entry: n: /),
      });
    });

    it('is dead-lettered when a value is not valid UTF-8, naming the field', async () => {
      const { delivery, calls } = await deliveryOf();

      const outcome = await delivery.run(ID, flat('n', Buffer.from([0x31, 0xff])), 1, false);

      expect(outcome).toEqual({ kind: 'dead-letter', reason: 'invalid entry: field "n" is not valid UTF-8' });
      expect(calls).toEqual([]);
    });

    it('is dead-lettered when a field name is not valid UTF-8', async () => {
      const { delivery } = await deliveryOf();

      const outcome = await delivery.run(ID, flat('n', '1', Buffer.from([0xc3, 0x28]), 'x'), 1, false);

      expect(outcome).toEqual({
        kind: 'dead-letter',
        reason: 'invalid entry: a field name is not valid UTF-8',
      });
    });
  });

  describe('when the handler throws', () => {
    it('dead-letters the entry at once on NonRetryableError', async () => {
      const { delivery } = await deliveryOf(throwing(new NonRetryableError('never payable')));

      const outcome = await delivery.run(ID, flat('n', '1'), 1, false);

      expect(outcome).toEqual({ kind: 'dead-letter', reason: 'non-retryable: never payable' });
    });

    it('retries without counting the run on RetryLaterError, even at the last run', async () => {
      const { delivery, log } = await deliveryOf(throwing(new RetryLaterError('lease held elsewhere')), 3);

      const outcome = await delivery.run(ID, flat('n', '1'), 3, false);

      expect(outcome).toEqual({ kind: 'retry', counts: false });
      expect(log.at('debug')).toMatchObject([{ obj: { entryId: ID }, msg: 'handler asked to retry later' }]);
      expect(log.at('warn')).toEqual([]);
    });

    it('retries, counting the run, on another error below maxDeliveries, and warns', async () => {
      const { delivery, log } = await deliveryOf(throwing(new Error('boom')), 3);

      const outcome = await delivery.run(ID, flat('n', '1'), 2, false);

      expect(outcome).toEqual({ kind: 'retry', counts: true });
      expect(log.at('warn')).toMatchObject([
        {
          obj: { entryId: ID, deliveryCount: 2 },
          msg: 'handler failed; entry stays pending for another delivery',
        },
      ]);
    });

    it('dead-letters the entry when run number maxDeliveries fails', async () => {
      const { delivery } = await deliveryOf(throwing(new Error('boom')), 3);

      const outcome = await delivery.run(ID, flat('n', '1'), 3, false);

      expect(outcome).toEqual({ kind: 'dead-letter', reason: 'failed 3 runs of its handler: boom' });
    });

    it('describes a thrown value that is not an Error', async () => {
      const { delivery } = await deliveryOf(throwing('plain string'), 1);

      const outcome = await delivery.run(ID, flat('n', '1'), 1, false);

      expect(outcome).toEqual({ kind: 'dead-letter', reason: 'failed 1 runs of its handler: plain string' });
    });

    it('throws a Redis fault on, even at the last run: not the entry’s fault', async () => {
      const fault = new Error(OOM);
      const { delivery } = await deliveryOf(throwing(fault), 3);

      await expect(delivery.run(ID, flat('n', '1'), 3, false)).rejects.toBe(fault);
    });

    it('throws on a Redis fault wrapped as the cause of another error', async () => {
      const wrapped = new Error('cannot record payment', { cause: new Error(OOM) });
      const { delivery } = await deliveryOf(throwing(wrapped), 3);

      await expect(delivery.run(ID, flat('n', '1'), 1, false)).rejects.toBe(wrapped);
    });
  });

  it('dead-letters an entry taken more than maxDeliveries times without calling the handler', async () => {
    const { delivery, calls } = await deliveryOf(async () => {}, 3);

    const outcome = await delivery.run(ID, flat('n', '1'), 4, false);

    expect(outcome).toEqual({
      kind: 'dead-letter',
      reason: 'not acked after 3 runs of its handler (its consumers died or stalled before finishing)',
    });
    expect(calls).toEqual([]);
  });

  describe('an entry ID ahead of the clock', () => {
    it('is dead-lettered after one look at the server clock, without calling the handler', async () => {
      const { delivery, calls } = await deliveryOf();
      const ahead = `${Date.now() + 3_600_000}-0`;
      const before = await commandStats(suite.admin);

      const outcome = await delivery.run(ahead, flat('n', '1'), 1, true);

      expect(commandsBetween(before, await commandStats(suite.admin))).toEqual({ time: 1 });
      expect(outcome).toMatchObject({
        kind: 'dead-letter',
        reason: expect.stringMatching(
          new RegExp(
            `^entry ID ahead of the clock: ${ahead} is \\d+ ms ahead of the server clock \\(more than 300000 ms\\)$`,
          ),
        ),
      });
      expect(calls).toEqual([]);
    });

    it('is handled when the caller knows it is not ahead', async () => {
      const { delivery, calls } = await deliveryOf();

      const outcome = await delivery.run(`${Date.now() + 3_600_000}-0`, flat('n', '1'), 1, false);

      expect(outcome).toEqual({ kind: 'ack' });
      expect(calls).toHaveLength(1);
    });
  });

  it('writes nothing to Redis, whatever the outcome', async () => {
    const outcomes: string[] = [];
    const keysBefore = await suite.admin.dbsize();
    const before = await commandStats(suite.admin);

    for (const handler of [
      () => {},
      throwing(new Error('boom')),
      throwing(new NonRetryableError('no')),
      throwing(new RetryLaterError('later')),
    ]) {
      const { delivery } = await deliveryOf(handler, 2);
      for (const [fields, run] of [
        [flat('n', '1'), 1],
        [flat('n', '1'), 2],
        [flat('n', '1'), 3],
        [flat('n', 'x'), 1],
      ] as const)
        outcomes.push((await delivery.run(ID, fields, run, true)).kind);
    }

    expect(new Set(outcomes)).toEqual(new Set(['ack', 'retry', 'dead-letter']));
    expect(commandsBetween(before, await commandStats(suite.admin))).toEqual({});
    expect(await suite.admin.dbsize()).toBe(keysBefore);
  });
});
