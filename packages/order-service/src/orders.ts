import {
  byType,
  compareIds,
  handledBefore,
  handledThrough,
  horizonOf,
  NonRetryableError,
  RetryLaterError,
  type DeliveryContext,
  type Handler,
  type MessagingMetrics,
} from '@msa/stream-kit';
import { OrderEvents, PaymentEvents, type OrderEvent, type PaymentEvent } from '@msa/stream-kit/events';
import { defineScript, maxIdAheadMs, slotTag, XADD_CHECKED, xaddArguments } from '@msa/stream-kit/lua';
import type { RedisClient } from '@msa/stream-kit';
import type { Logger } from 'pino';
import { cancellationKey, CANCELLATION_KEY_TTL_MS, type ReadModel } from './read-model.ts';

/*
 * The order read model: a projection of `order-events` and `payment-events` that order-service
 * consumes in its own group, so that orders written by any producer (the tutorial's three-field
 * XADD too) appear. Each order is a hash; each event moves it along the lifecycle in one Lua script
 * that checks the move, bumps the version and appends the step to its history:
 *
 *   PENDING → PAID       (payment-completed)
 *   PENDING → CANCELLED  (payment-failed: reason payment-declined; the payment timeout: reason
 *                         payment-timeout; order-cancelled from another producer: its reason)
 *   CANCELLED → CANCELLED (payment-refunded: a step in the history, the status stays)
 *
 * No other move exists: an event that asks for one (a payment-completed after the timeout
 * cancelled the order, say) is refused, logged and counted, never applied, and its entry is acked
 * (the cancellation makes payment-service refund the charge). An entry handled twice finds its
 * own step in the history and changes nothing.
 */

export type OrderStatus = 'PENDING' | 'PAID' | 'CANCELLED';
export type CancelReason = 'payment-declined' | 'payment-timeout';

/** One step of an order's life, oldest first in `Order.history`. */
export interface OrderStep {
  status: OrderStatus;
  /** The event that made it: an event type, e.g. `payment-completed`. */
  event: string;
  /** That event's entry. */
  entryId: string;
  /** ISO 8601: when it happened, the time of its entry ID (Redis's clock). */
  at: string;
}
/** A step as the order's hash keeps it: `at` is the ms of its entry ID (an ISO time in older steps). */
type StoredStep = Omit<OrderStep, 'at'> & { at: string };

/** An order as `GET /orders/<orderId>` answers it. */
export interface Order {
  orderId: string;
  userId: string;
  productId: string;
  price: number;
  status: OrderStatus;
  /** Only for a cancelled order. */
  reason?: string;
  /** 1 when placed, one more for each step applied. */
  version: number;
  history: OrderStep[];
}

/**
 * The member of an order in its user's index: its entry ID, zero-padded so that members sort as
 * entries do, then its orderId. All scores are 0, so the set sorts by member (lexicographically).
 */
export function indexMember(entryId: string, orderId: string): string {
  const [ms, seq] = entryId.split('-') as [string, string];
  return `${ms.padStart(16, '0')}-${seq.padStart(20, '0')}:${orderId}`;
}
const INDEX_PREFIX_LENGTH = 16 + 1 + 20 + 1;

/*
 * KEYS: the order, its user's index, the payment-due set, order-events, the refused counts, the
 * order's cancellation key (`cancellationKey`).
 * ARGV: what happened (an event type, or `timeout`), its entry ID, how far an ID may run ahead of
 * the clock, then what that needs:
 * - order-created: orderId, userId, productId, price, the index member, the due time (ms);
 * - order-cancelled: its reason;
 * - payment-failed, timeout: the number of the order-cancelled XADD arguments, and those (none in a
 *   replay, which publishes nothing: the stream holds the cancellation already);
 * - payment-refunded: `final` once every order entry before it has been applied, else nothing;
 * - payment-completed: nothing.
 * Answers {outcome, status}: `applied` (status after, and 1 if it published an order-cancelled,
 * else 0), `duplicate` (the entry was applied
 * before, or the order is already where it would go), `refused`, `late` (a payment after the
 * order was due), `unknown` (no such order yet), `early` (a refund before its cancellation),
 * `moot` (a timeout of an order no longer pending).
 *
 * Whatever order the two streams' entries are applied in, the order ends the same, which is what
 * lets a rebuild replay one stream after the other: a payment counts by its entry's time against
 * the due time, not by when order-service got to it; a decline's order-cancelled waits for its
 * payment-failed, which makes the step; a refund waits for its cancellation.
 */
