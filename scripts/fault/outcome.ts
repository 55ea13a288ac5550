import { sentLogKey } from '@msa/notification-service';
import { DEFAULT_PAYMENT_TIMEOUT_MS, liveReadModel } from '@msa/order-service';
import { OrderEvents, PaymentEvents, streams } from '@msa/stream-kit/events';
import type { RedisClient } from '@msa/stream-kit';
import { slotTag } from '@msa/stream-kit/lua';
import { entryFields } from '../../harness/streams.ts';
import { groupOf } from '../../harness/services.ts';

/*
 * What became of the orders a run placed, read from Redis the way an operator would: payments in
 * `payment-events`, mails and SMS in notification-service's sent lists, pending entries per group,
 * dead letters.
 */

/**
 * The services' consumer groups, as `[stream, group]`: payment-service reads orders,
 * notification-service and order-service (its read model) orders and payments.
 */
export const CONSUMER_GROUPS: readonly (readonly [string, string])[] = [
  [OrderEvents.name, groupOf('payment-service')],
  [OrderEvents.name, groupOf('notification-service')],
  [OrderEvents.name, groupOf('order-service')],
  [PaymentEvents.name, groupOf('notification-service')],
  [PaymentEvents.name, groupOf('order-service')],
];

/** The dead-letter stream of every stream of the catalogue, where `subscribe()` puts them by default. */
export const DEAD_LETTER_STREAMS: readonly string[] = streams.map((stream) => `${stream.name}:dlq`);

/** How many orders had 0, 1, 2... of something. */
export type Histogram = Record<number, number>;

/** Pending entries per `stream/group` (XPENDING's count; -1 for a group that does not exist). */
export async function pendingCounts(
  redis: RedisClient,
  groups: readonly (readonly [string, string])[] = CONSUMER_GROUPS,
): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const [stream, group] of groups) {
    const [count] = (await redis.xpending(stream, group).catch(() => [-1])) as [number];
    counts[`${stream}/${group}`] = count;
  }
  return counts;
}

export async function deadLetterCounts(redis: RedisClient): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const stream of DEAD_LETTER_STREAMS) counts[stream] = await redis.xlen(stream);
  return counts;
}

/** A dead letter, as the test reads it. */
export interface DeadLetterSeen {
  stream: string;
  /** The original entry's ID (`dlq:id`). */
  entryId: string;
  group: string;
  reason: string;
}

/** Every dead letter of the services' streams, oldest first. */
export async function deadLetters(redis: RedisClient): Promise<DeadLetterSeen[]> {
  const all: DeadLetterSeen[] = [];
  for (const stream of DEAD_LETTER_STREAMS) {
    for (const fields of await entryFields(redis, stream)) {
      all.push({
        stream,
        entryId: fields['dlq:id'] ?? '',
        group: fields['dlq:group'] ?? '',
        reason: fields['dlq:reason'] ?? '',
      });
    }
  }
  return all;
}

/** A notification as notification-service records it. */
interface SentNotification {
  channel: string;
  /** The event type that caused it. */
  event: string;
  orderId?: string;
}

/** The keys of the sent logs of `userIds`: one per user on one Redis, one per stream's slot on a cluster. */
function sentLogKeys(redis: RedisClient, userIds: readonly string[]): string[] {
  const tags = [...new Set(streams.map((stream) => slotTag(redis, stream.name)))];
  return userIds.flatMap((userId) => tags.map((tag) => sentLogKey(userId, tag)));
}

/** What notification-service recorded as sent to `userIds` (its sent log: `sentLogKey(userId)`). */
export async function sentNotifications(
  redis: RedisClient,
  userIds: readonly string[],
): Promise<SentNotification[]> {
  const all: SentNotification[] = [];
  for (const key of sentLogKeys(redis, userIds)) {
    const items = await redis.lrange(key, 0, -1);
    all.push(...items.map((item) => JSON.parse(item) as SentNotification));
  }
  return all;
}

