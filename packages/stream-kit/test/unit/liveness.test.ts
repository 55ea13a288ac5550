import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../../../../harness/wait.ts';
import { Liveness, livenessKey, LIVENESS_TTL_MS } from '../../src/consumer/liveness.ts';
import { withDefaults } from '../../src/consumer/options.ts';
import { deleteIdleConsumers } from '../../src/consumer/reclaim.ts';
import { addEntries, pendingOf, readAs, sleep, unitSuite, type Part } from './redis.ts';

const suite = unitSuite();

/** A Liveness for `part`, closed after the test; `gaps` counts its gap callbacks. */
function livenessOf(part: Part) {
  const gaps = { count: 0 };
  const liveness = new Liveness(part.ctx, withDefaults(part.stream, { connection: suite.url }), () => {
    gaps.count += 1;
  });
  suite.afterTest(() => liveness.close());
  return { liveness, gaps };
}

/** The mark of `consumer`: its deadline and since when it has lived, in Redis's clock (ms). */
async function markOf(part: Part, consumer: string) {
  const mark = await suite.admin.hget(livenessKey(part.stream.name, part.group), consumer);
  if (mark === null) return undefined;
  const [deadline, since] = mark.split(' ').map(Number) as [number, number];
  return { deadline, since };
}

/** Redis's clock, in ms. */
async function redisNow(): Promise<number> {
  const [seconds, micros] = await suite.admin.time();
  return Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
}

/** Gives `consumer` a mark that lapsed long ago, or one alive for a while yet. */
async function setMark(part: Part, consumer: string, state: 'dead' | 'alive') {
  const now = await redisNow();
  const mark = state === 'dead' ? `${now - 60_000} ${now - 120_000}` : `${now + 60_000} ${now - 120_000}`;
  await suite.admin.hset(livenessKey(part.stream.name, part.group), consumer, mark);
}

/** `count` new entries, read by `consumer`: its pending entries. */
async function heldBy(part: Part, consumer: string, count: number): Promise<string[]> {
  await addEntries(suite.admin, part.stream.name, count);
  return (await readAs(suite.admin, part.stream.name, part.group, consumer)).map(([id]) => id);
}

/** A Liveness whose own mark has lived a full life, so that it judges others. */
async function judging(part: Part) {
  const own = livenessOf(part);
  await waitFor(async () => (await markOf(part, part.consumer)) !== undefined);
  await setMark(part, part.consumer, 'alive');
  return own;
}

