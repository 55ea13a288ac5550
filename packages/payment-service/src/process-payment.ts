import { randomUUID } from 'node:crypto';
import {
  byType,
  NonRetryableError,
  type DeliveryContext,
  type EventOf,
  type Handler,
  type MessagingMetrics,
} from '@msa/stream-kit';
import { PaymentEvents, type OrderEvent, type PaymentEvent } from '@msa/stream-kit/events';
import {
  batchCalls,
  defineScript,
  maxIdAheadMs,
  slotTag,
  XADD_CHECKED,
  xaddArguments,
} from '@msa/stream-kit/lua';
import type { RedisClient } from '@msa/stream-kit';
import type { Logger } from 'pino';

/**
 * The payment record of an order: one hash per order, kept for good, whose `state` only moves
 * along these lines, each step in one script with the event it publishes:
 *
 * - none → `charged` (order-created at or below the limit: `payment-completed`) → `refunded`
 *   (order-cancelled: `payment-refunded`);
 * - none → `declined` (order-created above the limit: `payment-failed`);
 * - none → `cancelled` (order-cancelled before its order-created was handled: nothing to pay
 *   back, and the order is never charged).
 *
 * A record written before states existed has only the charge's fields: it reads as `charged`.
 */
export type PaymentState = 'charged' | 'refunded' | 'declined' | 'cancelled';

/** The record's fields, as `HGETALL paymentKey(orderId)` answers them; each state adds its own. */
export interface PaymentRecord {
  state: PaymentState;
  /** The `order-events` entry of the order (`charged`, `declined`). */
  orderEntryId?: string;
  userId?: string;
  /** `charged`, `refunded`. */
  paymentProcessId?: string;
  price?: string;
  /** Its `payment-completed` entry. */
  paymentEntryId?: string;
  /** ISO 8601. */
  paidAt?: string;
  /** `declined`: why, e.g. `limit-exceeded`; `cancelled`: the order's reason. */
  reason?: string;
  /** `declined`: its `payment-failed` entry. */
  failedEntryId?: string;
  declinedAt?: string;
  /** `refunded`, `cancelled`: the `order-cancelled` entry. */
  cancelledEntryId?: string;
  cancelledAt?: string;
  /** `refunded`: its `payment-refunded` entry. */
  refundEntryId?: string;
  refundedAt?: string;
}

/**
 * The record of the payment for `orderId`. `tag`, `slotTag(redis, 'payment-events')`, puts it in
 * payment-events' hash slot on a Redis Cluster, where its script appends the payment's event.
 */
export const paymentKey = (orderId: string, tag = '') => `payment-service:payment:${tag}${orderId}`;

/*
 * The record's state in Lua; `false` for no record. HMGET answers false for a missing field.
 */
const STATE_OF = `
local function state_of(record)
  local fields = redis.call('HMGET', record, 'state', 'paymentProcessId')
  return fields[1] or (fields[2] and 'charged'), fields[2] or ''
end
`;

/*
 * One atomic step per order-created: the record and its event (payment-completed, or
 * payment-failed for an order above the limit), both in payment-events' slot. The order entry is
 * acked after it, by the subscription, once the handler resolves: order-events lives in another
 * slot of a Redis Cluster (atomic within a slot, idempotent across: README, Redis Cluster). A
 * crash before the step leaves the order pending, to be settled on redelivery; a crash between
 * the step and the ack leaves a redelivery that finds the record and only resolves (is acked).
 * An order whose record exists (delivered again, or cancelled before it came) changes nothing:
 * the first step decides.
 *
 * Many orders per call (the handlers started in one tick, see `batchCalls`), each in a `pcall` of
 * its own: an order that fails (its record key holds another type: WRONGTYPE; its XADD is refused:
 * IDAHEAD) answers its own error and is not acked, while the others are settled. Within an order
 * only the HMGET and the XADD can fail, and both come before any write of that order, so a failed
 * order writes nothing. `#!lua` (no flags):
 * while Redis is out of memory it refuses the whole script up front (see CLAIM_RUN in stream-kit's
 * scripts.ts), rather than letting each XADD fail inside its pcall.
 *
 * KEYS: payment-events, then the payment record of each order.
 * ARGV: how far an ID may run ahead of the clock, then the orders as one JSON array, one
 * array of strings per order: `charge` or `decline`, its entry ID, paymentProcessId (charge) or
 * reason (decline), the time (ISO 8601, the same for the call), userId, price, then its XADD
 * arguments. One argument, not
 * twenty per order: ioredis flattens every argument list with Array.prototype.flat, which V8 runs
 * at about 0.2 µs an element (half the process's time went there and into encoding the
 * arguments one by one), while JSON.stringify and Redis's cjson take the same data in bulk.
 * Answers, for each order in turn: {1, state} settled now, {0, state, paymentProcessId} settled
 * before (or cancelled first), or {-1, Redis's error message}.
 */