/** The status of each order in `orderIds`, from order-service's read model (`missing`: none). */
export async function orderStates(
  redis: RedisClient,
  orderIds: Iterable<string>,
): Promise<Map<string, string>> {
  const ids = [...orderIds];
  const states = new Map<string, string>();
  const model = await liveReadModel(redis);
  for (let start = 0; start < ids.length; start += 500) {
    const pipeline = redis.pipeline();
    for (const id of ids.slice(start, start + 500)) pipeline.hmget(model.order(id), 'status', 'reason');
    const replies = (await pipeline.exec()) ?? [];
    replies.forEach(([, reply], i) => {
      const [status, reason] = reply as [string | null, string | null];
      states.set(ids[start + i]!, status === null ? 'missing' : reason ? `${status} ${reason}` : status);
    });
  }
  return states;
}

/** The ms of each order's `order-created` entry, from the first step of its history in the read model. */
async function orderCreatedAt(redis: RedisClient, orderIds: Iterable<string>): Promise<Map<string, number>> {
  const ids = [...orderIds];
  const at = new Map<string, number>();
  const model = await liveReadModel(redis);
  for (let start = 0; start < ids.length; start += 500) {
    const pipeline = redis.pipeline();
    for (const id of ids.slice(start, start + 500)) pipeline.hget(model.order(id), 'history');
    const replies = (await pipeline.exec()) ?? [];
    replies.forEach(([, history], i) => {
      const [first] = history ? (JSON.parse(history as string) as { entryId: string }[]) : [];
      if (first) at.set(ids[start + i]!, Number(first.entryId.slice(0, first.entryId.indexOf('-'))));
    });
  }
  return at;
}

/** `[k1, v1, k2, v2]` → `[[k1, v1], [k2, v2]]`. */
function pairs(flat: string[]): [string, string][] {
  const out: [string, string][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) out.push([flat[i]!, flat[i + 1]!]);
  return out;
}

/** See `Outcome.states` and `Outcome.mismatches`. */
async function sagaOf(
  redis: RedisClient,
  accepted: ReadonlySet<string>,
  notifications: readonly SentNotification[],
): Promise<Pick<Outcome, 'states' | 'mismatches'>> {
  const counts = new Map<string, Record<string, number>>();
  /** The ms of each order's first charge, on Redis's clock (its entry ID). */
  const chargedAt = new Map<string, number>();
  const bump = (orderId: string | undefined, what: string) => {
    if (orderId === undefined || !accepted.has(orderId)) return;
    const of = counts.get(orderId) ?? {};
    of[what] = (of[what] ?? 0) + 1;
    counts.set(orderId, of);
  };
  for (const [id, flat] of await redis.xrange(PaymentEvents.name, '-', '+')) {
    const fields = Object.fromEntries(pairs(flat));
    const type = fields.type ?? 'payment-completed';
    bump(fields.orderId, type);
    if (type === 'payment-completed' && fields.orderId && !chargedAt.has(fields.orderId))
      chargedAt.set(fields.orderId, Number(id.slice(0, id.indexOf('-'))));
  }
  for (const { channel, orderId } of notifications) bump(orderId, channel);

  const states = await orderStates(redis, accepted);
  const createdAt = await orderCreatedAt(redis, accepted);
  const byState: Record<string, number> = {};
  const wrong: string[] = [];
  for (const [orderId, state] of states) {
    byState[state] = (byState[state] ?? 0) + 1;
    const of = counts.get(orderId) ?? {};
    const [charges, refunds, declines] = ['payment-completed', 'payment-refunded', 'payment-failed'].map(
      (type) => of[type] ?? 0,
    ) as [number, number, number];
    const [mails, sms] = [of.mail ?? 0, of.sms ?? 0];
    // A paid order: one charge, nothing else. A declined one: its decline, no charge. One that
    // timed out: a charge (refunded) or a decline that came after the timeout, not both.
    const cancelled = mails === 2 && refunds === charges && sms === charges + refunds + declines;
    const fine =
      state === 'PAID'
        ? charges === 1 && refunds === 0 && declines === 0 && mails === 1 && sms === 1
        : state === 'CANCELLED payment-declined'
          ? cancelled && declines === 1 && charges === 0
          : state === 'CANCELLED payment-timeout' && cancelled && charges + declines <= 1;
    // Charged before it was due (its entry older than its order's plus the payment timeout), yet
    // cancelled for the timeout: the timeouts must wait for the payments that came in time.
    const paidInTime =
      state === 'CANCELLED payment-timeout' &&
      chargedAt.has(orderId) &&
      chargedAt.get(orderId)! < (createdAt.get(orderId) ?? Infinity) + DEFAULT_PAYMENT_TIMEOUT_MS;
    if (paidInTime) wrong.push(`${orderId} ${state}, though charged before it was due`);
    else if (!fine)
      wrong.push(
        `${orderId} ${state}: ${charges} charges, ${refunds} refunds, ${declines} declines, ${mails} mails, ${sms} SMS`,
      );
  }
  const mismatches = wrong.slice(0, 5);
  if (wrong.length > 5) mismatches.push(`... and ${wrong.length - 5} more`);
  return { states: byState, mismatches };
}

