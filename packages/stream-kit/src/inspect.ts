import type { RedisClient } from './connection.ts';
import { compareIds } from './consumer/group.ts';
import { idTimeMs } from './stream.ts';

/*
 * What Redis says of streams and their consumer groups, read with a few commands per stream and
 * group and never a scan, so that it costs the same on a stream of a million entries as on an
 * empty one. The services' metrics (service/metrics.ts) and the board (board/) read it here.
 */

/** A consumer of a group (XINFO CONSUMERS). */
export interface ConsumerState {
  readonly name: string;
  readonly pending: number;
  /** Since its last attempted read, in ms. */
  readonly idleMs: number;
  /** Since its last successful read, in ms (Redis 7.2 and later; before, the same as `idleMs`). */
  readonly inactiveMs: number;
}

/** A consumer group of a stream, at one read. */
export interface GroupState {
  readonly stream: string;
  readonly group: string;
  /** Entries not yet delivered to the group; null when Redis cannot tell (entries deleted in between). */
  readonly lag: number | null;
  /** Age of the oldest entry not yet delivered, by its ID, on Redis's clock; 0 when none waits. */
  readonly lagSeconds: number;
  readonly pending: number;
  /** Age of the oldest pending entry, by its ID, on Redis's clock; 0 when none is. */
  readonly oldestPendingSeconds: number;
  readonly lastDeliveredId: string;
  /** Entries delivered to the group since it was created (`entries-read`); null when Redis cannot tell. */
  readonly entriesRead: number | null;
  /** Only when asked for (`consumers: true`). */
  readonly consumers?: readonly ConsumerState[];
}

/** A stream, at one read. */
export interface StreamState {
  readonly stream: string;
  readonly length: number;
  /** Entries in its dead-letter streams, all together. */
  readonly deadLetters: number;
  /** Only with `detail`: the last entry ID ever added (`0-0` for none) and how many were added. */
  readonly lastId?: string;
  readonly entriesAdded?: number;
  readonly groups: readonly GroupState[];
}

export interface Inspection {
  /** When it was read, ms since the epoch on Redis's clock. */
  readonly at: number;
  readonly streams: readonly StreamState[];
}

export interface InspectOptions {
  /**
   * Read each stream with XINFO STREAM (its last ID and entries ever added) instead of XLEN, and
   * each group's consumers with XINFO CONSUMERS: what the board shows, and more than metrics need.
   * @defaultValue false
   */
  detail?: boolean;
}

/**
 * Reads `streams` (stream name → the names of its dead-letter streams) and every group of each.
 * A stream not created yet reads as empty, with no groups. Rejects with the Redis error.
 */
export async function inspectStreams(
  redis: RedisClient,
  streams: ReadonlyMap<string, ReadonlySet<string>>,
  { detail = false }: InspectOptions = {},
): Promise<Inspection> {
  const [seconds, micros] = await redis.time();
  const at = Number(seconds) * 1_000 + Math.floor(Number(micros) / 1_000);
  const ageOf = (id: string) => Math.max(0, at - idTimeMs(id)) / 1_000;
  const states = await Promise.all(
    [...streams].map(async ([stream, deadLetterStreams]): Promise<StreamState> => {
      const [info, groupInfos, deadLetters]: [Record<string, unknown>, unknown[][], number[]] =
        await Promise.all([
          detail
            ? (redis.xinfo('STREAM', stream) as Promise<unknown[]>).then(
                pairs,
                noSuchKey<Record<string, unknown>>({}),
              )
            : redis.xlen(stream).then((length) => ({ length })),
          (redis.xinfo('GROUPS', stream) as Promise<unknown[][]>).catch(noSuchKey([])),
          Promise.all([...deadLetterStreams].map((name) => redis.xlen(name))),
        ]);
      const groups = await Promise.all(
        groupInfos.map(async (flat): Promise<GroupState> => {
          const fields = pairs(flat);
          const group = String(fields.name);
          const pending = Number(fields.pending);
          const lag = nullableNumber(fields.lag);
          const lastDeliveredId = String(fields['last-delivered-id']);
          const [next, summary, consumers] = await Promise.all([
            // The first entry past the group's last delivered one, unless Redis says none is.
            lag === 0 ? [] : redis.xrange(stream, `(${lastDeliveredId}`, '+', 'COUNT', 1),
            pending > 0
              ? (redis.xpending(stream, group) as Promise<[number, string | null]>).catch(noGroup(undefined))
              : undefined,
            detail ? readConsumers(redis, stream, group) : undefined,
          ]);
          const oldestPending = summary?.[1];
          return {
            stream,
            group,
            lag,
            lagSeconds: next[0] ? ageOf(next[0][0]) : 0,
            pending,
            oldestPendingSeconds: oldestPending ? ageOf(oldestPending) : 0,
            lastDeliveredId,
            entriesRead: nullableNumber(fields['entries-read']),
            ...(consumers ? { consumers } : {}),
          };
        }),
      );
      return {
        stream,
        length: Number(info.length ?? 0),
        deadLetters: deadLetters.reduce((a, b) => a + b, 0),
        ...(detail
          ? {
              lastId: String(info['last-generated-id'] ?? '0-0'),
              entriesAdded: Number(info['entries-added'] ?? 0),
            }
          : {}),
        groups,
      };
    }),
  );
  return { at, streams: states };
}

