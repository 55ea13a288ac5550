import { describe, expect, it } from 'vitest';
import { compareIds, GroupKeeper, idBefore } from '../../src/consumer/group.ts';
import { pauseDelay } from '../../src/consumer/retry-policy.ts';
import { fieldsFromReply } from '../../src/stream.ts';
import { addEntries, readAs, unitSuite } from './redis.ts';

const suite = unitSuite();

/** A keeper of a group not created yet, with a sleep that records its waits and stops after `stopAfterSleeps`. */
async function keeper({ startId = '0' as '0' | '$', stopAfterSleeps = Infinity } = {}) {
  const part = await suite.part({ createGroup: false });
  const sleeps: number[] = [];
  let stopping = false;
  const group = new GroupKeeper(
    part.ctx,
    startId,
    async (ms) => {
      sleeps.push(ms);
      if (sleeps.length >= stopAfterSleeps) stopping = true;
    },
    () => stopping,
  );
  const groups = async () => {
    const replies = (await suite.admin.xinfo('GROUPS', part.stream.name)) as unknown[][];
    return replies.map((flat) => fieldsFromReply(flat.map(String)));
  };
  return { ...part, keeper: group, sleeps, groups, stop: () => (stopping = true) };
}

describe('GroupKeeper', () => {
  describe('ensure', () => {
    it('creates the stream and the group at 0, so that entries written before are read', async () => {
      const { keeper: group, stream, group: name, consumer, groups, log } = await keeper();
      const ids = await addEntries(suite.admin, stream.name, 2);

      await group.ensure();

      expect(await groups()).toMatchObject([{ name, 'last-delivered-id': '0-0' }]);
      expect((await readAs(suite.admin, stream.name, name, consumer)).map(([id]) => id)).toEqual(ids);
      expect(log.at('info')).toMatchObject([{ obj: { startId: '0' }, msg: 'consumer group created' }]);
    });

    it('creates the stream if it does not exist yet', async () => {
      const { keeper: group, stream, groups } = await keeper();

      await group.ensure();

      expect(await suite.admin.type(stream.name)).toBe('stream');
      expect(await groups()).toHaveLength(1);
    });

    it("starts the group after the last entry with startId '$'", async () => {
      const { keeper: group, stream, group: name, consumer, groups } = await keeper({ startId: '$' });
      const ids = await addEntries(suite.admin, stream.name, 2);

      await group.ensure();

      expect(await groups()).toMatchObject([{ name, 'last-delivered-id': ids[1] }]);
      expect(await readAs(suite.admin, stream.name, name, consumer)).toEqual([]);
    });

    it('is safe to repeat: an existing group (BUSYGROUP) is left as it is', async () => {
      const { keeper: group, stream, group: name, consumer, groups, log, sleeps } = await keeper();
      const [first] = await addEntries(suite.admin, stream.name, 2);
      await group.ensure();
      await readAs(suite.admin, stream.name, name, consumer, 1);

      await group.ensure();

      expect(await groups()).toMatchObject([{ name, 'last-delivered-id': first, pending: '1' }]);
      expect(log.at('info')).toHaveLength(1);
      expect(log.at('warn')).toEqual([]);
      expect(sleeps).toEqual([]);
    });

    it('goes on without a write while Redis is out of memory, if the group exists', async () => {
      const { keeper: group, groups, log, sleeps } = await keeper();
      await group.ensure();

      await suite.outOfMemory(() => group.ensure());

      expect(await groups()).toHaveLength(1);
      expect(log.at('warn')).toEqual([]);
      expect(sleeps).toEqual([]);
    });

    it('warns once and retries with backoff while it cannot create the group, until stopped', async () => {
      const { keeper: group, stream, log, sleeps } = await keeper({ stopAfterSleeps: 3 });
      await suite.admin.set(stream.name, 'not a stream');

      await group.ensure();

      expect(sleeps).toEqual([pauseDelay(1), pauseDelay(2), pauseDelay(3)]);
      expect(log.at('warn')).toMatchObject([
        { obj: { err: expect.objectContaining({ message: expect.stringMatching(/^WRONGTYPE/) }) } },
      ]);
      expect(log.at('warn')[0]?.msg).toBe('cannot create consumer group; retrying');
    });

    it('does nothing once stopping', async () => {
      const { keeper: group, stream, stop } = await keeper();
      stop();

      await group.ensure();

      expect(await suite.admin.exists(stream.name)).toBe(0);
    });
  });

  describe('after the group is lost', () => {
    it('recreates it just before the oldest pending entry noted: that one comes again, those acked before it do not', async () => {
      const { keeper: group, stream, group: name, consumer, groups, log } = await keeper();
      await group.ensure();
      const ids = await addEntries(suite.admin, stream.name, 5);
      await readAs(suite.admin, stream.name, name, consumer);
      await suite.admin.xack(stream.name, name, ids[0]!, ids[1]!, ids[3]!);
      await group.markRecreatePoint();
      await suite.admin.xgroup('DESTROY', stream.name, name);

      await group.recreate();

      expect(await groups()).toMatchObject([{ name, 'last-delivered-id': idBefore(ids[2]!) }]);
      // Acked after the pending one: handed out again, the price of not knowing.
      expect((await readAs(suite.admin, stream.name, name, consumer)).map(([id]) => id)).toEqual(
        ids.slice(2),
      );
      expect(log.at('warn')).toMatchObject([
        { obj: { from: idBefore(ids[2]!) }, msg: expect.stringMatching(/^consumer group is gone/) },
      ]);
    });

    it('recreates it after its last delivered entry when nothing was pending', async () => {
      const { keeper: group, stream, group: name, consumer, groups } = await keeper();
      await group.ensure();
      const ids = await addEntries(suite.admin, stream.name, 3);
      await readAs(suite.admin, stream.name, name, consumer, 2);
      await suite.admin.xack(stream.name, name, ids[0]!, ids[1]!);
      await group.markRecreatePoint();
      await suite.admin.xgroup('DESTROY', stream.name, name);

      await group.recreate();

      expect(await groups()).toMatchObject([{ name, 'last-delivered-id': ids[1] }]);
      expect((await readAs(suite.admin, stream.name, name, consumer)).map(([id]) => id)).toEqual([ids[2]]);
    });

    it('recreates it at its startId when no point was ever noted', async () => {
      const { keeper: group, stream, group: name, groups } = await keeper({ startId: '$' });
      const ids = await addEntries(suite.admin, stream.name, 2);

      await group.recreate();

      expect(await groups()).toMatchObject([{ name, 'last-delivered-id': ids[1] }]);
    });

    it('keeps the point noted last when a later look fails because the group is gone', async () => {
      const { keeper: group, stream, group: name, consumer, groups } = await keeper();
      await group.ensure();
      const ids = await addEntries(suite.admin, stream.name, 2);
      await readAs(suite.admin, stream.name, name, consumer);
      await group.markRecreatePoint();
      await suite.admin.xgroup('DESTROY', stream.name, name);

      await expect(group.markRecreatePoint()).rejects.toThrow(/^NOGROUP/);
      await group.recreate();

      expect(await groups()).toMatchObject([{ name, 'last-delivered-id': idBefore(ids[0]!) }]);
    });
  });
});

