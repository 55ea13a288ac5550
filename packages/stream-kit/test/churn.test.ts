import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { z } from 'zod';
import { waitFor } from '../../../harness/wait.ts';
import { createPublisher, defineStream, subscribe, type Subscription } from '../src/index.ts';
import { keyedRandom, mulberry32 } from '../../../harness/random.ts';
import { testSeed } from './seeded-random.ts';

/*
 * Many consumers of one group come and go (closed mid-batch, back under new names, as restarted
 * processes are) while handlers fail at random. Whatever the interleaving: every entry succeeds
 * exactly once, no entry is ever in two handlers at once, and nothing is left pending.
 *
 * The draws come from a seed: each run of an entry's handler draws its delay and its failure from
 * (seed, entry, run), and the churn picks the consumers it stops from the seed. A failure prints
 * its SEED; run again with it, every entry meets the same failures and delays (the timing of
 * Redis and of the consumers' reads still varies).
 */

const redisUrl = inject('redisUrl');
let redis: Redis;
beforeAll(() => {
  redis = new Redis(redisUrl);
});
afterAll(async () => {
  await redis.quit();
});

describe('a consumer group under churn and failing handlers', () => {
  it(
    'handles every entry successfully exactly once, never twice at the same time',
    { timeout: 60_000 },
    async () => {
      const stream = defineStream({
        name: `churn-${randomUUID()}`,
        schema: z.object({ n: z.string().regex(/^\d+$/).transform(Number) }),
      });
      const seed = testSeed();
      const total = 200;
      const runs = new Map<number, number>();
      const succeeded = new Map<number, number>();
      const inFlight = new Set<number>();
      const overlaps: number[] = [];
      const handler = async (event: { n: number }) => {
        if (inFlight.has(event.n)) overlaps.push(event.n);
        inFlight.add(event.n);
        const run = (runs.get(event.n) ?? 0) + 1;
        runs.set(event.n, run);
        const random = keyedRandom(seed, event.n, run);
        try {
          await new Promise((resolve) => setTimeout(resolve, random() * 40));
          if (random() < 0.2) throw new Error('flaky dependency');
          succeeded.set(event.n, (succeeded.get(event.n) ?? 0) + 1);
        } finally {
          inFlight.delete(event.n);
        }
      };
      let generation = 0;
      const open = (): Subscription =>
        subscribe('g', `consumer-${(generation += 1)}`, stream, handler, {
          connection: redisUrl,
          count: 10,
          blockMs: 100,
          retryDelayMs: 10,
          maxDeliveries: 50,
          claimIdleMs: 300,
        });
      const consumers = [open(), open(), open()];
      const publisher = createPublisher({ connection: redisUrl });
      try {
        for (let n = 0; n < total; n += 1) await publisher.publish(stream, { n });
        // Churn: every 150 ms one consumer stops and a new one (a new name) takes its place.
        const churn = mulberry32(seed);
        for (let round = 0; round < 12; round += 1) {
          await new Promise((resolve) => setTimeout(resolve, 150));
          const victim = Math.floor(churn() * consumers.length);
          await consumers[victim]!.close();
          consumers[victim] = open();
        }

        await waitFor(
          async () => {
            const [pending] = (await redis.xpending(stream.name, 'g')) as [number];
            return succeeded.size === total && pending === 0;
          },
          { timeoutMs: 40_000, what: 'every entry handled and nothing pending' },
        );

        expect(overlaps).toEqual([]);
        expect([...succeeded.values()].every((count) => count === 1)).toBe(true);
        expect(await redis.xlen(`${stream.name}:dlq`)).toBe(0);
      } finally {
        await Promise.all(consumers.map((consumer) => consumer.close()));
        await publisher.close();
      }
    },
  );
});
