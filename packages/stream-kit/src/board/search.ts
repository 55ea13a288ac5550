import type { RedisClient } from '../connection.ts';
import { toDeadLetter } from '../dead-letters.ts';
import { idTimeMs } from '../stream.ts';
import type { DeadLetterPage, DeadLetterView } from './api.ts';

/*
 * Searching a dead-letter stream. Time bounds are an ID range (XRANGE reads only what lies in it);
 * an entity id or a reason is matched while reading, so a search reads at most `SEARCH_BUDGET`
 * dead letters per call and hands back where it stopped: a dead-letter stream is small next to
 * its stream, but the board never lets one request read without bound.
 */

/** Dead letters one search call reads at most. */
export const SEARCH_BUDGET = 5_000;
const CHUNK = 250;

export interface Search {
  /** The field that names the entity (`orderId`) and the value it must have. */
  readonly entity?: { readonly field: string; readonly id: string };
  /** A part of the reason, any case. */
  readonly reason?: string;
  /** Dead-lettered at or after this time, ms since the epoch. */
  readonly fromMs?: number;
  /** Dead-lettered at or before this time, ms since the epoch. */
  readonly toMs?: number;
}

/** One page of the dead letters of `stream` that match `search`, after the dead letter `after`. */
export async function searchDeadLetters(
  redis: RedisClient,
  stream: string,
  deadLetterStream: string,
  search: Search,
  options: { after?: string; count: number; budget?: number },
): Promise<DeadLetterPage> {
  const { letters, next } = await readMatching(redis, stream, deadLetterStream, search, options);
  return { letters, ...(next ? { next } : {}), total: await redis.xlen(deadLetterStream) };
}

/** The matches of one search call, where the next call goes on from, and how many it read. */
async function readMatching(
  redis: RedisClient,
  stream: string,
  deadLetterStream: string,
  search: Search,
  { after, count, budget = SEARCH_BUDGET }: { after?: string; count: number; budget?: number },
): Promise<{ letters: DeadLetterView[]; next: string | undefined; read: number }> {
  const reason = search.reason?.toLowerCase();
  const matches = (letter: DeadLetterView) =>
    (!search.entity || letter.fields[search.entity.field] === search.entity.id) &&
    (!reason || letter.reason.toLowerCase().includes(reason));
  const end = search.toMs === undefined ? '+' : String(search.toMs);
  let start = after ? `(${after}` : search.fromMs === undefined ? '-' : String(search.fromMs);
  const letters: DeadLetterView[] = [];
  let read = 0;
  for (;;) {
    const asked = Math.min(CHUNK, budget - read);
    const chunk = await redis.xrange(deadLetterStream, start, end, 'COUNT', asked);
    let stoppedAt: string | undefined;
    for (const [id, flat] of chunk) {
      read += 1;
      const letter = { ...toDeadLetter(id, flat), stream, at: idTimeMs(id) };
      if (matches(letter)) letters.push(letter);
      if (letters.length === count) {
        stoppedAt = id;
        break;
      }
    }
    const last = chunk.at(-1)?.[0];
    // A full chunk: there may be more past it.
    const more = chunk.length === asked;
    // Whether anything lies past a full page is for the next call to find out.
    if (stoppedAt !== undefined)
      return { letters, next: stoppedAt === last && !more ? undefined : stoppedAt, read };
    if (!last || !more) return { letters, next: undefined, read };
    if (read >= budget) return { letters, next: last, read };
    start = `(${last}`;
  }
}

/**
 * The IDs of every dead letter of `stream` that matches `search`, reading at most `limit` dead
 * letters: what "replay all matching" and "discard all matching" act on. `more` says whether the
 * limit stopped it (the caller runs it again for the rest).
 */
export async function allMatching(
  redis: RedisClient,
  stream: string,
  deadLetterStream: string,
  search: Search,
  limit: number,
): Promise<{ ids: string[]; more: boolean }> {
  const ids: string[] = [];
  let after: string | undefined;
  let read = 0;
  do {
    const budget = Math.min(SEARCH_BUDGET, limit - read);
    const page = await readMatching(redis, stream, deadLetterStream, search, {
      count: budget,
      budget,
      ...(after ? { after } : {}),
    });
    read += page.read;
    ids.push(...page.letters.map((letter) => letter.id));
    after = page.next;
  } while (after && read < limit);
  return { ids, more: after !== undefined };
}