/**
 * A partitioned stream as one: `base` (its own name, read as a stream with its dead-letter
 * streams, holding no entries itself) with its `partitions`' states added up, each group's by
 * name. Lengths, lag, pending and entries read add up (lag and entries read are unknown if any
 * partition's is); the ages are the oldest partition's; the last delivered ID is the latest. What
 * an autoscaler wants: one number per stream and group, however many partitions.
 */
export function sumPartitions(base: StreamState, partitions: readonly StreamState[]): StreamState {
  const groups = new Map<string, GroupState>();
  const add = (a: number | null, b: number | null) => (a === null || b === null ? null : a + b);
  for (const state of partitions)
    for (const read of state.groups) {
      // A partition's group that has read nothing yet may not say so (no `entries-read` until its
      // first read): it has read none, which must not make the whole stream's count unknown.
      const g =
        read.entriesRead === null && read.lastDeliveredId === '0-0' ? { ...read, entriesRead: 0 } : read;
      const sum = groups.get(g.group);
      groups.set(
        g.group,
        sum
          ? {
              stream: base.stream,
              group: g.group,
              lag: add(sum.lag, g.lag),
              lagSeconds: Math.max(sum.lagSeconds, g.lagSeconds),
              pending: sum.pending + g.pending,
              oldestPendingSeconds: Math.max(sum.oldestPendingSeconds, g.oldestPendingSeconds),
              lastDeliveredId:
                compareIds(g.lastDeliveredId, sum.lastDeliveredId) > 0
                  ? g.lastDeliveredId
                  : sum.lastDeliveredId,
              entriesRead: add(sum.entriesRead, g.entriesRead),
              ...(sum.consumers || g.consumers
                ? { consumers: [...(sum.consumers ?? []), ...(g.consumers ?? [])] }
                : {}),
            }
          : { ...g, stream: base.stream },
      );
    }
  return {
    ...base,
    length: partitions.reduce((total, state) => total + state.length, base.length),
    deadLetters: partitions.reduce((total, state) => total + state.deadLetters, base.deadLetters),
    ...(base.entriesAdded === undefined
      ? {}
      : { entriesAdded: partitions.reduce((total, state) => total + (state.entriesAdded ?? 0), 0) }),
    ...(base.lastId === undefined
      ? {}
      : {
          lastId: partitions.reduce(
            (last, state) => (state.lastId && compareIds(state.lastId, last) > 0 ? state.lastId : last),
            base.lastId,
          ),
        }),
    groups: [...groups.values()],
  };
}

/** Each group of `stream` and the last entry delivered to it, as XINFO GROUPS says now (none for a stream not created yet). */
export async function groupPositions(
  redis: RedisClient,
  stream: string,
): Promise<{ group: string; lastDeliveredId: string }[]> {
  const infos = await (redis.xinfo('GROUPS', stream) as Promise<unknown[][]>).catch(
    noSuchKey<unknown[][]>([]),
  );
  return infos.map((flat) => {
    const fields = pairs(flat);
    return { group: String(fields.name), lastDeliveredId: String(fields['last-delivered-id']) };
  });
}

async function readConsumers(redis: RedisClient, stream: string, group: string): Promise<ConsumerState[]> {
  const infos = await (redis.xinfo('CONSUMERS', stream, group) as Promise<unknown[][]>).catch(
    noGroup<unknown[][]>([]),
  );
  return infos.map((flat) => {
    const fields = pairs(flat);
    const idleMs = Number(fields.idle);
    return {
      name: String(fields.name),
      pending: Number(fields.pending),
      idleMs,
      inactiveMs: fields.inactive === undefined ? idleMs : Number(fields.inactive),
    };
  });
}

/** A rejection handler that answers `empty` for a key that does not exist, and rethrows the rest. */
function noSuchKey<T>(empty: T) {
  return (err: unknown): T => {
    if (err instanceof Error && err.message.startsWith('ERR no such key')) return empty;
    throw err;
  };
}

function nullableNumber(value: unknown): number | null {
  return value === null || value === undefined ? null : Number(value);
}

/** A rejection handler for a group destroyed since XINFO GROUPS listed it: `gone` for it, and rethrows the rest. */
function noGroup<T>(gone: T) {
  return (err: unknown): T => {
    if (err instanceof Error && err.message.startsWith('NOGROUP')) return gone;
    throw err;
  };
}

/** `[k1, v1, k2, v2]` → `{k1: v1, k2: v2}`. */
function pairs(flat: unknown[]): Record<string, unknown> {
  const fields: Record<string, unknown> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[String(flat[i])] = flat[i + 1];
  return fields;
}
