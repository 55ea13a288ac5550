import { describe, expect, it } from 'vitest';
import { waitFor } from '../../../../harness/wait.ts';
import { LeaseKeeper } from '../../src/consumer/leases.ts';
import { addEntries, commandCalls, pendingEntry, readAs, sleep, unitSuite, type Part } from './redis.ts';

const suite = unitSuite();

/** A keeper on a fresh group whose consumer holds `count` entries, read just now. */
async function keeperHolding(
  count: number,
  claimIdleMs: number,
  isRunning: (id: string) => boolean = () => false,
) {
  const part = await suite.part();
  await addEntries(suite.admin, part.stream.name, count);
  const keeper = new LeaseKeeper(part.ctx, claimIdleMs, isRunning);
  suite.afterTest(() => keeper.close());
  const entries = await readAs(suite.admin, part.stream.name, part.group, part.consumer);
  const readAt = Date.now();
  return { ...part, keeper, ids: entries.map(([id]) => id), readAt };
}

/** The highest idle time XPENDING reports for `id` while sampling it for `ms`. */
async function maxIdleOver(part: Part, id: string, ms: number): Promise<number> {
  let max = 0;
  for (const end = Date.now() + ms; Date.now() < end; await sleep(40)) {
    const row = await pendingEntry(suite.admin, part.stream.name, part.group, id);
    max = Math.max(max, row?.[2] ?? Infinity);
  }
  return max;
}

async function idleOf(part: Part, id: string): Promise<number> {
  return (await pendingEntry(suite.admin, part.stream.name, part.group, id))![2];
}

