import { randomUUID } from 'node:crypto';
import { byType, type DeliveryContext, type Handler } from '@msa/stream-kit';
import { OrderEvents, PaymentEvents, type OrderEvent } from '@msa/stream-kit/events';
import { defineScript, maxIdAheadMs, XADD_CHECKED, xaddArguments } from '@msa/stream-kit/lua';
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
 * One atomic step: the payment record, its payment-events entry and the XACK of the order entry.
 * A crash before it leaves the order pending, to be paid on redelivery; a crash after it leaves
 * nothing to do. A redelivered order (reclaim, restart, a lost ack) finds the record and is only
 * acked. Both paths that return ack the entry: the handler is subscribed with `handlerAcks`, so
 * this XACK is the only one. Only the XADD can fail (out of memory; `payment-events` IDs run
 * ahead of the clock), and it comes before the other writes, so a failure writes nothing.
 *
 * KEYS: payment record, payment-events, order-events.
 * ARGV: group, order entry ID, paymentProcessId, paidAt, how far an ID may run ahead of the
 * clock, then the XADD arguments.
 */
const PAY_ONCE = `${XADD_CHECKED}
local existing = redis.call('HGET', KEYS[1], 'paymentProcessId')
if existing then
  redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
  return {0, existing}
end
local entryId = xadd_checked(KEYS[2], ARGV[5], unpack(ARGV, 6))
redis.call('HSET', KEYS[1], 'paymentProcessId', ARGV[3], 'orderEntryId', ARGV[2],
  'paymentEntryId', entryId, 'paidAt', ARGV[4])
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
return {1, ARGV[3]}
`;

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
 * Acks its own entry (subscribe it with `handlerAcks: true`): it resolves only after PAY_ONCE,
 * which acks the order entry with the payment, or finds the order paid and acks it. One handler per
 * event type (`byType`): a type added to order-events fails the typecheck here, and one that
 * arrives unhandled is dead-lettered, not acked silently, with nothing written.
 */
export function paymentHandler({ redis, logger }: PaymentDeps): Handler<OrderEvent> {
  const payOnce = defineScript<[created: 0 | 1, paymentProcessId: string]>(redis, 'payOnce', 3, PAY_ONCE);

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
      // prettier-ignore
      const [created, paymentProcessId] = await payOnce(
        paymentKey(order.orderId), PaymentEvents.name, OrderEvents.name,
        context.group, context.id, event.paymentProcessId, new Date().toISOString(),
        maxIdAheadMs(PaymentEvents), ...xaddArguments(PaymentEvents, event),
      );
      const where = { orderId: order.orderId, entryId: context.id, paymentProcessId };
      if (created === 1) logger.info(where, 'payment completed');
      else logger.info(where, 'order already paid; acknowledged again');
    },
  });
}
