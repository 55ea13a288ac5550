import type { Redis } from 'ioredis';
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
  redis: Redis,
  stream: string,
  deadLetterStream: string,
  search: Search,
  { after, count, budget = SEARCH_BUDGET }: { after?: string; count: number; budget?: number },
): Promise<DeadLetterPage> {
  const reason = search.reason?.toLowerCase();
  const matches = (letter: DeadLetterView) =>
    (!search.entity || letter.fields[search.entity.field] === search.entity.id) &&
    (!reason || letter.reason.toLowerCase().includes(reason));
  const end = search.toMs === undefined ? '+' : String(search.toMs);
  let start = after ? `(${after}` : search.fromMs === undefined ? '-' : String(search.fromMs);
  const letters: DeadLetterView[] = [];
  let read = 0;
  let next: string | undefined;
  for (;;) {
    const asked = Math.min(CHUNK, budget - read);
    const chunk = await redis.xrange(deadLetterStream, start, end, 'COUNT', asked);
    read += chunk.length;
    let stoppedAt: string | undefined;
    for (const [id, flat] of chunk) {
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
    if (stoppedAt !== undefined) {
      // Whether anything lies past the page is for the next call to find out.
      next = stoppedAt === last && !more ? undefined : stoppedAt;
      break;
    }
    if (!last || !more) break;
    if (read >= budget) {
      next = last;
      break;
    }
    start = `(${last}`;
  }
  return { letters, ...(next ? { next } : {}), total: await redis.xlen(deadLetterStream) };
}

/**
 * The IDs of every dead letter of `stream` that matches `search`, up to `limit`: what "replay all
 * matching" and "discard all matching" act on. `more` says whether the limit stopped it.
 */
export async function allMatching(
  redis: Redis,
  stream: string,
  deadLetterStream: string,
  search: Search,
  limit: number,
): Promise<{ ids: string[]; more: boolean }> {
  const ids: string[] = [];
  let after: string | undefined;
  do {
    const page = await searchDeadLetters(redis, stream, deadLetterStream, search, {
      count: Math.min(500, limit - ids.length),
      ...(after ? { after } : {}),
    });
    ids.push(...page.letters.map((letter) => letter.id));
    after = page.next;
  } while (after && ids.length < limit);
  return { ids, more: after !== undefined };
}
