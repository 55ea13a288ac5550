import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { partitionsOf } from '../../src/consumer/partitions.ts';
import { RetrySchedule } from '../../src/consumer/retry-policy.ts';
import { sumPartitions, type GroupState, type StreamState } from '../../src/inspect.ts';
import { defineStream, partitionNames, partitionOf, partitionStream, streamKeyOf } from '../../src/stream.ts';

/*
 * Partitioned streams without Redis: where an event goes, how the group shares the partitions
 * out, how a partition's loop holds back new entries behind a failed one, and how metrics add the
 * partitions up (README, Partitions).
 */

const schema = z.object({ userId: z.string(), n: z.coerce.number() });
const orders = defineStream({ name: 'orders', schema, partitions: 8, partitionKey: 'userId' });

describe('defineStream with partitions', () => {
  it('names each partition after the stream, its number as the hash tag, so each has a slot of its own', () => {
    expect(partitionNames(orders)).toEqual([0, 1, 2, 3, 4, 5, 6, 7].map((k) => `orders:{${k}}`));
  });

  it('keeps the one key it always had with one partition, the default', () => {
    const plain = defineStream({ name: 'order-events', schema });

    expect(partitionNames(plain)).toEqual(['order-events']);
    expect(streamKeyOf(plain, { userId: 'u1', n: 1 })).toBe('order-events');
  });

  it('refuses more than one partition without a partition key', () => {
    expect(() => defineStream({ name: 's', schema, partitions: 4 })).toThrow(/partitionKey is required/);
  });

  it.each([0, 1.5, 257])('refuses %s partitions', (partitions) => {
    expect(() => defineStream({ name: 's', schema, partitions, partitionKey: 'userId' })).toThrow(RangeError);
  });

  it('refuses braces in a partitioned name: a tag there would put every partition in one slot', () => {
    expect(() => defineStream({ name: '{s}', schema, partitions: 2, partitionKey: 'userId' })).toThrow(
      /braces/,
    );
  });

  it('reads a partition as a stream of its own, under its key', () => {
    const third = partitionStream(orders, 2);

    expect(third.name).toBe('orders:{2}');
    expect(third.partitions).toBe(1);
    expect(third.schema).toBe(orders.schema);
  });
});

describe('partitionOf', () => {
  it('is FNV-1a (32 bits) of the key in UTF-8, modulo the partition count, as a producer in any language can compute it', () => {
    // FNV-1a("a") = 0xe40c292c, FNV-1a("foobar") = 0xbf9cf968 (the published test vectors).
    expect(partitionOf(orders, { userId: 'a' })).toBe(0xe40c292c % 8);
    expect(partitionOf(orders, { userId: 'foobar' })).toBe(0xbf9cf968 % 8);
  });

  it('sends every event of a key to the same partition, and spreads keys over all of them', () => {
    const keys = Array.from({ length: 400 }, (_, i) => `user-${i}`);
    const counts = new Array<number>(8).fill(0);
    for (const key of keys) counts[partitionOf(orders, { userId: key })]! += 1;

    expect(streamKeyOf(orders, { userId: 'u42', n: 1 })).toBe(streamKeyOf(orders, { userId: 'u42', n: 2 }));
    expect(Math.min(...counts)).toBeGreaterThan(25);
  });

  it('throws a validation error for an event without its partition key', () => {
    expect(() => partitionOf(orders, { n: '1' })).toThrow(/userId: the partition key is missing/);
  });
});