const SETTLE_MANY = `#!lua
${XADD_CHECKED}
${STATE_OF}
local max_ahead, orders = ARGV[1], cjson.decode(ARGV[2])
-- One function for every order, not a closure per order: pcall(settle, ...) makes no garbage.
local function settle(record, order)
  local state, process = state_of(record)
  if state then return {0, state, process} end
  local id = xadd_checked(KEYS[1], max_ahead, unpack(order, 7))
  if order[1] == 'charge' then
    redis.call('HSET', record, 'state', 'charged', 'paymentProcessId', order[3],
      'orderEntryId', order[2], 'paymentEntryId', id, 'paidAt', order[4],
      'userId', order[5], 'price', order[6])
    return {1, 'charged'}
  end
  redis.call('HSET', record, 'state', 'declined', 'reason', order[3],
    'orderEntryId', order[2], 'failedEntryId', id, 'declinedAt', order[4], 'userId', order[5],
    'price', order[6])
  return {1, 'declined'}
end
local answers = {}
for i = 2, #KEYS do
  local ok, answer = pcall(settle, KEYS[i], orders[i - 1])
  -- Redis 7.0 hands pcall the error's message, later versions the error table.
  answers[#answers + 1] = ok and answer or {-1, type(answer) == 'table' and answer.err or tostring(answer)}
end
return answers
`;

/*
 * One step per order-cancelled, given the state the handler read (and built its refund from): a
 * charged order is refunded (payment-refunded, state refunded); an order with no record yet is
 * marked cancelled, so that its order-created, when it comes, is never charged; any other state
 * (declined, refunded, cancelled) needs nothing. The subscription acks the cancellation after it
 * (see SETTLE_MANY). If the state is no longer the one read (a charge ran in between), it writes
 * nothing and answers {-2, state}: the handler reads again.
 *
 * KEYS: payment-events, the order's payment record.
 * ARGV: how far an ID may run ahead of the clock, the order-cancelled entry ID, the state
 * read (`none` for no record), the time (ISO 8601), the order's reason, the number of the refund's
 * XADD arguments, and those arguments (none unless charged).
 * Answers {1, state before}, or {-2, state now}.
 */
const CANCEL = `#!lua
${XADD_CHECKED}
${STATE_OF}
local max_ahead, entry, read, time = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local state = state_of(KEYS[2]) or 'none'
if state ~= read then return {-2, state} end
if state == 'none' then
  redis.call('HSET', KEYS[2], 'state', 'cancelled', 'cancelledEntryId', entry, 'cancelledAt', time,
    'reason', ARGV[5])
elseif state == 'charged' then
  local id = xadd_checked(KEYS[1], max_ahead, unpack(ARGV, 7, 6 + tonumber(ARGV[6])))
  redis.call('HSET', KEYS[2], 'state', 'refunded', 'refundEntryId', id, 'refundedAt', time,
    'cancelledEntryId', entry)
end
return {1, state}
`;

/** An order for SETTLE_MANY, as one handler queues it. */
interface Settle {
  record: string;
  op: 'charge' | 'decline';
  entryId: string;
  /** paymentProcessId (charge) or reason (decline). */
  detail: string;
  userId: string;
  price: string;
  xadd: string[];
}

type SettleAnswer =
  | [created: 1, state: PaymentState]
  | [created: 0, state: PaymentState, paymentProcessId: string]
  | [failed: -1, message: string];

