import { randomUUID } from 'node:crypto';
import { RetryLaterError, type DeliveryContext } from '@msa/stream-kit';
import { OrderEvents, PaymentEvents } from '@msa/stream-kit/events';
import {
  batchCalls,
  CONSUMER_DEAD,
  defineScript,
  LIVENESS_TTL_MS,
  livenessKey,
  slotTag,
} from '@msa/stream-kit/lua';
import type { RedisClient } from '@msa/stream-kit';
import type { Channel } from './sender.ts';

/**
 * Someone else is sending this notification right now: another consumer (its lease in Redis) or
 * another handler of this process. A wait, not a failure: as a `RetryLaterError`, the entry comes
 * back `retryDelayMs` later and the run does not count toward `maxDeliveries`.
 */
export class NotificationLeasedError extends RetryLaterError {
  constructor(
    /** The notification's key, e.g. `mail:<orderId>`. */
    readonly key: string,
    holder: 'another consumer' | 'another handler of this process',
  ) {
    super(`${key} is being sent by ${holder}`);
  }
}

export interface SentNotification {
  channel: Channel;
  /** The event type that caused it, e.g. `order-created`. */
  event: string;
  /** Absent for payments written by the tutorial's Java payment-service, which has none. */
  orderId?: string | undefined;
  /** The stream entry that caused it. */
  entryId: string;
  /** When it was sent, ISO 8601. */
  time: string;
}

export interface Once {
  /**
   * What makes this notification one, e.g. `mail:<orderId>`: a second event with the same key is
   * not sent again. Also the idempotency key to hand the provider.
   */
  key: string;
  userId: string;
  notification: SentNotification;
  /** The delivery it answers: its entry is acked in the same step as the record. */
  context: DeliveryContext;
}

/** A page of a user's sent log. */
export interface SentPage {
  /** Oldest first. */
  notifications: SentNotification[];
  /**
   * Where the next page starts in each of the user's logs (one on one Redis, one per stream on a
   * cluster), or `null` when there is nothing after this page (yet).
   */
  next: number[] | null;
}

/**
 * Every notification sent, per user, and the guard that sends each one once across processes.
 * All in notification-service's own keys.
 */
export interface SentLog {
  /**
   * Calls `send` unless the notification was sent already, then records it and acks its entry in
   * one atomic step. While `send` runs, the notification is leased to this consumer name for
   * `leaseMs`, so another consumer that gets the same event waits instead of sending it too, and
   * so does a second handler of this process: the call throws `NotificationLeasedError`, a
   * `RetryLaterError` (the entry comes back later, and the wait is not a failed delivery). A
   * lease under this consumer's own name that no handler of this process holds is left by a
   * claim or a release that failed on the way (or by an earlier run of this consumer name, which
   * is dead: a name is never used by two live processes), and is taken again at once. If the
   * record fails after a send, the call throws and the next delivery only records. The records
   * of the calls for one stream and group that reach that step in the same tick go to Redis in
   * one script call; one that fails there (Redis's error for its own keys) fails alone. A crash
   * between `send` and the record sends it again once the lease expires: the one duplicate that
   * no Redis step can rule out, which is why providers get `key` as their idempotency key.
   * Resolves, to whether it was sent now, only once a script has acked the entry: the claim that
   * finds the notification sent, or the record after the send. So its caller needs no XACK of
   * its own (`handlerAcks`).
   */
  sendOnce(once: Once, send: () => Promise<void>): Promise<boolean>;
  /**
   * Up to `limit` notifications from `start` (an index per log, an earlier page's `next`; the
   * oldest by default), oldest first.
   */
  list(userId: string, page?: { start?: readonly number[]; limit?: number }): Promise<SentPage>;
}

/** How many notifications `list` returns when not told. */
export const DEFAULT_PAGE_SIZE = 100;

/**
 * A user's sent log, and the marker that makes a notification one. `tag` (`slotTag(redis, stream)`
 * of the stream whose entry caused it) puts them in that stream's hash slot on a Redis Cluster,
 * where the scripts that write them ack its entries; there each stream keeps its own log per
 * user, and `list` merges them.
 */
export const sentLogKey = (userId: string, tag = '') => `notification-service:sent:${tag}${userId}`;
export const markerKey = (key: string, tag = '') => `notification-service:once:${tag}${key}`;

/** How long a sent notification is remembered, so a late duplicate of its event is not sent again. */
export const REMEMBER_SENT_MS = 30 * 24 * 60 * 60 * 1000;