describe('partitionsOf', () => {
  const none = (k: number) => new Array<string | null>(k).fill(null);
  /** Each member's share, with the leases held as `owners` says. */
  const split = (members: string[], owners: (string | null)[]) =>
    Object.fromEntries(members.map((m) => [m, partitionsOf(m, members, owners)]));
  /** The owners once every member holds its share. */
  const settled = (members: string[], owners: (string | null)[]) => {
    const next = [...owners].fill(null);
    for (const [m, ks] of Object.entries(split(members, owners))) for (const k of ks) next[k] = m;
    return next;
  };

  it('gives every partition to exactly one live member, within one partition of an even split', () => {
    const members = ['c2', 'c1', 'c3'];
    const shares = Object.values(split(members, none(8)));

    expect(shares.flat().sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(shares.map((s) => s.length).sort()).toEqual([2, 3, 3]);
  });

  it('works out the same split whatever order the members are listed in', () => {
    const owners = ['a', null, 'c', 'c', 'c', null, 'a', 'b'];

    expect(partitionsOf('b', ['c', 'a', 'b'], owners)).toEqual(partitionsOf('b', ['a', 'b', 'c'], owners));
  });

  it('keeps the split as it is once every member holds its share', () => {
    const members = ['a', 'b', 'c'];
    const owners = settled(members, none(8));

    expect(settled(members, owners)).toEqual(owners);
  });

  it('moves only the partitions a joining member needs', () => {
    const before = settled(['a', 'b', 'c'], none(8));

    const after = settled(['a', 'b', 'c', 'd'], before);

    expect(after.filter((owner, k) => owner !== before[k])).toEqual(['d', 'd']);
  });

  it("moves only a departed member's partitions, to the members left", () => {
    const before = settled(['a', 'b', 'c'], none(8));

    const after = settled(['a', 'c'], before);

    expect(after.filter((owner, k) => owner !== before[k]).length).toBe(
      before.filter((o) => o === 'b').length,
    );
    expect(after.filter((o) => o === 'a').length + after.filter((o) => o === 'c').length).toBe(8);
  });

  it('gives nothing to a consumer that is not a member (its membership lapsed)', () => {
    expect(partitionsOf('gone', ['a', 'b'], none(8))).toEqual([]);
  });
});

describe("a partition's retry schedule", () => {
  const NOW = 1_000_000;

  it('counts an entry it never saw fail as due now, whatever its delivery count suggests', () => {
    const retries = new RetrySchedule(1_000);
    retries.failed('1-0', 1, NOW);

    expect(retries.dueInOrder('1-0', NOW)).toBe(NOW + 1_000);
    expect(retries.dueInOrder('2-0', NOW)).toBe(NOW);
  });
});

const group = (stream: string, g: Partial<GroupState>): GroupState => ({
  stream,
  group: 'g',
  lag: 0,
  lagSeconds: 0,
  pending: 0,
  oldestPendingSeconds: 0,
  lastDeliveredId: '0-0',
  entriesRead: 0,
  ...g,
});
const state = (stream: string, length: number, groups: GroupState[]): StreamState => ({
  stream,
  length,
  deadLetters: 0,
  groups,
});

describe('sumPartitions', () => {
  it("adds each group's lag and pending up over the partitions, under the stream's name, and keeps the oldest ages", () => {
    const base = { ...state('orders', 0, []), deadLetters: 4 };
    const parts = [
      state('orders:{0}', 10, [
        group('orders:{0}', { lag: 3, pending: 1, lagSeconds: 2, lastDeliveredId: '5-0' }),
      ]),
      state('orders:{1}', 20, [
        group('orders:{1}', { lag: 5, pending: 2, lagSeconds: 7, lastDeliveredId: '9-0' }),
      ]),
    ];

    expect(sumPartitions(base, parts)).toEqual({
      stream: 'orders',
      length: 30,
      deadLetters: 4,
      groups: [
        group('orders', { lag: 8, pending: 3, lagSeconds: 7, lastDeliveredId: '9-0', entriesRead: 0 }),
      ],
    });
  });

  it('leaves the lag unknown when one partition cannot tell it', () => {
    const parts = [
      state('o:{0}', 1, [group('o:{0}', { lag: null })]),
      state('o:{1}', 1, [group('o:{1}', { lag: 4 })]),
    ];

    expect(sumPartitions(state('o', 0, []), parts).groups[0]!.lag).toBeNull();
  });
});

describe('sumPartitions, entries read', () => {
  it('counts a partition whose group has read nothing yet as none read, not as unknown', () => {
    const idle = group('o:{0}', { entriesRead: null });
    const busy = group('o:{1}', { lastDeliveredId: '7-0', entriesRead: 5 });

    expect(
      sumPartitions(state('o', 0, []), [state('o:{0}', 0, [idle]), state('o:{1}', 0, [busy])]).groups[0]!
        .entriesRead,
    ).toBe(5);
  });
});