/**
 * The most orders one SETTLE_MANY call carries. Below the service's CONCURRENCY, so that several
 * calls are in flight: Redis runs one while this process builds the next (one call for all would
 * leave each waiting on the other).
 */
const MAX_ORDERS_PER_CALL = 100;

/** How often a cancellation reads the record again when a charge lands between its read and its step. */
const CANCEL_TRIES = 5;

export interface PaymentDeps {
  /** payment-service's own connection; the scripts are defined on it. */
  redis: RedisClient;
  logger: Logger;
  /** `PAYMENT_LIMIT`: an order whose price is above it is declined (`payment-failed`). */
  limit: number;
  /** Counts the payment events its scripts append (`messaging_client_sent_messages_total`). */
  metrics?: Pick<MessagingMetrics, 'sent'>;
}

/**
 * Settles each order once, however often it is delivered: charges it and announces it on
 * `payment-events` (`payment-completed`), or declines it (`payment-failed`, reason
 * `limit-exceeded`) when its price is above `limit`; refunds a charged order when it is cancelled
 * (`payment-refunded`), and never charges an order cancelled before it was settled. Entries of
 * `order-events` are handled side by side, so a cancellation may come before, during or after its
 * order's charge: the record's state (`PaymentState`), checked and moved in one script with the
 * event, decides. The payment process ID is a UUID, not the tutorial's in-memory counter, so it
 * stays unique across restarts and instances.
 *
 * Resolves once its step is in Redis (the subscription then acks the entry), and throws (the
 * entry stays pending) with the error Redis gave for its order alone. The orders of the handlers
 * started in one tick go out in one SETTLE_MANY call (`batchCalls`). One handler per event type (`byType`): a type added to
 * order-events fails the typecheck here, and one that arrives unhandled is dead-lettered, not acked
 * silently, with nothing written.
 */
