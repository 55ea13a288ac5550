import { describe, expect, it } from 'vitest';
import { AckBatcher } from '../../src/consumer/acks.ts';
import type { ConsumerContext } from '../../src/consumer/context.ts';
import { LeaseKeeper } from '../../src/consumer/leases.ts';
import type { OutcomeParts } from '../../src/consumer/outcomes.ts';
import { deleteIdleConsumers, redeliver, takeOverIdle, walkOwnPending } from '../../src/consumer/reclaim.ts';
import { RetrySchedule } from '../../src/consumer/retry-policy.ts';
import { RunCounts } from '../../src/consumer/runs.ts';
import { addEntries, pendingEntry, pendingOf, readAs, sleep, unitSuite, type Part } from './redis.ts';

const suite = unitSuite();

/** Entries pending to `consumer`: `count` new ones, read by it. */
async function pendingTo(part: Part, consumer: string, count: number): Promise<string[]> {
  await addEntries(suite.admin, part.stream.name, count);
  return (await readAs(suite.admin, part.stream.name, part.group, consumer)).map(([id]) => id);
}

/** Sets the idle time and delivery count XPENDING reports for entry `id` of `consumer`. */
async function makeLook(part: Part, consumer: string, id: string, idleMs: number, deliveries: number) {
  // prettier-ignore
  await suite.admin.xclaim(
    part.stream.name, part.group, consumer, 0, id, 'IDLE', idleMs, 'RETRYCOUNT', deliveries, 'JUSTID',
  );
}

/** Walks the own pending list, recording what it redelivers and where pages end. */
async function walk(
  ctx: ConsumerContext,
  options: { mode: 'all' | 'due'; count: number; retries?: RetrySchedule; stopAfter?: number },
) {
  const events: string[] = [];
  const idles: number[] = [];
  const retries = options.retries ?? new RetrySchedule(1_000);
  await walkOwnPending(
    ctx,
    {
      mode: options.mode,
      count: options.count,
      retries,
      isStopping: () => events.filter((e) => e !== 'end of page').length >= (options.stopAfter ?? Infinity),
    },
    async (id, idleMs) => {
      events.push(id);
      idles.push(idleMs);
    },
    async () => void events.push('end of page'),
  );
  return { events, idles, retries };
}

describe('walkOwnPending', () => {
  it('redelivers up to `concurrency` entries at once, started in the order of the list', async () => {
    const part = await suite.part();
    const ids = await pendingTo(part, part.consumer, 6);
    const started: string[] = [];
    let running = 0;
    let most = 0;

    await walkOwnPending(
      part.ctx,
      { mode: 'all', count: 10, concurrency: 3, retries: new RetrySchedule(1_000), isStopping: () => false },
      async (id) => {
        started.push(id);
        most = Math.max(most, (running += 1));
        await sleep(20);
        running -= 1;
      },
      async () => {},
    );

    expect(started).toEqual(ids);
    expect(most).toBe(3);
  });

  it("redelivers every entry of this consumer's own in 'all' mode, a page at a time", async () => {
    const part = await suite.part();
    const ids = await pendingTo(part, part.consumer, 5);
    await pendingTo(part, 'other', 2);
    await sleep(30);

    const { events, idles } = await walk(part.ctx, { mode: 'all', count: 2 });

    // prettier-ignore
    expect(events).toEqual([
      ids[0], ids[1], 'end of page', ids[2], ids[3], 'end of page', ids[4], 'end of page',
    ]);
    for (const idle of idles) expect(idle).toBeGreaterThanOrEqual(30);
  });

  it('runs endOfPage after the empty page that ends a list of full pages', async () => {
    const part = await suite.part();
    const ids = await pendingTo(part, part.consumer, 4);

    const { events } = await walk(part.ctx, { mode: 'all', count: 2 });

    expect(events).toEqual([ids[0], ids[1], 'end of page', ids[2], ids[3], 'end of page', 'end of page']);
  });

  it("redelivers in 'due' mode only the entries whose retry time has come, and wakes for the first of the rest", async () => {
    const part = await suite.part();
    const ids = await pendingTo(part, part.consumer, 5);
    const now = Date.now();
    const retries = new RetrySchedule(1_000);
    retries.failed(ids[0]!, 1, now - 5_000); // due 4 s ago
    retries.failed(ids[1]!, 1, now + 500); // due in 1.5 s
    retries.failed(ids[2]!, 2, now - 5_000); // due 3 s ago
    retries.failed(ids[3]!, 1, now); // due in 1 s: the first of the rest
    retries.failed(ids[4]!, 3, now); // due in 4 s
    retries.taken();

    const { events } = await walk(part.ctx, { mode: 'due', count: 2, retries });

    expect(events).toEqual([ids[0], 'end of page', ids[2], 'end of page', 'end of page']);
    expect(retries.nextAt).toBe(now + 1_000);
  });

  it("times entries it never saw fail from their delivery count and idle time in 'due' mode", async () => {
    const part = await suite.part();
    const [longIdle, retriedOften] = (await pendingTo(part, part.consumer, 3)) as [string, string, string];
    await makeLook(part, part.consumer, longIdle, 5_000, 1); // 1 s wait, long past
    await makeLook(part, part.consumer, retriedOften, 3_000, 3); // 4 s wait, 1 s to go
    const before = Date.now();

    const { events, retries } = await walk(part.ctx, { mode: 'due', count: 10 });

    expect(events).toEqual([longIdle, 'end of page']);
    // The third, never failed, is due 1 s after its read; `retriedOften` about 1 s from now.
    expect(retries.nextAt).toBeGreaterThan(before + 500);
    expect(retries.nextAt).toBeLessThan(Date.now() + 1_100);
  });

  it('forgets the retry times of entries no longer in its pending list', async () => {
    const part = await suite.part();
    const [kept] = (await pendingTo(part, part.consumer, 1)) as [string];
    const now = Date.now();
    const retries = new RetrySchedule(1_000);
    retries.failed(kept, 3, now);
    retries.failed('1-1', 3, now);

    await walk(part.ctx, { mode: 'due', count: 10, retries });

    // A remembered time comes back as it was; a forgotten one is worked out afresh.
    expect(retries.dueAt(kept, 1, 0, now)).toBe(now + 4_000);
    expect(retries.dueAt('1-1', 1, 0, now)).toBe(now + 1_000);
  });

  it('stops early once stopping, before the end of its page', async () => {
    const part = await suite.part();
    const ids = await pendingTo(part, part.consumer, 5);

    const { events } = await walk(part.ctx, { mode: 'all', count: 10, stopAfter: 2 });

    expect(events).toEqual([ids[0], ids[1]]);
  });
});

