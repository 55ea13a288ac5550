import type { RedisClient } from './connection.ts';
import { compareIds } from './consumer/group.ts';
import { silentLogger } from './logger.ts';
import { horizonOf, type Horizon } from './horizon.ts';
import type { EventOf, StreamDefinition } from './stream.ts';
import { subscribe, type Handler, type SubscribeOptions } from './subscriber.ts';

/** One stream of a replay, and the handler that rebuilds from its entries (typed for that stream). */
export interface ReplayRoute {
  stream: StreamDefinition;
  // `never`: a handler of any stream's events fits; subscribe() hands it that stream's events.
  handler: Handler<never>;
}

/** Options of `replay()`: those of `subscribe()`, but a replay's group always starts at `'0'`. */
export type ReplayOptions = Omit<SubscribeOptions, 'connection' | 'startId'> & {
  /** How often to look whether the group has got through the entries it must replay, in ms. @defaultValue 200 */
  pollMs?: number;
  /**
   * Called with where each stream ended (its last entry ID, by stream name; undefined: empty)
   * before any entry is handled: what the replay goes up to.
   */
  onEnds?: (ends: Record<string, string | undefined>) => void;
};

/** What `replay()` went through, per stream name. */
export interface ReplayReport {
  [stream: string]: {
    /** The stream's last entry when the replay began: every entry up to it has been handled. */
    until?: string;
    /** Entries the handler handled (it may have handled some after `until` too). */
    handled: number;
  };
}

/**
 * Replays streams from their first entry through handlers, in a consumer group that does not exist
 * yet: the way to rebuild a projection into fresh keys. Each stream is replayed up to the entry
 * that was its last when the replay began, one stream after the other in the order given, so a
 * stream whose events refer to another's (payments to orders) should come after it; the ends are
 * read last stream first, so that an entry of a later stream that some entry of an earlier one
 * caused finds that one replayed. Entries come as `subscribe()` delivers them (retries, dead
 * letters to `deadLetterStream`, `concurrency` side by side).
 *
 * The group stays where the replay left it: a service that subscribes in it next carries on from
 * there, with no entry skipped, so the rebuilt projection can take over from the live one (the
 * switch is the caller's). Only entries still in the streams are replayed: what retention trimmed
 * away is gone. Throws if the group exists on one of the streams.
 */
export async function replay(
  redis: RedisClient,
  group: string,
  consumer: string,
  routes: readonly ReplayRoute[],
  options: ReplayOptions = {},
): Promise<ReplayReport> {
  const { pollMs = 200, onEnds, ...subscribeOptions } = options;
  const logger = subscribeOptions.logger ?? silentLogger;
  for (const { stream } of routes)
    if (await horizonOf(redis, stream.name, group))
      throw new Error(`consumer group ${group} exists on ${stream.name}: a replay starts a group of its own`);

  const ends: (string | undefined)[] = [];
  for (const { stream } of [...routes].reverse()) {
    const [last] = await redis.xrevrange(stream.name, '+', '-', 'COUNT', 1);
    ends.unshift(last?.[0]);
  }
  onEnds?.(Object.fromEntries(routes.map(({ stream }, index) => [stream.name, ends[index]])));

  const report: ReplayReport = {};
  for (const [index, { stream, handler }] of routes.entries()) {
    const until = ends[index];
    const done = { handled: 0, ...(until === undefined ? {} : { until }) };
    report[stream.name] = done;
    if (until === undefined) {
      // Nothing to replay; the group still starts at the beginning, for the entries to come.
      await redis.xgroup('CREATE', stream.name, group, '0', 'MKSTREAM');
      continue;
    }
    const counted: Handler<EventOf<typeof stream>> = async (event, context) => {
      await handler(event as never, context);
      done.handled += 1;
    };
    const subscription = subscribe(group, consumer, stream, counted, {
      ...subscribeOptions,
      connection: redis,
      startId: '0',
    });
    try {
      let lastLog = Date.now();
      for (;;) {
        const horizon = await horizonOf(redis, stream.name, group);
        if (handledUpTo(horizon, until)) break;
        if (Date.now() - lastLog >= 5_000) {
          lastLog = Date.now();
          logger.info({ stream: stream.name, group, until, at: horizon?.delivered }, 'replaying');
        }
        await new Promise((resolve) => setTimeout(resolve, pollMs));
      }
    } finally {
      await subscription.close();
    }
    logger.info({ stream: stream.name, group, until, handled: done.handled }, 'replayed');
  }
  return report;
}

/** Whether every entry up to and including `id` has been handled, as far as `horizon` shows. */
function handledUpTo(horizon: Horizon | undefined, id: string): boolean {
  if (!horizon || compareIds(horizon.delivered, id) < 0) return false;
  return horizon.pendingFrom === undefined || compareIds(horizon.pendingFrom, id) > 0;
}