const APPLY = `${XADD_CHECKED}
local order, index, due, orders, refused, cancellation = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local what, entry, max_ahead = ARGV[1], ARGV[2], ARGV[3]
local stored = redis.call('HMGET', order, 'status', 'version', 'history', 'orderId', 'due')
local status, version = stored[1], tonumber(stored[2]) or 0
local steps = stored[3] and cjson.decode(stored[3]) or {}
-- An entry applied before: the same ID on the same stream (two streams may both have an entry
-- 1795706491993-0). Each event type lives on one stream: order-* on order-events.
local function stream_of(event) return event:sub(1, 6) == 'order-' end
for _, step in ipairs(steps) do
  if step.entryId == entry and stream_of(step.event) == stream_of(what) then return {'duplicate', status} end
end
local published = 0
local function step(to, event, entry_id)
  version = version + 1
  -- When it happened: the ms of its entry ID, on Redis's clock (a rebuild writes the same).
  steps[#steps + 1] = {status = to, event = event, entryId = entry_id, at = entry_id:match('^(%d+)')}
  redis.call('HSET', order, 'status', to, 'version', version, 'history', cjson.encode(steps))
  return {'applied', to, published}
end
local function refuse(outcome)
  redis.call('HINCRBY', refused, (status or 'NONE') .. ' ' .. what, 1)
  return {outcome or 'refused', status or 'NONE'}
end
local function cancel(reason, event, event_entry)
  local id = nil
  local n = tonumber(ARGV[4])
  if n > 0 then
    -- Another generation's projection may have published it (while instances switch).
    id = redis.call('GET', cancellation)
    if not id then
      id = xadd_checked(orders, max_ahead, unpack(ARGV, 5, 4 + n))
      published = 1
      redis.call('SET', cancellation, id, 'PX', ${CANCELLATION_KEY_TTL_MS})
    end
  end
  redis.call('HSET', order, 'reason', reason)
  redis.call('ZREM', due, stored[4])
  return step('CANCELLED', event, event_entry or id)
end
-- A payment or decline whose entry came in or after the millisecond the order was due is late: the
-- timeout, which may run in that very millisecond, cancels the order.
local function late() return stored[5] and tonumber(entry:match('^(%d+)')) >= tonumber(stored[5]) end

if what == 'order-created' then
  -- The same order again (a dead letter replayed: a new entry, the same orderId).
  if status then return {'duplicate', status} end
  redis.call('HSET', order, 'orderId', ARGV[4], 'userId', ARGV[5], 'productId', ARGV[6], 'price', ARGV[7], 'due', ARGV[9])
  redis.call('ZADD', index, 0, ARGV[8])
  redis.call('ZADD', due, ARGV[9], ARGV[4])
  return step('PENDING', what, entry)
end
if not status then
  if what == 'timeout' then return {'moot', 'NONE'} end
  return {'unknown', 'NONE'}
end
if what == 'timeout' then
  if status ~= 'PENDING' then
    redis.call('ZREM', due, stored[4])
    return {'moot', status}
  end
  return cancel('payment-timeout', 'order-cancelled')
end
if what == 'payment-completed' then
  if status ~= 'PENDING' then return refuse() end
  if late() then return refuse('late') end
  redis.call('ZREM', due, stored[4])
  return step('PAID', what, entry)
end
if what == 'payment-failed' then
  if status ~= 'PENDING' then return refuse() end
  if late() then return refuse('late') end
  return cancel('payment-declined', what, entry)
end
if what == 'order-cancelled' then
  -- Our own cancellation coming back through the stream (or another's, of a cancelled order).
  if status == 'CANCELLED' then return {'duplicate', status} end
  if status ~= 'PENDING' then return refuse() end
  -- A decline's: its payment-failed makes the step, and is on its way (read apart, as in a rebuild).
  if ARGV[4] == 'payment-declined' then return {'duplicate', status} end
  redis.call('HSET', order, 'reason', ARGV[4])
  redis.call('ZREM', due, stored[4])
  return step('CANCELLED', what, entry)
end
if what == 'payment-refunded' then
  if status == 'PENDING' and ARGV[4] ~= 'final' then return {'early', status} end
  if status ~= 'CANCELLED' then return refuse() end
  return step('CANCELLED', what, entry)
end
return redis.error_reply('ERR unknown step ' .. what)
`;

type Outcome = 'applied' | 'duplicate' | 'refused' | 'late' | 'unknown' | 'early' | 'moot';

/** What one step of APPLY is about. */
interface Step {
  orderId: string;
  userId: string;
  /** An event type, or `timeout`. */
  what: string;
  entryId: string;
}