describe('compareIds', () => {
  it.each([
    ['1-0', '1-0', 0],
    ['1-2', '1-10', -1],
    ['10-0', '9-99', 1],
    ['1-0', '0-18446744073709551615', 1],
    ['18446744073709551615-0', '18446744073709551614-18446744073709551615', 1],
    ['9007199254740993-0', '9007199254740992-0', 1],
    ['5-18446744073709551614', '5-18446744073709551615', -1],
  ])('orders %s against %s as %i, as Redis does', (a, b, order) => {
    expect(compareIds(a, b)).toBe(order);
    expect(compareIds(b, a)).toBe(-order || 0);
  });
});

describe('idBefore', () => {
  it.each([
    ['5-3', '5-2'],
    ['5-1', '5-0'],
    ['5-0', '4-18446744073709551615'],
    ['1-0', '0-18446744073709551615'],
    ['9007199254740993-0', '9007199254740992-18446744073709551615'],
    ['18446744073709551615-18446744073709551615', '18446744073709551615-18446744073709551614'],
  ])('gives the greatest ID below %s: %s', (id, before) => {
    expect(idBefore(id)).toBe(before);
    expect(compareIds(idBefore(id), id)).toBe(-1);
  });

  it('is where a group must start to read the entry next, in Redis', async () => {
    const { stream, group, consumer } = await suite.part({ createGroup: false });
    for (const id of ['1-5', '2-0', '2-1']) await suite.admin.xadd(stream.name, id, 'n', '0');

    await suite.admin.xgroup('CREATE', stream.name, group, idBefore('2-0'));

    expect((await readAs(suite.admin, stream.name, group, consumer)).map(([id]) => id)).toEqual([
      '2-0',
      '2-1',
    ]);
  });
});