describe('takeOverIdle', () => {
  const runsKey = (id: string) => `runs:${id}`;

  it('takes over the entries other consumers left idle longer than claimIdleMs, without counting a delivery', async () => {
    const part = await suite.part();
    const idle = await pendingTo(part, 'dead', 5);
    await sleep(80);
    const [fresh] = (await pendingTo(part, 'live', 1)) as [string];

    const taken = await takeOverIdle(part.ctx, {
      claimIdleMs: 50,
      count: 2,
      isStopping: () => false,
      runsKey,
    });

    expect(taken).toBe(5);
    const pending = await pendingOf(suite.admin, part.stream.name, part.group);
    expect(pending.map(([id, owner, , deliveries]) => [id, owner, deliveries])).toEqual([
      ...idle.map((id) => [id, part.consumer, 1]),
      [fresh, 'live', 1],
    ]);
    const logged = part.log.at('info');
    expect(logged.every((line) => line.msg === 'took over entries left idle by other consumers')).toBe(true);
    expect(logged.reduce((sum, line) => sum + (line.obj.count as number), 0)).toBe(5);
  });

  it('takes nothing and says nothing when no entry has been idle that long', async () => {
    const part = await suite.part();
    await pendingTo(part, 'live', 3);

    const taken = await takeOverIdle(part.ctx, {
      claimIdleMs: 60_000,
      count: 10,
      isStopping: () => false,
      runsKey,
    });

    expect(taken).toBe(0);
    expect((await pendingOf(suite.admin, part.stream.name, part.group)).map(([, owner]) => owner)).toEqual([
      'live',
      'live',
      'live',
    ]);
    expect(part.log.lines).toEqual([]);
  });

  it('stops following the cursor once stopping', async () => {
    const part = await suite.part();
    await pendingTo(part, 'dead', 3);
    await sleep(80);

    const taken = await takeOverIdle(part.ctx, {
      claimIdleMs: 50,
      count: 1,
      isStopping: () => true,
      runsKey,
    });

    expect(taken).toBe(1);
  });

  it('acks the entries trimmed while pending, deletes their run counts and warns', async () => {
    const part = await suite.part();
    const [trimmed1, kept, trimmed2] = (await pendingTo(part, 'dead', 3)) as [string, string, string];
    const keyOf = (id: string) => `{${part.stream.name}}:runs:${part.group}:${id}`;
    for (const id of [trimmed1, kept, trimmed2]) await suite.admin.set(keyOf(id), '2');
    await suite.admin.xdel(part.stream.name, trimmed1, trimmed2);
    await sleep(80);

    const taken = await takeOverIdle(part.ctx, {
      claimIdleMs: 50,
      count: 10,
      isStopping: () => false,
      runsKey: keyOf,
    });

    expect(taken).toBe(1);
    expect(
      (await pendingOf(suite.admin, part.stream.name, part.group)).map(([id, owner]) => [id, owner]),
    ).toEqual([[kept, part.consumer]]);
    expect(await suite.admin.exists(keyOf(trimmed1), keyOf(trimmed2))).toBe(0);
    expect(await suite.admin.get(keyOf(kept))).toBe('2');
    expect(part.log.at('warn')).toMatchObject([
      {
        obj: { entryIds: [trimmed1, trimmed2] },
        msg: 'pending entries were trimmed from the stream before anyone handled them; acked',
      },
    ]);
  });
});