export interface OrdersDeps {
  /** A connection of order-service's own; the script is defined on it. */
  redis: RedisClient;
  logger: Logger;
  /** `PAYMENT_TIMEOUT_MS`: how long after it was placed an unpaid order is cancelled. */
  paymentTimeoutMs: number;
  /** The generation the steps write and the reads read (`liveReadModel`). */
  model: ReadModel;
  /**
   * Set for a rebuild, which replays the streams: nothing is published (the streams hold every
   * cancellation already), and orders placed before `since` (ms) are left out: once payment-events
   * has been trimmed, the payments of orders older than its oldest entry may be gone, and such an
   * order would look pending, then time out, and its charge be refunded.
   */
  replay?: {
    since: number;
    /**
     * Where each stream ended when the replay began (its last entry ID, by stream name), once
     * known: an entry of payment-events up to its end has had whatever caused it replayed.
     */
    until?: Record<string, string | undefined>;
  };
  /** Counts what the steps do (the live projection's; a rebuild counts nothing). */
  metrics?: OrderCounts;
}

/** What the read model's steps report, for order-service's metrics. */
export interface OrderCounts extends Pick<MessagingMetrics, 'sent'> {
  /** An order moved into `status` (a refund, which leaves it CANCELLED, is not counted). */
  entered(status: OrderStatus): void;
}

/** The read model: the steps that change it, and the reads of `GET /orders`. */
export interface Orders {
  /** The projection's handlers, one per stream, for `subscribe()` in the generation's group. */
  orderEventsHandler: Handler<OrderEvent>;
  paymentEventsHandler: Handler<PaymentEvent>;
  /** Cancels `orderId` with reason `payment-timeout` if it is still pending; answers whether it did. */
  timeOut(orderId: string): Promise<boolean>;
  get(orderId: string): Promise<Order | undefined>;
  /** `userId`'s orders, newest first, `limit` at a time; `cursor` is the last page's `nextCursor`. */
  ofUser(userId: string, limit: number, cursor?: string): Promise<{ orders: Order[]; nextCursor?: string }>;
}

