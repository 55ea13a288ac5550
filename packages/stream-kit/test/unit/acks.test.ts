import { describe, expect, it } from 'vitest';
import { AckBatcher } from '../../src/consumer/acks.ts';
import { addEntries, commandCalls, pendingOf, readAs, sleep, unitSuite } from './redis.ts';

const suite = unitSuite();

/** A batcher on a fresh group whose consumer holds `count` entries. */
async function batcherHolding(count: number) {
  const part = await suite.part();
  await addEntries(suite.admin, part.stream.name, count);
  const ids = (await readAs(suite.admin, part.stream.name, part.group, part.consumer)).map(([id]) => id);
  return { ...part, acks: new AckBatcher(part.ctx), ids };
}

/** Lets the batcher's setImmediate fire. */
function nextTick() {
  return new Promise((resolve) => setImmediate(resolve));
}

describe('AckBatcher', () => {
  it('sends the acks queued in one tick as one XACK, leaving nothing pending', async () => {
    const { acks, ids, ctx, stream, group } = await batcherHolding(3);
    const xacksBefore = await commandCalls(suite.admin, 'xack');

    for (const id of ids) acks.ack(id);
    await nextTick();
    await acks.flush();

    expect(await commandCalls(suite.admin, 'xack')).toBe(xacksBefore + 1);
    expect(await pendingOf(suite.admin, stream.name, group)).toEqual([]);
    expect(ctx.redis.status).toBe('ready');
  });

  it('sends acks queued in separate ticks as separate XACKs', async () => {
    const { acks, ids, stream, group } = await batcherHolding(2);
    const xacksBefore = await commandCalls(suite.admin, 'xack');

    acks.ack(ids[0]!);
    await nextTick();
    acks.ack(ids[1]!);
    await acks.flush();

    expect(await commandCalls(suite.admin, 'xack')).toBe(xacksBefore + 2);
    expect(await pendingOf(suite.admin, stream.name, group)).toEqual([]);
  });

  it('queues an ack instead of sending it at once', async () => {
    const { acks, ids, ctx, stream, group } = await batcherHolding(1);

    acks.ack(ids[0]!);
    // Sent now, on the batcher's own connection: it runs before anything the batcher sends later.
    const pendingMeanwhile = ctx.redis.xpending(stream.name, group);
    await acks.flush();

    expect((await pendingMeanwhile)[0]).toBe(1);
    expect(await pendingOf(suite.admin, stream.name, group)).toEqual([]);
  });

  it('rejects flush() when the XACK fails, and the next flush() starts afresh', async () => {
    const part = await suite.part({ createGroup: false });
    await suite.admin.set(part.stream.name, 'not a stream');
    const acks = new AckBatcher(part.ctx);

    acks.ack('1-0');

    await expect(acks.flush()).rejects.toThrow(/^WRONGTYPE/);
    await expect(acks.flush()).resolves.toBeUndefined();
  });

  it('settles without rejecting when the XACK fails', async () => {
    const part = await suite.part({ createGroup: false });
    await suite.admin.set(part.stream.name, 'not a stream');
    const acks = new AckBatcher(part.ctx);
    const xacksBefore = await commandCalls(suite.admin, 'xack');

    acks.ack('1-0');
    const settled = await acks.settle();

    expect(settled).toMatchObject([{ status: 'rejected' }]);
    expect(await commandCalls(suite.admin, 'xack')).toBe(xacksBefore + 1);
  });

  it('deletes the run counts it is told to forget with the next send', async () => {
    const { acks, ids, ctx, stream } = await batcherHolding(1);
    const keys = [`${stream.name}:runs:a`, `${stream.name}:runs:b`];
    for (const key of keys) await suite.admin.set(key, '2');

    acks.forgetRuns(keys[0]!);
    acks.forgetRuns(keys[1]!);
    acks.ack(ids[0]!);
    await acks.flush();
    // The DEL is not awaited by flush() (best effort); a command sent after it on the same
    // connection answers after it.
    await ctx.redis.ping();

    expect(await suite.admin.exists(...keys)).toBe(0);
  });

  it('deletes forgotten run counts on its own at the end of the tick, without an ack', async () => {
    const { acks, stream } = await batcherHolding(0);
    const key = `${stream.name}:runs:a`;
    await suite.admin.set(key, '2');
    const delsBefore = await commandCalls(suite.admin, 'del');

    acks.forgetRuns(key);
    await sleep(50);

    expect(await suite.admin.exists(key)).toBe(0);
    expect(await commandCalls(suite.admin, 'del')).toBe(delsBefore + 1);
  });
});
