import { randomUUID } from 'node:crypto';
import { byType, type DeliveryContext, type Handler } from '@msa/stream-kit';
import { OrderEvents, PaymentEvents, type OrderEvent } from '@msa/stream-kit/events';
import { batchCalls, defineScript, maxIdAheadMs, XADD_CHECKED, xaddArguments } from '@msa/stream-kit/lua';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

/** The payment record of an order: written once, with its `payment-events` entry. */
export interface Payment {
  paymentProcessId: string;
  /** The `order-events` entry it pays for. */
  orderEntryId: string;
  /** Its `payment-events` entry. */
  paymentEntryId: string;
  /** ISO 8601. */
  paidAt: string;
}

/** The record of the payment for `orderId`: one hash per order, kept for good. */
export const paymentKey = (orderId: string) => `payment-service:payment:${orderId}`;

/*
 * One atomic step per order: the payment record, its payment-events entry and the XACK of the
 * order entry. A crash before it leaves the order pending, to be paid on redelivery; a crash after
 * it leaves nothing to do. A redelivered order (reclaim, restart, a lost ack) finds the record and
 * is only acked. Both paths that answer ack the entry: the handler is subscribed with
 * `handlerAcks`, so this XACK is the only one.
 *
 * Many orders per call (the handlers started in one tick, see `batchCalls`), each in a `pcall` of
 * its own: an order that fails (its record key holds another type: WRONGTYPE; its XADD is refused:
 * IDAHEAD) answers its own error and is not acked, while the others are paid. Within an order only
 * the HGET and the XADD can fail, and both come before any write of that order, so a failed order
 * writes nothing. One XACK at the end, of every order that answered. `#!lua` (no flags): while
 * Redis is out of memory it refuses the whole script up front (see CLAIM_RUN in stream-kit's
 * scripts.ts), rather than letting each XADD fail inside its pcall.
 *
 * KEYS: payment-events, order-events, then the payment record of each order.
 * ARGV: group, how far an ID may run ahead of the clock, then for each order: its entry ID,
 * paymentProcessId, paidAt, the number of its XADD arguments, and those arguments.
 * Answers, for each order in turn: {1, paymentProcessId} paid now, {0, paymentProcessId} paid
 * before, or {-1, Redis's error message}.
 */
const PAY_MANY = `#!lua
${XADD_CHECKED}
local group, max_ahead = ARGV[1], ARGV[2]
-- One function for every order, not a closure per order: pcall(pay, ...) makes no garbage.
local function pay(record, entry, process, paid_at, first, last)
  local existing = redis.call('HGET', record, 'paymentProcessId')
  if existing then return {0, existing} end
  local id = xadd_checked(KEYS[1], max_ahead, unpack(ARGV, first, last))
  redis.call('HSET', record, 'paymentProcessId', process, 'orderEntryId', entry,
    'paymentEntryId', id, 'paidAt', paid_at)
  return {1, process}
end
local answers, acked = {}, {}
local at = 3
for i = 3, #KEYS do
  local entry = ARGV[at]
  local first, last = at + 4, at + 3 + tonumber(ARGV[at + 3])
  local ok, answer = pcall(pay, KEYS[i], entry, ARGV[at + 1], ARGV[at + 2], first, last)
  if ok then
    acked[#acked + 1] = entry
    answers[#answers + 1] = answer
  else
    -- Redis 7.0 hands pcall the error's message, later versions the error table.
    answers[#answers + 1] = {-1, type(answer) == 'table' and answer.err or tostring(answer)}
  end
  at = last + 1
end
if #acked > 0 then redis.call('XACK', KEYS[2], group, unpack(acked)) end
return answers
`;

/** An order for PAY_MANY, as one handler queues it. */
interface Pay {
  record: string;
  group: string;
  entryId: string;
  paymentProcessId: string;
  paidAt: string;
  xadd: string[];
}

type PayAnswer = [created: 0 | 1, paymentProcessId: string] | [failed: -1, message: string];

/**
 * The most orders one PAY_MANY call carries. Below the service's CONCURRENCY, so that several calls
 * are in flight: Redis runs one while this process builds the next (one call for all would leave
 * each waiting on the other). Also keeps Lua's `unpack` of the XACK IDs far from its limit.
 */
const MAX_ORDERS_PER_CALL = 100;

export interface PaymentDeps {
  /** payment-service's own connection; the script is defined on it. */
  redis: Redis;
  logger: Logger;
}

/**
 * Pays for each order once and announces it on `payment-events`, however often the order is
 * delivered. The payment process ID is a UUID, not the tutorial's in-memory counter, so it stays
 * unique across restarts and instances.
 *
 * Acks its own entry (subscribe it with `handlerAcks: true`): it resolves only after PAY_MANY,
 * which acks the order entry with the payment, or finds the order paid and acks it; it throws (the
 * entry stays pending) with the error Redis gave for its order alone. The orders of the handlers
 * started in one tick go out in one PAY_MANY call (`batchCalls`), one per consumer group. One handler per
 * event type (`byType`): a type added to order-events fails the typecheck here, and one that
 * arrives unhandled is dead-lettered, not acked silently, with nothing written.
 */
export function paymentHandler({ redis, logger }: PaymentDeps): Handler<OrderEvent> {
  // A line per payment, of IDs only: no redaction, whose wildcard paths cost 7 µs a line (a tenth
  // of a payment's CPU time in a profile of the service draining a backlog).
  const lines = logger.child({}, { redact: [] });
  const payMany = defineScript<PayAnswer[]>(redis, 'payMany', null, PAY_MANY);
  const pay = batchCalls<Pay, [created: 0 | 1, paymentProcessId: string]>(
    async (orders) => {
      const args: (string | number)[] = [orders[0]!.group, maxIdAheadMs(PaymentEvents)];
      for (const order of orders)
        args.push(order.entryId, order.paymentProcessId, order.paidAt, order.xadd.length, ...order.xadd);
      // prettier-ignore
      const answers = await payMany(
        2 + orders.length, PaymentEvents.name, OrderEvents.name, orders.map((order) => order.record), args,
      );
      return answers.map(([code, text]) => (code === -1 ? new Error(text) : [code, text]));
    },
    { maxBatchSize: MAX_ORDERS_PER_CALL, keyOf: (order) => order.group },
  );

  return byType<OrderEvent>({
    'order-created': async (order, context: DeliveryContext) => {
      const event = {
        type: 'payment-completed' as const,
        orderId: order.orderId,
        userId: order.userId,
        productId: order.productId,
        price: order.price,
        paymentProcessId: randomUUID(),
      };
      const [created, paymentProcessId] = await pay({
        record: paymentKey(order.orderId),
        group: context.group,
        entryId: context.id,
        paymentProcessId: event.paymentProcessId,
        paidAt: new Date().toISOString(),
        xadd: xaddArguments(PaymentEvents, event),
      });
      const where = { orderId: order.orderId, entryId: context.id, paymentProcessId };
      if (created === 1) lines.info(where, 'payment completed');
      else lines.info(where, 'order already paid; acknowledged again');
    },
  });
}