/** The order read model in Redis; see the comment at the top of this file. */
export function redisOrders({ redis, logger, paymentTimeoutMs, model, replay, metrics }: OrdersDeps): Orders {
  const lines = logger.child({}, { redact: [] });
  const apply = defineScript<[Outcome, string, (0 | 1)?]>(redis, 'orderServiceApply', 6, APPLY);
  // The order's keys, its cancellation key and order-events share a slot on a Redis Cluster.
  const tag = slotTag(redis, OrderEvents.name);
  const entryMs = (entryId: string) => Number(entryId.slice(0, entryId.indexOf('-')));

  async function step(
    { orderId, userId, what, entryId }: Step,
    ...more: (string | number | readonly string[])[]
  ): Promise<Outcome> {
    // An array, not a closure over them: tsx names every closure in a const, per event.
    // prettier-ignore
    const args = [
      model.order(orderId), model.ordersOf(userId), model.paymentDue, OrderEvents.name, model.refused,
      cancellationKey(orderId, tag), what, entryId, maxIdAheadMs(OrderEvents), ...more,
    ];
    let [outcome, status, published] = await apply(...args);
    if (outcome === 'unknown' || outcome === 'early') {
      // Each stream is read on its own: a payment may come before its order, a refund before the
      // cancellation that caused it (a backlog read from the start, a slow instance). What caused
      // an entry of payment-events comes before it on the clock, so once the projection of
      // order-events has handled every entry up to this one, it is not coming. The horizon is read
      // before trying once more: an entry applied after the first try, and before the horizon was
      // read, is found by the second. An order-cancelled is itself an entry of order-events: the
      // entries before it must be handled.
      // In a replay, order-events has been replayed up to where it ended when it began, before any
      // entry of payment-events up to where that one ended: for those, nothing more is coming.
      const ours = what.startsWith('order-');
      const end = replay?.until?.[PaymentEvents.name];
      const replayed = !ours && end !== undefined && compareIds(entryId, end) <= 0;
      const horizon = replayed ? undefined : await horizonOf(redis, OrderEvents.name, model.group);
      if (!replayed && !(ours ? handledBefore(horizon, entryId) : handledThrough(horizon, entryId)))
        throw new RetryLaterError(
          outcome === 'early'
            ? `the cancellation of order ${orderId} has not been applied yet`
            : `order ${orderId} is not known yet (its order-created has not been applied)`,
        );
      [outcome, status, published] = await apply(...args, 'final');
      if (outcome === 'unknown') {
        // A rebuild writes nothing outside its keys: an event of an order it left out (older than
        // it keeps), or whose order the streams no longer hold, is left out too. The live
        // projection dead-lettered it already if it was never right.
        if (replay) return outcome;
        throw new NonRetryableError(`no order ${orderId} in order-events before this entry`);
      }
    }
    if (outcome === 'applied' && metrics) {
      if (what !== 'payment-refunded') metrics.entered(status as OrderStatus);
      if (published === 1) metrics.sent(OrderEvents.name, 1);
    }
    const where = { orderId, entryId, event: what, status };
    // Each step is in the order's history (GET /orders/<id>): a line each only at debug, a refusal always.
    if (outcome === 'applied') lines.debug(where, 'order status changed');
    else if (outcome === 'refused') lines.warn(where, 'transition refused: the order cannot move that way');
    else if (outcome === 'late')
      lines.warn(
        where,
        'payment after the order was due: its timeout cancels it (payment-service refunds a charge)',
      );
    return outcome;
  }

  const cancellation = (orderId: string, userId: string, reason: CancelReason) => {
    if (replay) return [0] as const;
    const xadd = xaddArguments(OrderEvents, { type: 'order-cancelled', orderId, userId, reason });
    return [xadd.length, xadd] as const;
  };

  const on = (
    { orderId, userId }: { orderId: string; userId: string },
    what: string,
    { id }: DeliveryContext,
  ): Step => ({
    orderId,
    userId,
    what,
    entryId: id,
  });

  return {
    orderEventsHandler: byType<OrderEvent>({
      'order-created': async (order, context: DeliveryContext) => {
        if (replay && entryMs(context.id) < replay.since) return;
        // prettier-ignore
        await step(on(order, order.type, context),
          order.orderId, order.userId, order.productId, String(order.price),
          indexMember(context.id, order.orderId), entryMs(context.id) + paymentTimeoutMs);
      },
      'order-cancelled': async (event, context) => {
        await step(on(event, event.type, context), event.reason);
      },
    }),

    paymentEventsHandler: byType<PaymentEvent>({
      'payment-completed': async (payment, context) => {
        // The tutorial's payments name no order: nothing to project.
        if (payment.orderId === undefined) return;
        await step(on({ orderId: payment.orderId, userId: payment.userId }, payment.type, context));
      },
      'payment-failed': async (failure, context) => {
        // prettier-ignore
        await step(on(failure, failure.type, context),
          ...cancellation(failure.orderId, failure.userId, 'payment-declined'));
      },
      'payment-refunded': async (refund, context) => {
        await step(on(refund, refund.type, context));
      },
    }),

    async timeOut(orderId) {
      // The streams hold every timeout a replay meets: it publishes none of its own.
      if (replay) throw new Error('a replay of the read model does not time orders out');
      const userId = await redis.hget(model.order(orderId), 'userId');
      if (userId === null) {
        await redis.zrem(model.paymentDue, orderId);
        return false;
      }
      // The step's entry is the order-cancelled it adds: no entry before it can be its own.
      // prettier-ignore
      const outcome = await step({ orderId, userId, what: 'timeout', entryId: `timeout:${orderId}` },
        ...cancellation(orderId, userId, 'payment-timeout'));
      return outcome === 'applied';
    },

    async get(orderId) {
      return toOrder(await redis.hgetall(model.order(orderId)));
    },

    async ofUser(userId, limit, cursor) {
      const after = cursor === undefined ? '+' : `(${Buffer.from(cursor, 'base64url').toString()}`;
      // One more than asked: whether a next page exists.
      const members = await redis.zrange(
        model.ordersOf(userId),
        after,
        '-',
        'BYLEX',
        'REV',
        'LIMIT',
        0,
        limit + 1,
      );
      const page = members.slice(0, limit);
      const orders = await Promise.all(page.map((member) => this.get(member.slice(INDEX_PREFIX_LENGTH))));
      return {
        orders: orders.filter((order): order is Order => order !== undefined),
        ...(members.length > limit ? { nextCursor: Buffer.from(page.at(-1)!).toString('base64url') } : {}),
      };
    },
  };
}

function toOrder(hash: Record<string, string>): Order | undefined {
  if (!hash.status) return undefined;
  return {
    orderId: hash.orderId!,
    userId: hash.userId!,
    productId: hash.productId!,
    price: Number(hash.price),
    status: hash.status as OrderStatus,
    ...(hash.reason ? { reason: hash.reason } : {}),
    version: Number(hash.version),
    // Lua's cjson keeps no key order: the steps are rebuilt in the documented one.
    history: (JSON.parse(hash.history!) as StoredStep[]).map(({ status, event, entryId, at }) => ({
      status,
      event,
      entryId,
      // The ms of its entry ID; steps written before that held an ISO time already.
      at: /^\d+$/.test(at) ? new Date(Number(at)).toISOString() : at,
    })),
  };
}
