import type { RedisClient } from './connection.ts';
import { compareIds } from './consumer/group.ts';
import { idTimeMs } from './stream.ts';

/**
 * How far a consumer group has got through a stream: every entry at or before `delivered` has
 * been read by one of its consumers, and every one of those before `pendingFrom` (all of them, when
 * it is undefined) has been handled and acked. `caughtUp`: `delivered` is the stream's last entry.
 * Undefined when the group does not exist yet (nothing of the stream has been handled).
 */
export interface Horizon {
  delivered: string;
  pendingFrom?: string;
  caughtUp: boolean;
}

/** Reads `group`'s horizon on `stream`: XINFO GROUPS, XPENDING's summary, the last entry. */
export async function horizonOf(
  redis: RedisClient,
  stream: string,
  group: string,
): Promise<Horizon | undefined> {
  // A stream that does not exist yet has no groups; any other error is the caller's to see.
  const groups = (await redis.xinfo('GROUPS', stream).catch((err: unknown) => {
    if (err instanceof Error && /no such key/i.test(err.message)) return [];
    throw err;
  })) as unknown[][];
  const info = groups.find((fields) => fields[fields.indexOf('name') + 1] === group);
  if (!info) return undefined;
  const delivered = String(info[info.indexOf('last-delivered-id') + 1]);
  const [count, pendingFrom] = (await redis.xpending(stream, group)) as [number, string | null];
  const [last] = await redis.xrevrange(stream, '+', '-', 'COUNT', 1);
  return {
    delivered,
    ...(count > 0 && pendingFrom ? { pendingFrom } : {}),
    caughtUp: last === undefined || compareIds(last[0], delivered) <= 0,
  };
}

/**
 * Whether every entry of the stream from the millisecond of `id` (an entry of another stream, on
 * the same Redis clock) or before has been handled, as far as `horizon` shows. By the millisecond:
 * entry IDs of two streams say nothing of their order within one.
 */
export function handledThrough(horizon: Horizon | undefined, id: string): boolean {
  if (!horizon) return false;
  if (horizon.pendingFrom !== undefined && idTimeMs(horizon.pendingFrom) <= idTimeMs(id)) return false;
  return horizon.caughtUp || idTimeMs(id) < idTimeMs(horizon.delivered);
}

/**
 * Whether every entry of the stream before `id`, an entry of that same stream that is itself being
 * handled (pending), has been handled, as far as `horizon` shows.
 */
export function handledBefore(horizon: Horizon | undefined, id: string): boolean {
  if (!horizon || compareIds(horizon.delivered, id) < 0) return false;
  return horizon.pendingFrom === undefined || compareIds(horizon.pendingFrom, id) >= 0;
}

/**
 * The time (ms, on Redis's clock) up to which every entry of the stream has been handled: `now`
 * when the group has handled all there is, else just before the first entry it has not.
 */
export function handledUntilMs(horizon: Horizon | undefined, now: number): number {
  if (!horizon) return -Infinity;
  if (horizon.caughtUp && horizon.pendingFrom === undefined) return now;
  // Entries of the millisecond of `delivered` may still come: only the ones before it are sure.
  let until = idTimeMs(horizon.delivered) - 1;
  if (horizon.pendingFrom !== undefined) until = Math.min(until, idTimeMs(horizon.pendingFrom) - 1);
  return until;
}