describe('Liveness', () => {
  it('renews its mark, keeping since when it has lived without a gap', async () => {
    const part = await suite.part();
    livenessOf(part);
    await waitFor(async () => (await markOf(part, part.consumer)) !== undefined);
    const first = (await markOf(part, part.consumer))!;

    await sleep(LIVENESS_TTL_MS / 3 + 300);

    const later = (await markOf(part, part.consumer))!;
    expect(later.since).toBe(first.since);
    expect(later.deadline).toBeGreaterThan(first.deadline);
    expect(later.deadline - (await redisNow())).toBeGreaterThan(LIVENESS_TTL_MS / 2);
  });

  it('takes the entries of a consumer whose mark lapsed at once, whatever their idle time, without counting a delivery', async () => {
    const part = await suite.part();
    const { liveness } = await judging(part);
    const ids = await heldBy(part, 'dead', 3);
    await setMark(part, 'dead', 'dead');

    const taken = await liveness.takeFromDead(100);

    expect(taken).toEqual({ ids, from: ['dead'], more: false });
    const pending = await pendingOf(suite.admin, part.stream.name, part.group);
    expect(pending.map(([id, owner, , deliveries]) => [id, owner, deliveries])).toEqual(
      ids.map((id) => [id, part.consumer, 1]),
    );
  });

  it('takes at most `count` entries a call, over all dead consumers, saying more may wait; the rest at the next', async () => {
    const part = await suite.part();
    const { liveness } = await judging(part);
    const ids = [...(await heldBy(part, 'dead-1', 2)), ...(await heldBy(part, 'dead-2', 3))];
    await setMark(part, 'dead-1', 'dead');
    await setMark(part, 'dead-2', 'dead');

    expect(await liveness.takeFromDead(3)).toEqual({
      ids: ids.slice(0, 3),
      from: ['dead-1', 'dead-2'],
      more: true,
    });
    expect(await liveness.takeFromDead(3)).toEqual({ ids: ids.slice(3), from: ['dead-2'], more: false });
  });

  it('leaves the entries of a live consumer, and of one that keeps no mark (another library), to claimIdleMs', async () => {
    const part = await suite.part();
    const { liveness } = await judging(part);
    await heldBy(part, 'alive', 2);
    await setMark(part, 'alive', 'alive');
    await heldBy(part, 'unmarked', 2);

    expect(await liveness.takeFromDead(100)).toEqual({ ids: [], from: [], more: false });
    const owners = (await pendingOf(suite.admin, part.stream.name, part.group)).map(([, owner]) => owner);
    expect(owners).toEqual(['alive', 'alive', 'unmarked', 'unmarked']);
  });

  it('judges no one until its own mark has lived a full life: after its own gap, the others need that long to renew', async () => {
    const part = await suite.part();
    const { liveness } = livenessOf(part);
    await waitFor(async () => (await markOf(part, part.consumer)) !== undefined);
    await heldBy(part, 'dead', 2);
    await setMark(part, 'dead', 'dead');

    expect((await liveness.takeFromDead(100)).ids).toEqual([]);
    await sleep(LIVENESS_TTL_MS + 200);
    expect((await liveness.takeFromDead(100)).ids).toHaveLength(2);
  });

  it('finds the gap when its mark lapsed (the process was paused): a new epoch, and the gap callback', async () => {
    const part = await suite.part();
    const { liveness, gaps } = livenessOf(part);
    await waitFor(async () => (await markOf(part, part.consumer)) !== undefined);
    const epoch = liveness.epoch;
    expect(liveness.holdsSince(epoch)).toBe(true);

    await setMark(part, part.consumer, 'dead');
    await waitFor(() => gaps.count === 1, { timeoutMs: LIVENESS_TTL_MS });

    expect(liveness.epoch).not.toBe(epoch);
    expect(liveness.holdsSince(epoch)).toBe(false);
    expect(liveness.holdsSince(liveness.epoch)).toBe(true);
  });

  it('counts itself lapsed once no renewal has been confirmed for most of a mark life', async () => {
    const part = await suite.part();
    const { liveness } = livenessOf(part);
    await waitFor(async () => (await markOf(part, part.consumer)) !== undefined);

    expect(liveness.lapsed()).toBe(false);
    expect(liveness.lapsed(performance.now() + LIVENESS_TTL_MS)).toBe(true);
  });

  it('marks itself dead at close, so that what it still holds is taken at once', async () => {
    const part = await suite.part();
    const closing = await suite.part({ stream: part.stream, group: part.group, createGroup: false });
    const { liveness } = await judging(part);
    const leaving = livenessOf(closing);
    await waitFor(async () => (await markOf(part, closing.consumer)) !== undefined);
    const ids = await heldBy(part, closing.consumer, 2);

    await leaving.liveness.close();

    expect(await liveness.takeFromDead(100)).toEqual({ ids, from: [closing.consumer], more: false });
  });

  it('holds nothing once closed: a handler still running is told at once, before others take its entry', async () => {
    const part = await suite.part();
    const { liveness } = livenessOf(part);
    await liveness.ready;
    const epoch = liveness.epoch;

    await liveness.close();

    expect(liveness.lapsed()).toBe(true);
    expect(liveness.holdsSince(epoch)).toBe(false);
  });
});

describe('deleteIdleConsumers and the liveness marks', () => {
  it('deletes the marks of the consumers it removes, and marks long dead of consumers no longer in the group', async () => {
    const part = await suite.part();
    const key = livenessKey(part.stream.name, part.group);
    await suite.admin.xgroup('CREATECONSUMER', part.stream.name, part.group, 'gone-empty');
    await setMark(part, 'gone-empty', 'dead');
    await setMark(part, 'deleted-by-hand', 'dead');
    await setMark(part, 'alive-elsewhere', 'alive');
    await sleep(80);

    await deleteIdleConsumers(part.ctx, 50);

    expect(await suite.admin.hkeys(key)).toEqual(['alive-elsewhere']);
  });
});