/**
 * KEYS: marker, stream, the group's liveness marks (see `livenessKey`). ARGV: group, entry ID, this
 * consumer's lease prefix (`sending:<consumer>:`), token (the prefix and a UUID), lease ms, this
 * consumer's name, a liveness mark's life (ms).
 * 'sent': done before (the entry is acked now). 'busy': another consumer name holds the lease.
 * 'claimed': ours to send. A lease under our own consumer name (the prefix, then a token without
 * a colon: not a longer name that starts the same) is ours whatever its token: the caller has
 * already ruled out a handler of its own process sending this notification right now, and a
 * consumer name is never used by two live processes. A lease whose holder is dead (its liveness
 * mark lapsed) is ours too, if this consumer may judge (`may_judge`: right after a stall of Redis
 * every mark looks lapsed): stream-kit gives a dead consumer's entries to the others within
 * seconds, and they should not then wait out the lease.
 */
const CLAIM = `${CONSUMER_DEAD}
local state = redis.call('GET', KEYS[1])
if state == 'sent' then
  redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
  return 'sent'
end
local prefix = ARGV[3]
if state and (string.sub(state, 1, #prefix) ~= prefix or string.find(state, ':', #prefix + 1, true)) then
  local holder = string.match(state, '^sending:(.*):[^:]*$')
  if not (holder and may_judge(KEYS[3], ARGV[6], ARGV[7]) and consumer_dead(KEYS[3], holder)) then
    return 'busy'
  end
end
redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5])
return 'claimed'
`;

/**
 * Records notifications as sent and acks their entries: many per call (the handlers of one stream
 * and group that got there in the same tick, see `batchCalls`), each in a `pcall` of its own, so
 * one that fails (its marker or log key holds another type: WRONGTYPE) answers its own error and
 * is not acked while the others are recorded. RPUSH before SET: the SET cannot fail once the
 * script runs, so a failed record writes nothing. One XACK at the end, of every entry recorded.
 * `#!lua` (no flags): while Redis is out of memory it refuses the whole script up front, rather
 * than failing each record inside its pcall.
 *
 * KEYS: stream, then for each notification its marker and its user's log. ARGV: group, remember
 * ms, then for each notification its record and its entry ID. Answers, for each in turn, 1 or
 * Redis's error message.
 */
const COMPLETE_MANY = `#!lua
local group, remember = ARGV[1], ARGV[2]
-- One function for every record, not a closure per record: pcall(record_one, ...) makes no garbage.
local function record_one(marker, log, record)
  if redis.call('GET', marker) ~= 'sent' then
    redis.call('RPUSH', log, record)
    redis.call('SET', marker, 'sent', 'PX', remember)
  end
end
local answers, acked = {}, {}
for i = 1, (#KEYS - 1) / 2 do
  local entry = ARGV[2 * i + 2]
  local ok, err = pcall(record_one, KEYS[2 * i], KEYS[2 * i + 1], ARGV[2 * i + 1])
  if ok then
    acked[#acked + 1] = entry
    answers[i] = 1
  else
    -- Redis 7.0 hands pcall the error's message, later versions the error table.
    answers[i] = type(err) == 'table' and err.err or tostring(err)
  end
end
if #acked > 0 then redis.call('XACK', KEYS[1], group, unpack(acked)) end
return answers
`;

/** A notification for COMPLETE_MANY, as one handler queues it. */
interface Complete {
  marker: string;
  log: string;
  record: string;
  stream: string;
  group: string;
  entryId: string;
}

/**
 * The most notifications one COMPLETE_MANY call records: below the service's CONCURRENCY, so that
 * Redis runs one call while this process builds the next (see payment-service's SETTLE_MANY).
 */
const MAX_RECORDS_PER_CALL = 100;

