import {
  byType,
  NonRetryableError,
  RetryLaterError,
  type DeliveryContext,
  type Handler,
} from '@msa/stream-kit';
import { handledBefore, handledThrough, horizonOf } from './horizon.ts';
import { OrderEvents, type OrderEvent, type PaymentEvent } from '@msa/stream-kit/events';
import { defineScript, maxIdAheadMs, XADD_CHECKED, xaddArguments } from '@msa/stream-kit/lua';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

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
  /** ISO 8601, when order-service applied it. */
  at: string;
}

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

/** The hash of an order. */
export const orderKey = (orderId: string) => `order-service:order:${orderId}`;
/** A user's orders, newest first: a sorted set ordered by member (see `indexMember`). */
export const ordersOfKey = (userId: string) => `order-service:orders-of:${userId}`;
/** Every order still waiting for its payment, scored by when it times out (ms). */
export const PAYMENT_DUE_KEY = 'order-service:payment-due';
/** How many events were refused, per `<status> <event>`: a hash, for people and metrics. */
export const REFUSED_KEY = 'order-service:refused-transitions';

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
 * KEYS: the order, its user's index, PAYMENT_DUE_KEY, order-events, REFUSED_KEY.
 * ARGV: what happened (an event type, or `timeout`), its entry ID, the time (ISO 8601), how far an
 * ID may run ahead of the clock, then what that needs:
 * - order-created: orderId, userId, productId, price, the index member, the due time (ms);
 * - order-cancelled: its reason;
 * - payment-failed, timeout: the number of the order-cancelled XADD arguments, and those;
 * - payment-completed, payment-refunded: nothing.
 * Answers {outcome, status}: `applied` (status after), `duplicate` (the entry was applied
 * before, or the order is already where it would go), `refused`, `unknown` (no such order yet),
 * `moot` (a timeout of an order no longer pending).
 */
const APPLY = `${XADD_CHECKED}
local order, index, due, orders, refused = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local what, entry, at, max_ahead = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local stored = redis.call('HMGET', order, 'status', 'version', 'history', 'orderId')
local status, version = stored[1], tonumber(stored[2]) or 0
local steps = stored[3] and cjson.decode(stored[3]) or {}
-- An entry applied before: the same ID on the same stream (two streams may both have an entry
-- 1795706491993-0). Each event type lives on one stream: order-* on order-events.
local function stream_of(event) return event:sub(1, 6) == 'order-' end
for _, step in ipairs(steps) do
  if step.entryId == entry and stream_of(step.event) == stream_of(what) then return {'duplicate', status} end
end
local function step(to, event, entry_id)
  version = version + 1
  steps[#steps + 1] = {status = to, event = event, entryId = entry_id, at = at}
  redis.call('HSET', order, 'status', to, 'version', version, 'history', cjson.encode(steps))
  return {'applied', to}
end
local function refuse()
  redis.call('HINCRBY', refused, (status or 'NONE') .. ' ' .. what, 1)
  return {'refused', status or 'NONE'}
end
local function cancel(reason, event, event_entry)
  local id = xadd_checked(orders, max_ahead, unpack(ARGV, 6, 5 + tonumber(ARGV[5])))
  redis.call('HSET', order, 'reason', reason, 'cancelEntryId', id)
  redis.call('ZREM', due, stored[4])
  return step('CANCELLED', event, event_entry or id)
end

if what == 'order-created' then
  -- The same order again (a dead letter replayed: a new entry, the same orderId).
  if status then return {'duplicate', status} end
  redis.call('HSET', order, 'orderId', ARGV[5], 'userId', ARGV[6], 'productId', ARGV[7], 'price', ARGV[8])
  redis.call('ZADD', index, 0, ARGV[9])
  redis.call('ZADD', due, ARGV[10], ARGV[5])
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
  redis.call('ZREM', due, stored[4])
  return step('PAID', what, entry)
end
if what == 'payment-failed' then
  if status ~= 'PENDING' then return refuse() end
  return cancel('payment-declined', what, entry)
end
if what == 'order-cancelled' then
  -- Our own cancellation coming back through the stream (or another's, of a cancelled order).
  if status == 'CANCELLED' then return {'duplicate', status} end
  if status ~= 'PENDING' then return refuse() end
  redis.call('HSET', order, 'reason', ARGV[5])
  redis.call('ZREM', due, stored[4])
  return step('CANCELLED', what, entry)
end
if what == 'payment-refunded' then
  if status ~= 'CANCELLED' then return refuse() end
  return step('CANCELLED', what, entry)
end
return redis.error_reply('ERR unknown step ' .. what)
`;