describe('LeaseKeeper', () => {
  describe('while an entry is tracked', () => {
    it('renews its lease so that its idle time stays below claimIdleMs, without counting a delivery', async () => {
      const part = await keeperHolding(1, 450);
      const [id] = part.ids as [string];

      part.keeper.track(id, part.readAt);
      const maxIdle = await maxIdleOver(part, id, 900);

      expect(maxIdle).toBeLessThan(450);
      const [, owner, , deliveries] = (await pendingEntry(suite.admin, part.stream.name, part.group, id))!;
      expect(owner).toBe(part.consumer);
      expect(deliveries).toBe(1);
      expect(part.keeper.holds(id)).toBe(true);
    });

    it('does not renew an entry it does not track, nor one untracked', async () => {
      const part = await keeperHolding(3, 450);
      const [tracked, neverTracked, untracked] = part.ids as [string, string, string];

      part.keeper.track(tracked, part.readAt);
      part.keeper.track(untracked, part.readAt);
      part.keeper.untrack(untracked);
      await sleep(700);

      expect(await idleOf(part, tracked)).toBeLessThan(450);
      expect(await idleOf(part, neverTracked)).toBeGreaterThanOrEqual(650);
      expect(await idleOf(part, untracked)).toBeGreaterThanOrEqual(650);
      expect(part.keeper.holds(untracked)).toBe(false);
    });
  });

  describe('when another consumer takes a tracked entry over', () => {
    it('drops the entry and logs who took it, leaving it with the taker', async () => {
      // Renewals every 300 ms: the taker's XCLAIM lands well after our touch and before the first one.
      const part = await keeperHolding(1, 900);
      const [id] = part.ids as [string];
      part.keeper.track(id, part.readAt);
      await sleep(50);

      await suite.admin.xclaim(part.stream.name, part.group, 'taker', 0, id, 'JUSTID');
      await waitFor(() => !part.keeper.holds(id), { timeoutMs: 2_000, what: 'the lease dropped' });

      expect(part.log.at('info')).toEqual([
        {
          level: 'info',
          obj: { ...part.ctx.where, entryId: id, takenBy: 'taker' },
          msg: 'entry taken over by another consumer before its turn; skipping it',
        },
      ]);
      expect(part.log.at('warn')).toEqual([]);
      expect((await pendingEntry(suite.admin, part.stream.name, part.group, id))?.[1]).toBe('taker');
    });

    it('warns when it is the entry whose handler runs', async () => {
      const part = await keeperHolding(1, 900, () => true);
      const [id] = part.ids as [string];
      part.keeper.track(id, part.readAt);
      await sleep(50);

      await suite.admin.xclaim(part.stream.name, part.group, 'taker', 0, id, 'JUSTID');
      await waitFor(() => !part.keeper.holds(id), { timeoutMs: 2_000, what: 'the lease dropped' });

      expect(part.log.at('warn')).toMatchObject([
        {
          obj: { entryId: id, takenBy: 'taker' },
          msg: expect.stringMatching(/^lost the lease on the entry being handled/),
        },
      ]);
    });
  });

  it('drops an entry acked meanwhile without logging anything', async () => {
    const part = await keeperHolding(1, 450);
    const [id] = part.ids as [string];
    part.keeper.track(id, part.readAt);

    await suite.admin.xack(part.stream.name, part.group, id);
    await waitFor(() => !part.keeper.holds(id), { timeoutMs: 2_000, what: 'the lease dropped' });

    expect(part.log.lines.filter((line) => line.level !== 'debug')).toEqual([]);
  });

  it('keeps and goes on renewing an entry still its own that something else touched after it did', async () => {
    const part = await keeperHolding(1, 450);
    const [id] = part.ids as [string];
    part.keeper.track(id, part.readAt);
    await sleep(50);

    // Our own consumer name, as a redelivery of ours would: the next renewal's minimum idle time misses it.
    await suite.admin.xclaim(part.stream.name, part.group, part.consumer, 0, id, 'JUSTID');
    const maxIdle = await maxIdleOver(part, id, 900);

    expect(part.keeper.holds(id)).toBe(true);
    expect(maxIdle).toBeLessThan(450);
    expect(part.log.lines.filter((line) => line.level !== 'debug')).toEqual([]);
  });

  describe('handBackUnstarted', () => {
    it('makes the entries whose handlers never started look idle claimIdleMs, and resolves to their IDs', async () => {
      const part = await keeperHolding(2, 450, (id) => id === running);
      const [unstarted, running] = part.ids as [string, string];
      part.keeper.track(unstarted, part.readAt);
      part.keeper.track(running, part.readAt);

      const handedBack = await part.keeper.handBackUnstarted();

      expect(handedBack).toEqual([unstarted]);
      const [, owner, idle, deliveries] = (await pendingEntry(
        suite.admin,
        part.stream.name,
        part.group,
        unstarted,
      ))!;
      expect(idle).toBeGreaterThanOrEqual(450);
      expect([owner, deliveries]).toEqual([part.consumer, 1]);
      expect(part.keeper.holds(unstarted)).toBe(false);
      expect(part.keeper.holds(running)).toBe(true);
    });

    it('goes on renewing the entry whose handler runs, and no longer the others', async () => {
      const part = await keeperHolding(3, 450, (id) => id === running);
      const [unstarted, running, trackedAfter] = part.ids as [string, string, string];
      part.keeper.track(unstarted, part.readAt);
      part.keeper.track(running, part.readAt);

      await part.keeper.handBackUnstarted();
      part.keeper.track(trackedAfter, part.readAt);
      const maxIdle = await maxIdleOver(part, running, 700);

      expect(maxIdle).toBeLessThan(450);
      expect(await idleOf(part, unstarted)).toBeGreaterThanOrEqual(450 + 650);
      expect(await idleOf(part, trackedAfter)).toBeGreaterThanOrEqual(650);
    });

    it('does not hand back an entry another consumer took meanwhile', async () => {
      const part = await keeperHolding(1, 900);
      const [id] = part.ids as [string];
      part.keeper.track(id, part.readAt);
      await sleep(50);
      await suite.admin.xclaim(part.stream.name, part.group, 'taker', 0, id, 'JUSTID');

      const handedBack = await part.keeper.handBackUnstarted();

      expect(handedBack).toEqual([]);
      const [, owner, idle] = (await pendingEntry(suite.admin, part.stream.name, part.group, id))!;
      expect(owner).toBe('taker');
      expect(idle).toBeLessThan(450);
    });
  });

  it('stops renewing once closed, and may be closed twice', async () => {
    const part = await keeperHolding(1, 150);
    const [id] = part.ids as [string];
    part.keeper.track(id, part.readAt);
    await sleep(120);

    part.keeper.close();
    part.keeper.close();
    const claimsBefore = await commandCalls(suite.admin, 'xclaim');
    await sleep(400);

    expect(await commandCalls(suite.admin, 'xclaim')).toBe(claimsBefore);
    expect(await idleOf(part, id)).toBeGreaterThanOrEqual(400);
  });
});