export function paymentHandler({ redis, logger, limit, metrics }: PaymentDeps): Handler<OrderEvent> {
  // A line per order, of IDs only: no redaction, whose wildcard paths cost 7 µs a line (a tenth
  // of a payment's CPU time in a profile of the service draining a backlog).
  const lines = logger.child({}, { redact: [] });
  const settleMany = defineScript<SettleAnswer[]>(redis, 'settleMany', null, SETTLE_MANY);
  const cancel = defineScript<[1 | -2, PaymentState | 'none']>(redis, 'cancelPayment', 2, CANCEL);
  // The records live in payment-events' slot on a Redis Cluster: their scripts append its events.
  const tag = slotTag(redis, PaymentEvents.name);
  const settle = batchCalls<Settle, SettleAnswer>(
    async (orders) => {
      const keys = [PaymentEvents.name];
      const packed: string[][] = [];
      // One time for the call: its orders are settled in the same step (and toISOString is slow).
      const at = new Date().toISOString();
      for (const order of orders) {
        keys.push(order.record);
        const fields = [order.op, order.entryId, order.detail, at, order.userId, order.price];
        for (const arg of order.xadd) fields.push(arg);
        packed.push(fields);
      }
      // prettier-ignore
      const answers = await settleMany(
        keys.length, keys, maxIdAheadMs(PaymentEvents), JSON.stringify(packed),
      );
      if (metrics) {
        let appended = 0;
        for (const answer of answers) if (answer[0] === 1) appended += 1;
        metrics.sent(PaymentEvents.name, appended);
      }
      return answers.map((answer) => (answer[0] === -1 ? new Error(answer[1]) : answer));
    },
    { maxBatchSize: MAX_ORDERS_PER_CALL },
  );

  return byType<OrderEvent>({
    'order-created': async (order, context: DeliveryContext) => {
      const declined = order.price > limit;
      const event: PaymentEvent = declined
        ? { type: 'payment-failed', orderId: order.orderId, userId: order.userId, reason: 'limit-exceeded' }
        : {
            type: 'payment-completed',
            orderId: order.orderId,
            userId: order.userId,
            productId: order.productId,
            price: order.price,
            paymentProcessId: randomUUID(),
          };
      const answer = await settle({
        record: paymentKey(order.orderId, tag),
        op: declined ? 'decline' : 'charge',
        entryId: context.id,
        detail: event.type === 'payment-completed' ? event.paymentProcessId : 'limit-exceeded',
        userId: order.userId,
        price: String(order.price),
        xadd: xaddArguments(PaymentEvents, event),
      });
      const { orderId } = order;
      const entryId = context.id;
      // Object literals, not spreads of a shared one: this line is written for every order.
      if (answer[0] === 1) {
        if (event.type === 'payment-completed')
          lines.info({ orderId, entryId, paymentProcessId: event.paymentProcessId }, 'payment completed');
        else
          lines.info(
            { orderId, entryId, reason: 'limit-exceeded', price: order.price, limit },
            'payment declined',
          );
      } else if (answer[1] === 'cancelled') {
        lines.info({ orderId, entryId }, 'order cancelled before its payment; not charged');
      } else {
        lines.info(
          { orderId, entryId, state: answer[1], paymentProcessId: answer[2] || undefined },
          'order already settled; acknowledged again',
        );
      }
    },

    'order-cancelled': async (cancellation, context: DeliveryContext) => {
      const record = paymentKey(cancellation.orderId, tag);
      for (let tries = 0; tries < CANCEL_TRIES; tries += 1) {
        const read = await redis.hgetall(record);
        const state = stateOf(read);
        const refund = state === 'charged' ? await refundOf(redis, cancellation.orderId, read) : undefined;
        const xadd = refund ? xaddArguments(PaymentEvents, refund) : [];
        // prettier-ignore
        const [done, before] = await cancel(
          PaymentEvents.name, record, maxIdAheadMs(PaymentEvents), context.id, state, new Date().toISOString(),
          cancellation.reason, xadd.length, xadd,
        );
        if (done === -2) continue;
        if (before === 'charged') metrics?.sent(PaymentEvents.name, 1);
        const where = { orderId: cancellation.orderId, entryId: context.id, reason: cancellation.reason };
        if (before === 'charged')
          lines.info({ ...where, paymentProcessId: refund!.paymentProcessId }, 'payment refunded');
        else if (before === 'none')
          lines.info(where, 'order cancelled before its payment; it will not be charged');
        else lines.info({ ...where, state: before }, 'order cancelled; nothing to refund');
        return;
      }
      throw new Error(
        `the payment record of order ${cancellation.orderId} kept changing while it was cancelled`,
      );
    },
  });
}

/** The state of a record as HGETALL read it (`{}` for none). */
function stateOf(record: Record<string, string>): PaymentState | 'none' {
  if (record.state) return record.state as PaymentState;
  return record.paymentProcessId ? 'charged' : 'none';
}

/**
 * The refund of a charged order, from its record; a record written before records kept `userId`
 * and `price` takes them from its `payment-completed` entry, while the stream still holds it.
 */
async function refundOf(
  redis: RedisClient,
  orderId: string,
  record: Record<string, string>,
): Promise<EventOf<typeof PaymentEvents> & { type: 'payment-refunded' }> {
  let { userId, price } = record;
  if ((userId === undefined || price === undefined) && record.paymentEntryId) {
    const [entry] = await redis.xrange(PaymentEvents.name, record.paymentEntryId, record.paymentEntryId);
    const fields = Object.fromEntries(chunks(entry?.[1] ?? []));
    ({ userId = userId, price = price } = fields);
  }
  if (userId === undefined || price === undefined || !record.paymentProcessId)
    throw new NonRetryableError(
      `cannot refund order ${orderId}: its payment record lacks the user or the price, and its payment-completed entry is gone`,
    );
  return {
    type: 'payment-refunded',
    orderId,
    userId,
    paymentProcessId: record.paymentProcessId,
    price: Number(price),
  };
}

/** `[k1, v1, k2, v2]` → `[[k1, v1], [k2, v2]]`. */
function chunks(flat: string[]): [string, string][] {
  const pairs: [string, string][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) pairs.push([flat[i]!, flat[i + 1]!]);
  return pairs;
}