type Outcome = 'applied' | 'duplicate' | 'refused' | 'unknown' | 'moot';

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
  redis: Redis;
  logger: Logger;
  /** `PAYMENT_TIMEOUT_MS`: how long after it was placed an unpaid order is cancelled. */
  paymentTimeoutMs: number;
  /** The consumer group of the projection (`order-service-group`). */
  group: string;
}

/** The read model: the steps that change it, and the reads of `GET /orders`. */
export interface Orders {
  /** The projection's handlers, one per stream, for `subscribe()` in order-service's group. */
  orderEventsHandler: Handler<OrderEvent>;
  paymentEventsHandler: Handler<PaymentEvent>;
  /** Cancels `orderId` with reason `payment-timeout` if it is still pending; answers whether it did. */
  timeOut(orderId: string): Promise<boolean>;
  get(orderId: string): Promise<Order | undefined>;
  /** `userId`'s orders, newest first, `limit` at a time; `cursor` is the last page's `nextCursor`. */
  ofUser(userId: string, limit: number, cursor?: string): Promise<{ orders: Order[]; nextCursor?: string }>;
}

/** The order read model in Redis; see the comment at the top of this file. */
export function redisOrders({ redis, logger, paymentTimeoutMs, group }: OrdersDeps): Orders {
  const lines = logger.child({}, { redact: [] });
  const apply = defineScript<[Outcome, string]>(redis, 'orderServiceApply', 5, APPLY);

  async function step(
    { orderId, userId, what, entryId }: Step,
    ...more: (string | number | readonly string[])[]
  ): Promise<Outcome> {
    // prettier-ignore
    const run = () => apply(
      orderKey(orderId), ordersOfKey(userId), PAYMENT_DUE_KEY, OrderEvents.name, REFUSED_KEY,
      what, entryId, new Date().toISOString(), maxIdAheadMs(OrderEvents), ...more,
    );
    let [outcome, status] = await run();
    if (outcome === 'unknown') {
      // Each stream is read on its own: a payment may come before its order (a backlog read from
      // the start, a slow instance). An order comes before its payment on the clock, so once the
      // projection of order-events has handled every entry up to this one, the order is not coming.
      // The horizon is read before trying once more: an order applied after the first try, and
      // before the horizon was read, is found by the second.
      // An order-cancelled is itself an entry of order-events: the entries before it must be handled.
      const horizon = await horizonOf(redis, OrderEvents.name, group);
      const ours = what.startsWith('order-');
      if (!(ours ? handledBefore(horizon, entryId) : handledThrough(horizon, entryId)))
        throw new RetryLaterError(
          `order ${orderId} is not known yet (its order-created has not been applied)`,
        );
      [outcome, status] = await run();
      if (outcome === 'unknown')
        throw new NonRetryableError(`no order ${orderId} in order-events before this entry`);
    }
    const where = { orderId, entryId, event: what, status };
    // Each step is in the order's history (GET /orders/<id>): a line each only at debug, a refusal always.
    if (outcome === 'applied') lines.debug(where, 'order status changed');
    else if (outcome === 'refused') lines.warn(where, 'transition refused: the order cannot move that way');
    return outcome;
  }

  const cancellation = (orderId: string, userId: string, reason: CancelReason) => {
    const xadd = xaddArguments(OrderEvents, { type: 'order-cancelled', orderId, userId, reason });
    return [xadd.length, xadd] as const;
  };

  const entryMs = (entryId: string) => Number(entryId.slice(0, entryId.indexOf('-')));
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
      const userId = await redis.hget(orderKey(orderId), 'userId');
      if (userId === null) {
        await redis.zrem(PAYMENT_DUE_KEY, orderId);
        return false;
      }
      // The step's entry is the order-cancelled it adds: no entry before it can be its own.
      // prettier-ignore
      const outcome = await step({ orderId, userId, what: 'timeout', entryId: `timeout:${orderId}` },
        ...cancellation(orderId, userId, 'payment-timeout'));
      return outcome === 'applied';
    },

    async get(orderId) {
      return toOrder(await redis.hgetall(orderKey(orderId)));
    },

    async ofUser(userId, limit, cursor) {
      const after = cursor === undefined ? '+' : `(${Buffer.from(cursor, 'base64url').toString()}`;
      // One more than asked: whether a next page exists.
      const members = await redis.zrange(
        ordersOfKey(userId),
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
    history: (JSON.parse(hash.history!) as OrderStep[]).map(({ status, event, entryId, at }) => ({
      status,
      event,
      entryId,
      at,
    })),
  };
}