export async function sentCount(redis: RedisClient, userIds: readonly string[]): Promise<number> {
  let total = 0;
  for (const key of sentLogKeys(redis, userIds)) total += await redis.llen(key);
  return total;
}

/** The `orderId` of every charge on `payment-events` (`payment-completed`, or no type: the tutorial's). */
export async function paidOrderIds(redis: RedisClient): Promise<(string | undefined)[]> {
  return (await entryFields(redis, PaymentEvents.name))
    .filter((fields) => (fields.type ?? 'payment-completed') === 'payment-completed')
    .map((fields) => fields.orderId);
}

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/g;

/** For each accepted order, how many of `orderIds` name it; and how many name no accepted order. */
export function countBy(accepted: ReadonlySet<string>, orderIds: readonly (string | undefined)[]) {
  const perOrder = new Map<string, number>([...accepted].map((id) => [id, 0]));
  let strays = 0;
  for (const id of orderIds) {
    if (id !== undefined && perOrder.has(id)) perOrder.set(id, perOrder.get(id)! + 1);
    else strays += 1;
  }
  return { histogram: histogramOf(perOrder.values()), strays };
}

export function histogramOf(counts: Iterable<number>): Histogram {
  const histogram: Histogram = {};
  for (const count of counts) histogram[count] = (histogram[count] ?? 0) + 1;
  return histogram;
}

/** Payments, mails and SMS per accepted order, and what is left over. */
export interface Outcome {
  /** Charges (`payment-completed`) per order: 1 for a paid order, 0 or 1 for a cancelled one. */
  payments: Histogram;
  mails: Histogram;
  sms: Histogram;
  /** Payments, mails or SMS for orders nobody placed. */
  strays: number;
  /**
   * Where the accepted orders ended, in order-service's read model: `PAID`, `CANCELLED <reason>`,
   * or `PENDING` / `missing` (not settled).
   */
  states: Record<string, number>;
  /**
   * Orders whose effects do not match where they ended (a few, then how many more): a paid order
   * is charged once, never refunded, mailed once and texted once; a cancelled one has as many
   * refunds as charges (at most one), two mails (placed, cancelled) and an SMS per charge, refund
   * and refusal.
   */
  mismatches: string[];
  pending: Record<string, number>;
  deadLetters: Record<string, number>;
  /**
   * Why entries were dead-lettered, if some were: each distinct reason (UUIDs masked) with the
   * group that gave up and how often, e.g. `3x payment-service-group: failed 5 deliveries: ...`.
   */
  deadLetterReasons: string[];
  /** Orders answered 202 whose order-created is not on order-events: lost by Redis (a failover). */
  lost: number;
}

