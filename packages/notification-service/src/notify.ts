import { byType, type DeliveryContext, type Handler } from '@msa/stream-kit';
import type { OrderEvent, PaymentEvent } from '@msa/stream-kit/events';
import type { Channel, NotificationSender } from './sender.ts';
import type { SentLog } from './sent-log.ts';

export interface NotifyDeps {
  sender: NotificationSender;
  sentLog: SentLog;
}

/*
 * Both handlers ack their own entry (subscribe them with `handlerAcks: true`): they resolve only
 * after `SentLog.sendOnce` resolved, and it resolves only after a script that acked the entry (the
 * claim that finds the notification sent, or the record after the send). One handler per event type
 * (`byType`): a type added to a stream fails the typecheck here, and one that arrives unhandled is
 * dead-lettered, with nothing sent, written or acked.
 */

/*
 * Keys: `<channel>:<orderId>` for the order and its payment (as before the saga), and
 * `<channel>-<what>:<orderId>` for the saga's later steps, so that no order ID can make one key
 * collide with another's.
 */

const CANCELLATION_REASONS = {
  'payment-declined': 'the payment was declined',
  'payment-timeout': 'the payment did not go through in time',
} as const;

/**
 * Mails the customer once per order placed and once per order cancelled, however often the order
 * event is delivered.
 */
export function orderMailHandler(deps: NotifyDeps): Handler<OrderEvent> {
  return byType<OrderEvent>({
    'order-cancelled': (cancellation, context) =>
      notifyOnce(deps, context, {
        channel: 'mail',
        key: `mail-cancelled:${cancellation.orderId}`,
        userId: cancellation.userId,
        event: cancellation.type,
        orderId: cancellation.orderId,
        text: `Your order ${cancellation.orderId} was cancelled: ${CANCELLATION_REASONS[cancellation.reason]}.`,
      }),
    'order-created': (order, context) =>
      notifyOnce(deps, context, {
        channel: 'mail',
        key: `mail:${order.orderId}`,
        userId: order.userId,
        event: order.type,
        orderId: order.orderId,
        text: `We received your order ${order.orderId} for product ${order.productId} (${order.price}).`,
      }),
  });
}

/**
 * Texts the customer once per payment (per order, or, for the tutorial's payments that name no
 * order, per entry), once per declined payment and once per refund.
 */
export function paymentSmsHandler(deps: NotifyDeps): Handler<PaymentEvent> {
  return byType<PaymentEvent>({
    'payment-failed': (failure, context) =>
      notifyOnce(deps, context, {
        channel: 'sms',
        key: `sms-declined:${failure.orderId}`,
        userId: failure.userId,
        event: failure.type,
        orderId: failure.orderId,
        text: `Payment for order ${failure.orderId} was declined (${failure.reason}).`,
      }),
    'payment-refunded': (refund, context) =>
      notifyOnce(deps, context, {
        channel: 'sms',
        key: `sms-refunded:${refund.orderId}`,
        userId: refund.userId,
        event: refund.type,
        orderId: refund.orderId,
        text: `Payment ${refund.paymentProcessId} of ${refund.price} for order ${refund.orderId} was refunded.`,
      }),
    'payment-completed': (payment, context) =>
      notifyOnce(deps, context, {
        channel: 'sms',
        key: `sms:${payment.orderId ?? `${context.stream}/${context.id}`}`,
        userId: payment.userId,
        event: payment.type,
        orderId: payment.orderId,
        text: `Payment ${payment.paymentProcessId} of ${payment.price}${payment.orderId ? ` for order ${payment.orderId}` : ''} completed.`,
      }),
  });
}

interface Notification {
  channel: Channel;
  /** What makes it one: also the provider's idempotency key. */
  key: string;
  userId: string;
  /** The event type that caused it. */
  event: string;
  orderId: string | undefined;
  text: string;
}

/** Sends `notification` through the sender unless it was sent already, and records it. */
async function notifyOnce(
  { sender, sentLog }: NotifyDeps,
  context: DeliveryContext,
  { channel, key, userId, event, orderId, text }: Notification,
) {
  await sentLog.sendOnce(
    {
      key,
      userId,
      context,
      notification: { channel, event, orderId, entryId: context.id, time: new Date().toISOString() },
    },
    () => sender.send({ channel, userId, text, idempotencyKey: key }),
  );
}
