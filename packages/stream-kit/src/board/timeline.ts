import type { RedisClient } from '../connection.ts';
import { compareIds } from '../consumer/group.ts';
import { groupPositions } from '../inspect.ts';
import { fieldsFromReply, idTimeMs } from '../stream.ts';
import type { DeadLetterView, Timeline, TimelineEntry } from './api.ts';
import type { Tick } from './sampler.ts';
import { searchDeadLetters } from './search.ts';

/** What a lookup knows of an entity (an order): a summary, and the entries of its life. */
export interface Lookup {
  /** Shown as is: for an order, its status, user, product, price. */
  readonly summary: Record<string, unknown>;
  /** The entries that made its life, oldest first: each looked up by ID, never searched for. */
  readonly steps: readonly {
    readonly stream: string;
    readonly entryId: string;
    readonly event?: string;
    readonly status?: string;
  }[];
}

/**
 * The timeline of `id`: the lookup's summary, each of its entries with where every group of its
 * stream is with it (one XRANGE and at most one XPENDING per entry and group, by ID), and its dead
 * letters (a bounded search of each dead-letter stream). Undefined when nothing knows of it.
 */
export async function timelineOf(
  redis: RedisClient,
  id: string,
  found: Lookup | undefined,
  tick: Tick,
  entityField: string,
): Promise<Timeline | undefined> {
  // Read now, not at the last tick: an entry delivered since then must not show as waiting.
  const read = new Map<string, ReturnType<typeof groupPositions>>();
  const groupsOf = (stream: string) => {
    let groups = read.get(stream);
    if (!groups) read.set(stream, (groups = groupPositions(redis, stream)));
    return groups;
  };
  const entries = await Promise.all(
    (found?.steps ?? []).map(async (step): Promise<TimelineEntry> => {
      const groups = await groupsOf(step.stream);
      const [[entry], states] = await Promise.all([
        redis.xrange(step.stream, step.entryId, step.entryId),
        Promise.all(
          groups.map(async ({ group, lastDeliveredId }) => {
            if (compareIds(step.entryId, lastDeliveredId) > 0) return { group, state: 'waiting' as const };
            const [pending] = (await redis.xpending(step.stream, group, step.entryId, step.entryId, 1)) as [
              string,
              string,
              number,
              number,
            ][];
            return pending
              ? { group, state: 'pending' as const, consumer: pending[1], deliveries: pending[3] }
              : { group, state: 'handled' as const };
          }),
        ),
      ]);
      return {
        stream: step.stream,
        entryId: step.entryId,
        at: idTimeMs(step.entryId),
        ...(entry ? { fields: fieldsFromReply(entry[1]) } : {}),
        ...(step.event === undefined ? {} : { event: step.event }),
        ...(step.status === undefined ? {} : { status: step.status }),
        groups: states,
      };
    }),
  );
  const since = entries.length > 0 ? Math.min(...entries.map((entry) => entry.at)) : undefined;
  const deadLetters: DeadLetterView[] = [];
  if (entityField)
    for (const stream of tick.streams) {
      const page = await searchDeadLetters(
        redis,
        stream.name,
        stream.deadLetterStream,
        // Dead letters come after the entity's first entry: the search starts there, not at the oldest.
        { entity: { field: entityField, id }, ...(since === undefined ? {} : { fromMs: since }) },
        { count: 20 },
      );
      deadLetters.push(...page.letters);
    }
  if (!found && deadLetters.length === 0) return undefined;
  return { id, ...(found ? { summary: found.summary } : {}), entries, deadLetters };
}