/** The outcome of the orders in `accepted`, placed for `userIds`, in the `groups` given. */
export async function outcomeOf(
  redis: RedisClient,
  { accepted, userIds }: { accepted: ReadonlySet<string>; userIds: readonly string[] },
  groups: readonly (readonly [string, string])[] = CONSUMER_GROUPS,
): Promise<Outcome> {
  const payments = countBy(accepted, await paidOrderIds(redis));
  const notifications = await sentNotifications(redis, userIds);
  const { states, mismatches } = await sagaOf(redis, accepted, notifications);
  const mails = countBy(
    accepted,
    notifications.filter((n) => n.channel === 'mail').map((n) => n.orderId),
  );
  const sms = countBy(
    accepted,
    notifications.filter((n) => n.channel === 'sms').map((n) => n.orderId),
  );
  const reasons = new Map<string, number>();
  for (const { group, reason } of await deadLetters(redis)) {
    const text = `${group}: ${reason.replace(UUID, '<uuid>')}`;
    reasons.set(text, (reasons.get(text) ?? 0) + 1);
  }
  const written = new Set(
    (await entryFields(redis, OrderEvents.name)).map((fields) => fields.orderId).filter(Boolean),
  );
  return {
    lost: [...accepted].filter((orderId) => !written.has(orderId)).length,
    payments: payments.histogram,
    mails: mails.histogram,
    sms: sms.histogram,
    strays: payments.strays + mails.strays + sms.strays,
    states,
    mismatches,
    pending: await pendingCounts(redis, groups),
    deadLetters: await deadLetterCounts(redis),
    deadLetterReasons: [...reasons].map(([text, n]) => `${n}x ${text}`),
  };
}

/**
 * Whether nothing more will happen in `groups` by itself: nothing pending, and every entry of
 * their streams delivered (the group's `last-delivered-id` at or past the last entry), in two
 * passes in a row that find the same last entry on every stream. One pass is not enough: the
 * streams' consumers write to each other's streams both ways (order-service's read model cancels
 * an order on a payment-failed), and something may have been added to a stream checked before.
 * A system can settle short of its goal: entries dead-lettered, or acked and lost.
 */
export async function quiescent(
  redis: RedisClient,
  groups: readonly (readonly [string, string])[] = CONSUMER_GROUPS,
): Promise<boolean> {
  const first = await settledPass(redis, groups);
  if (first === undefined) return false;
  return (await settledPass(redis, groups)) === first;
}

/** One pass of `quiescent`: the last entries of the streams, or undefined if a group is not settled. */
async function settledPass(
  redis: RedisClient,
  groups: readonly (readonly [string, string])[],
): Promise<string | undefined> {
  const lasts: string[] = [];
  for (const [stream, group] of groups) {
    const [pending] = (await redis.xpending(stream, group).catch(() => [-1])) as [number];
    if (pending !== 0) return undefined;
    const infos = (await redis.xinfo('GROUPS', stream).catch(() => [])) as unknown[][];
    const info = infos.find((fields) => fields[1] === group);
    if (!info) return undefined;
    const lastDelivered = String(info[info.indexOf('last-delivered-id') + 1]);
    const [last] = await redis.xrevrange(stream, '+', '-', 'COUNT', 1);
    if (last && compareIds(last[0], lastDelivered) > 0) return undefined;
    lasts.push(`${stream} ${last?.[0] ?? '-'}`);
  }
  return lasts.join(', ');
}

/** Orders stream entry IDs (`<ms>-<seq>`) as Redis does. */
export function compareIds(a: string, b: string): number {
  const [aMs, aSeq] = a.split('-').map(BigInt) as [bigint, bigint];
  const [bMs, bSeq] = b.split('-').map(BigInt) as [bigint, bigint];
  return aMs !== bMs ? (aMs < bMs ? -1 : 1) : aSeq === bSeq ? 0 : aSeq < bSeq ? -1 : 1;
}

/**
 * Whether the system has caught up with `accepted`: nothing pending in `groups`, and at least one
 * payment (and, with `notified`, two notifications) per order. Duplicates count too: the outcome
 * tells them apart.
 */
export async function caughtUp(
  redis: RedisClient,
  { accepted, userIds }: { accepted: ReadonlySet<string>; userIds: readonly string[] },
  {
    groups = CONSUMER_GROUPS,
    notified = true,
  }: { groups?: readonly (readonly [string, string])[]; notified?: boolean } = {},
): Promise<boolean> {
  const pending = await pendingCounts(redis, groups);
  if (!Object.values(pending).every((count) => count === 0)) return false;
  if ((await redis.xlen(PaymentEvents.name)) < accepted.size) return false;
  if (notified && (await sentCount(redis, userIds)) < 2 * accepted.size) return false;
  // Every order where it ends: paid, or cancelled (a cancelled one has its refund and notices to come).
  if (!notified) return true;
  for (const state of (await orderStates(redis, accepted)).values())
    if (state === 'PENDING' || state === 'missing') return false;
  return true;
}
