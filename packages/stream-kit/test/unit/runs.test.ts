import { describe, expect, it } from 'vitest';
import { consumerContext } from '../../src/consumer/context.ts';
import { RunCounts, RUNS_TTL_MS } from '../../src/consumer/runs.ts';
import {
  addEntries,
  capturingLogger,
  commandStats,
  commandsBetween,
  pendingEntry,
  readAs,
  sleep,
  unitSuite,
} from './redis.ts';

const suite = unitSuite();

/** Run counts on a fresh group whose consumer holds one entry (`n=0`), read once. */
async function countsHoldingOne() {
  const part = await suite.part();
  const [id] = (await addEntries(suite.admin, part.stream.name, 1)) as [string];
  await readAs(suite.admin, part.stream.name, part.group, part.consumer);
  const runs = new RunCounts(part.ctx);
  const pending = () => pendingEntry(suite.admin, part.stream.name, part.group, id);
  const count = () => suite.admin.get(runs.key(id));
  return { ...part, id, runs, pending, count };
}

function text(fields: Buffer[]): string[] {
  return fields.map(String);
}

describe('RunCounts', () => {
  it("keeps the count of entry <id> in {<stream>}:runs:<group>:<id>, in the stream's hash slot", async () => {
    const { runs, stream, group } = await countsHoldingOne();

    expect(runs.key('1-2')).toBe(`{${stream.name}}:runs:${group}:1-2`);
  });

  describe('claim', () => {
    it('takes an entry idle long enough and counts its runs from 2 on, in a key that expires', async () => {
      const { runs, id, consumer, pending, count } = await countsHoldingOne();
      await sleep(30);

      const second = await runs.claim(id, 20);
      await sleep(30);
      const third = await runs.claim(id, 20);

      expect(second && { fields: text(second.fields), run: second.run }).toEqual({
        fields: ['n', '0'],
        run: 2,
      });
      expect(third && { fields: text(third.fields), run: third.run }).toEqual({ fields: ['n', '0'], run: 3 });
      expect(await count()).toBe('3');
      const ttl = await suite.admin.pttl(runs.key(id));
      expect(ttl).toBeGreaterThan(RUNS_TTL_MS - 60_000);
      expect(ttl).toBeLessThanOrEqual(RUNS_TTL_MS);
      const [, owner, idle, deliveries] = (await pending())!;
      expect([owner, deliveries]).toEqual([consumer, 3]);
      expect(idle).toBeLessThan(30);
      expect(runs.inRedisFor(id)).toBe(true);
    });

    it('counts on where another consumer left off when it takes the entry over', async () => {
      const { runs, id, stream, group, pending } = await countsHoldingOne();
      await runs.claim(id, 0);
      const taker = new RunCounts(
        consumerContext(suite.connect(), stream, group, 'taker', capturingLogger().logger),
      );

      const claimed = await taker.claim(id, 0);

      expect(claimed?.run).toBe(3);
      expect((await pending())?.[1]).toBe('taker');
    });

    it('forgets that the count sits in Redis once done', async () => {
      const { runs, id } = await countsHoldingOne();
      await runs.claim(id, 0);

      runs.done(id);

      expect(runs.inRedisFor(id)).toBe(false);
    });

    it('takes nothing and counts nothing when the entry has not been idle that long (not ours any more)', async () => {
      const { runs, id, consumer, pending, count } = await countsHoldingOne();

      const claimed = await runs.claim(id, 60_000);

      expect(claimed).toBeUndefined();
      expect(await count()).toBeNull();
      const [, owner, , deliveries] = (await pending())!;
      expect([owner, deliveries]).toEqual([consumer, 1]);
      expect(runs.inRedisFor(id)).toBe(false);
    });

    it('takes nothing and counts nothing for an entry deleted from the stream', async () => {
      const { runs, id, stream, count } = await countsHoldingOne();
      await suite.admin.xdel(stream.name, id);

      const claimed = await runs.claim(id, 0);

      expect(claimed).toBeUndefined();
      expect(await count()).toBeNull();
      expect(runs.inRedisFor(id)).toBe(false);
    });

    it('is refused as a whole while Redis is out of memory: neither claimed nor counted', async () => {
      const { runs, id, consumer, pending, count } = await countsHoldingOne();

      const claiming = suite.outOfMemory(() => runs.claim(id, 0));

      await expect(claiming).rejects.toThrow(/OOM/);
      expect(await count()).toBeNull();
      const [, owner, , deliveries] = (await pending())!;
      expect([owner, deliveries]).toEqual([consumer, 1]);
    });
  });

  describe('uncount and writeBack', () => {
    it('takes the runs that must not count off the count in Redis, keeping its expiry', async () => {
      const { runs, id, count } = await countsHoldingOne();
      await runs.claim(id, 0);
      await runs.claim(id, 0);

      runs.uncount(id);
      runs.uncount(id);
      const queued = runs.hasUncounted;
      await runs.writeBack();

      expect(queued).toBe(true);
      expect(await count()).toBe('1');
      expect(await suite.admin.pttl(runs.key(id))).toBeGreaterThan(RUNS_TTL_MS - 60_000);
      expect(runs.hasUncounted).toBe(false);
    });

    it('makes the next claim run 1 when the first run, never written, did not count', async () => {
      const { runs, id } = await countsHoldingOne();

      runs.uncount(id);
      await runs.writeBack();
      const claimed = await runs.claim(id, 0);

      expect(claimed?.run).toBe(1);
    });

    it('does nothing when nothing is queued', async () => {
      const { runs } = await countsHoldingOne();
      const before = await commandStats(suite.admin);

      await runs.writeBack(true);

      expect(commandsBetween(before, await commandStats(suite.admin))).toEqual({});
    });

    it('keeps the runs queued while Redis refuses them, and takes them off a second later', async () => {
      const { runs, id, count } = await countsHoldingOne();
      await runs.claim(id, 0);
      await runs.claim(id, 0);
      runs.uncount(id);

      await suite.outOfMemory(() => runs.writeBack());
      const afterRefusal = { count: await count(), queued: runs.hasUncounted };
      const before = await commandStats(suite.admin);
      await runs.writeBack();
      const tooSoon = {
        calls: commandsBetween(before, await commandStats(suite.admin)),
        count: await count(),
      };
      await sleep(1_050);
      await runs.writeBack();

      expect(afterRefusal).toEqual({ count: '3', queued: true });
      expect(tooSoon).toEqual({ count: '3', calls: {} });
      expect(await count()).toBe('2');
      expect(runs.hasUncounted).toBe(false);
    });

    it('tries again at once when forced (at close)', async () => {
      const { runs, id, count } = await countsHoldingOne();
      await runs.claim(id, 0);
      runs.uncount(id);
      await suite.outOfMemory(() => runs.writeBack());

      await runs.writeBack(true);

      expect(await count()).toBe('1');
      expect(runs.hasUncounted).toBe(false);
    });

    it('keeps runs uncounted while a write-back was under way for the next one', async () => {
      const { runs, id, count } = await countsHoldingOne();
      await runs.claim(id, 0);
      await runs.claim(id, 0);
      runs.uncount(id);

      const writing = runs.writeBack();
      runs.uncount(id);
      await writing;
      const queued = runs.hasUncounted;
      await runs.writeBack();

      expect(queued).toBe(true);
      expect(await count()).toBe('1');
      expect(runs.hasUncounted).toBe(false);
    });
  });
});
