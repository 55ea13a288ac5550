import type { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../../../../harness/wait.ts';
import { NonRetryableError, type DeliveryContext } from '../../src/index.ts';
import { defineScript } from '../../src/lua.ts';
import { contractSuite, settle, testStream } from './setup.ts';

/*
 * One way to ack, chosen per subscription: the subscription acks after the handler resolves (the
 * default), or, with `handlerAcks`, the handler acks in the same atomic script as its effect and
 * the subscription sends no XACK of its own.
 */

const suite = contractSuite();
const { start, publishRange, pendingCount, deadLetters } = suite;

/** Records the effect and acks the entry in one step, as payment-service and notification-service do. */
const RECORD_AND_ACK = `
redis.call('RPUSH', KEYS[1], ARGV[3])
return redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
`;

function recordAndAck(redis: Redis, effects: string) {
  const run = defineScript<number>(redis, 'recordAndAck', 2, RECORD_AND_ACK);
  return (context: DeliveryContext, what: string) =>
    run(effects, context.stream, context.group, context.id, what);
}

/** How many XACK commands this server has run so far, from clients and scripts alike. */
async function xackCalls(redis: Redis): Promise<number> {
  const stats = await redis.info('commandstats');
  return Number(/^cmdstat_xack:calls=(\d+)/m.exec(stats)?.[1] ?? 0);
}

describe('acknowledgement', () => {
  describe('by default', () => {
    it('acks each entry once its handler resolves, with one XACK for the batch', async () => {
      const stream = testStream();
      let handled = 0;
      const before = await xackCalls(suite.redis);
      start(stream, () => void (handled += 1), { count: 10 });

      await publishRange(stream, 1);
      await waitFor(() => handled === 1, { what: 'the handler' });
      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the ack' });

      expect(await xackCalls(suite.redis)).toBe(before + 1);
    });

    it('acks a second time after a handler that acked in its own script: the reason for handlerAcks', async () => {
      const stream = testStream();
      const effects = `${stream.name}:effects`;
      const ack = recordAndAck(suite.redis, effects);
      const before = await xackCalls(suite.redis);
      start(stream, (event, context) => ack(context, String(event.n)).then(() => {}));

      await publishRange(stream, 1);
      await waitFor(async () => (await suite.redis.llen(effects)) === 1, { what: 'the effect' });
      await waitFor(async () => (await xackCalls(suite.redis)) === before + 2, { what: 'the second XACK' });
    });
  });

  describe('with handlerAcks', () => {
    it('sends no XACK of its own: the handler acked in the same script as its effect', async () => {
      const stream = testStream();
      const effects = `${stream.name}:effects`;
      const ack = recordAndAck(suite.redis, effects);
      const before = await xackCalls(suite.redis);
      start(stream, (event, context) => ack(context, String(event.n)).then(() => {}), { handlerAcks: true });

      await publishRange(stream, 3);
      await waitFor(async () => (await suite.redis.llen(effects)) === 3, { what: 'three effects' });
      await settle();

      expect(await pendingCount(stream)).toBe(0);
      expect(await xackCalls(suite.redis)).toBe(before + 3);
      expect(await suite.redis.lrange(effects, 0, -1)).toEqual(['0', '1', '2']);
    });

    it('leaves pending the entry of a handler that resolved without acking it', async () => {
      const stream = testStream();
      let handled = 0;
      start(stream, () => void (handled += 1), { handlerAcks: true });

      await publishRange(stream, 1);
      await waitFor(() => handled === 1, { what: 'the handler' });
      await settle();

      expect(await pendingCount(stream)).toBe(1);
    });

    it('handles an entry its handler never acks again, counting each run, and dead-letters it after maxDeliveries', async () => {
      const stream = testStream();
      const runs: number[] = [];
      start(stream, (_, context) => void runs.push(context.deliveryCount), {
        handlerAcks: true,
        claimIdleMs: 100,
        maxDeliveries: 3,
      });

      await publishRange(stream, 1);
      await waitFor(async () => (await deadLetters(stream)).length === 1, { what: 'the dead letter' });

      expect(runs).toEqual([1, 2, 3]);
      expect((await deadLetters(stream))[0]?.['dlq:reason']).toMatch(/^not acked after 3 runs/);
      expect(await pendingCount(stream)).toBe(0);
    });

    it('still dead-letters and acks an entry the handler gave up on', async () => {
      const stream = testStream();
      start(
        stream,
        () => {
          throw new NonRetryableError('never payable');
        },
        { handlerAcks: true },
      );

      await publishRange(stream, 1);
      await waitFor(async () => (await deadLetters(stream)).length === 1, { what: 'the dead letter' });
      await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the ack of the dead letter' });

      expect((await deadLetters(stream))[0]).toMatchObject({
        n: '0',
        'dlq:reason': 'non-retryable: never payable',
      });
    });
  });
});