describe('deleteIdleConsumers', () => {
  async function consumers(part: Part): Promise<string[]> {
    const replies = (await suite.admin.xinfo('CONSUMERS', part.stream.name, part.group)) as unknown[][];
    return replies.map((flat) => String(flat[1])).sort();
  }

  it('removes the consumers idle that long holding nothing, never one holding entries nor itself', async () => {
    const part = await suite.part();
    await suite.admin.xgroup('CREATECONSUMER', part.stream.name, part.group, 'gone-empty');
    await suite.admin.xgroup('CREATECONSUMER', part.stream.name, part.group, part.consumer);
    await pendingTo(part, 'gone-holding', 1);
    await sleep(80);
    await suite.admin.xgroup('CREATECONSUMER', part.stream.name, part.group, 'fresh-empty');

    await deleteIdleConsumers(part.ctx, 50);

    expect(await consumers(part)).toEqual([part.consumer, 'fresh-empty', 'gone-holding'].sort());
    expect(part.log.at('info')).toMatchObject([
      { obj: { removed: ['gone-empty'] }, msg: 'removed idle consumers that held no entries' },
    ]);
  });

  it('logs nothing when it removes nothing', async () => {
    const part = await suite.part();
    await suite.admin.xgroup('CREATECONSUMER', part.stream.name, part.group, 'fresh-empty');

    await deleteIdleConsumers(part.ctx, 60_000);

    expect(await consumers(part)).toEqual(['fresh-empty']);
    expect(part.log.lines).toEqual([]);
  });
});

describe('redeliver', () => {
  function partsOf(ctx: ConsumerContext): OutcomeParts {
    const leases = new LeaseKeeper(ctx, 60_000, () => false);
    suite.afterTest(() => leases.close());
    return { leases, acks: new AckBatcher(ctx), runs: new RunCounts(ctx), retries: new RetrySchedule(1_000) };
  }

  it('claims the entry, counts its run, and hands its fields and run number to handle while holding its lease', async () => {
    const part = await suite.part();
    const [id] = (await pendingTo(part, part.consumer, 1)) as [string];
    const parts = partsOf(part.ctx);
    await sleep(20);
    const [, , idleMs] = (await pendingEntry(suite.admin, part.stream.name, part.group, id))!;
    const seen: unknown[] = [];

    await redeliver(part.ctx, parts, id, idleMs, async (fields, run) => {
      seen.push(fields.map(String), run, parts.leases.holds(id), parts.runs.inRedisFor(id));
    });

    expect(seen).toEqual([['n', '0'], 2, true, true]);
    expect(parts.leases.holds(id)).toBe(false);
    expect(parts.runs.inRedisFor(id)).toBe(false);
    expect((await pendingEntry(suite.admin, part.stream.name, part.group, id))?.[3]).toBe(2);
    expect(await suite.admin.get(parts.runs.key(id))).toBe('2');
  });

  it('leaves alone, and forgets the retry time of, an entry another consumer took since XPENDING', async () => {
    const part = await suite.part();
    const [id] = (await pendingTo(part, part.consumer, 1)) as [string];
    const parts = partsOf(part.ctx);
    const now = Date.now();
    parts.retries.failed(id, 3, now);
    await sleep(50);
    const [, , idleMs] = (await pendingEntry(suite.admin, part.stream.name, part.group, id))!;
    await suite.admin.xclaim(part.stream.name, part.group, 'taker', 0, id, 'JUSTID');
    let handled = false;

    await redeliver(part.ctx, parts, id, idleMs, async () => void (handled = true));

    expect(handled).toBe(false);
    expect((await pendingEntry(suite.admin, part.stream.name, part.group, id))?.[1]).toBe('taker');
    expect(await suite.admin.exists(parts.runs.key(id))).toBe(0);
    expect(parts.retries.dueAt(id, 1, 0, now)).toBe(now + 1_000);
    expect(part.log.at('debug')).toMatchObject([
      { obj: { entryId: id }, msg: 'pending entry no longer ours to handle' },
    ]);
  });

  it('lets go of the lease and the count when handle throws, and throws on', async () => {
    const part = await suite.part();
    const [id] = (await pendingTo(part, part.consumer, 1)) as [string];
    const parts = partsOf(part.ctx);

    const redelivering = redeliver(part.ctx, parts, id, 0, async () => {
      throw new Error('boom');
    });

    await expect(redelivering).rejects.toThrow('boom');
    expect(parts.leases.holds(id)).toBe(false);
    expect(parts.runs.inRedisFor(id)).toBe(false);
  });
});