/** KEYS: marker. ARGV: token. Gives the lease up after a failed send, so a retry need not wait. */
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
`;

/**
 * A sent log on `redis` (the service's own connection: the scripts are defined on it), for
 * notifications caused by entries of `streams`.
 */
export function redisSentLog(
  redis: RedisClient,
  {
    leaseMs = 30_000,
    streams = [OrderEvents.name, PaymentEvents.name],
  }: { leaseMs?: number; streams?: string[] } = {},
): SentLog {
  /** Where a user's log is: one key on one Redis, one per stream's slot on a cluster. */
  const logsOf = (userId: string) => [
    ...new Set(streams.map((stream) => sentLogKey(userId, slotTag(redis, stream)))),
  ];
  const scripts = {
    claimOnce: defineScript<'sent' | 'busy' | 'claimed'>(redis, 'claimOnce', 3, CLAIM),
    completeOnce: defineScript<(1 | string)[]>(redis, 'completeOnce', null, COMPLETE_MANY),
    releaseOnce: defineScript<number>(redis, 'releaseOnce', 1, RELEASE),
  };
  const complete = batchCalls<Complete, void>(
    async (records) => {
      const { stream, group } = records[0]!;
      const keys = [stream];
      const args: (string | number)[] = [group, REMEMBER_SENT_MS];
      for (const record of records) {
        keys.push(record.marker, record.log);
        args.push(record.record, record.entryId);
      }
      const answers = await scripts.completeOnce(keys.length, keys, args);
      return answers.map((answer) => (answer === 1 ? undefined : new Error(answer)));
    },
    {
      maxBatchSize: MAX_RECORDS_PER_CALL,
      // One XACK per call: the entries of one call share their stream and group.
      keyOf: ({ stream, group }) => JSON.stringify([stream, group]),
    },
  );
  /**
   * Sent by this process, not recorded yet: the record failed (Redis away a moment), and the
   * entry comes back for it. Its next delivery only records: sending again would be a duplicate.
   */
  const unrecorded = new Set<string>();
  /**
   * The notifications a handler of this process is working on right now. Only this tells two
   * handlers of one process apart: in Redis, both are this consumer name.
   */
  const inHand = new Set<string>();

  async function claimSendRecord({ key, userId, notification, context }: Once, send: () => Promise<void>) {
    const tag = slotTag(redis, context.stream);
    const marker = markerKey(key, tag);
    if (!unrecorded.has(marker)) {
      const prefix = `sending:${context.consumer}:`;
      const token = `${prefix}${randomUUID()}`;
      // prettier-ignore
      const state = await scripts.claimOnce(
        marker, context.stream, livenessKey(context.stream, context.group),
        context.group, context.id, prefix, token, leaseMs, context.consumer, LIVENESS_TTL_MS,
      );
      if (state === 'sent') return false;
      if (state === 'busy') throw new NotificationLeasedError(key, 'another consumer');
      try {
        // Paused since the claim (its answer may be stale), long enough to be taken for dead:
        // another consumer may be sending it now. The last check before the provider.
        if (!context.stillHeld()) throw new NotificationLeasedError(key, 'another consumer');
        await send();
      } catch (err) {
        // If this fails too, the lease stays until it expires; this consumer takes it again at once.
        await scripts.releaseOnce(marker, token).catch(() => {});
        throw err;
      }
      unrecorded.add(marker);
    }
    await complete({
      marker,
      log: sentLogKey(userId, tag),
      record: JSON.stringify(notification),
      stream: context.stream,
      group: context.group,
      entryId: context.id,
    });
    unrecorded.delete(marker);
    return true;
  }

  return {
    async sendOnce(once, send) {
      const marker = markerKey(once.key, slotTag(redis, once.context.stream));
      // Checked and taken before the first await: two handlers cannot both get past it.
      if (inHand.has(marker)) throw new NotificationLeasedError(once.key, 'another handler of this process');
      inHand.add(marker);
      try {
        return await claimSendRecord(once, send);
      } finally {
        inHand.delete(marker);
      }
    },
    async list(userId, { start = [], limit = DEFAULT_PAGE_SIZE } = {}) {
      const logs = logsOf(userId);
      const at = logs.map((_, i) => start[i] ?? 0);
      // One more than asked of each: whether there is a next page.
      const heads = await Promise.all(
        logs.map(async (log, i) =>
          (await redis.lrange(log, at[i]!, at[i]! + limit)).map(
            (item) => JSON.parse(item) as SentNotification,
          ),
        ),
      );
      // Merged by when they were sent, each log's entries in their own order: a page takes the
      // earliest head until it is full, and the next starts after what each log gave, so no
      // notification is shown twice or left out, whatever is appended meanwhile.
      const notifications: SentNotification[] = [];
      const taken = logs.map(() => 0);
      while (notifications.length < limit) {
        let from = -1;
        for (let i = 0; i < heads.length; i += 1) {
          const head = heads[i]![taken[i]!];
          if (head && (from === -1 || head.time < heads[from]![taken[from]!]!.time)) from = i;
        }
        if (from === -1) break;
        notifications.push(heads[from]![taken[from]!]!);
        taken[from]! += 1;
      }
      const more = heads.some((head, i) => head.length > taken[i]!);
      return { notifications, next: more ? at.map((index, i) => index + taken[i]!) : null };
    },
  };
}
