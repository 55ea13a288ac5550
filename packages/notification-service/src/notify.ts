import type { Handler, OrderEvent, PaymentEvent } from '@msa/stream-kit';
import type { NotificationSender } from './sender.ts';
import type { SentLog } from './sent-log.ts';

export interface NotifyDeps {
  sender: NotificationSender;
  sentLog: SentLog;
}

/** Mails the customer once per order, however often the order event is delivered. */
export function orderMailHandler({ sender, sentLog }: NotifyDeps): Handler<OrderEvent> {
  return async (order, context) => {
    switch (order.type) {
      case 'order-created': {
        const key = `mail:${order.orderId}`;
        const text = `We received your order ${order.orderId} for product ${order.productId} (${order.price}).`;
        await sentLog.sendOnce(
          {
            key,
            userId: order.userId,
            context,
            notification: {
              channel: 'mail',
              event: order.type,
              orderId: order.orderId,
              entryId: context.id,
              time: new Date().toISOString(),
            },
          },
          () => sender.send({ channel: 'mail', userId: order.userId, text, idempotencyKey: key }),
        );
      }
    }
  };
}

/**
 * Texts the customer once per payment: per order, or, for the tutorial's payments that name no
 * order, per entry.
 */
export function paymentSmsHandler({ sender, sentLog }: NotifyDeps): Handler<PaymentEvent> {
  return async (payment, context) => {
    switch (payment.type) {
      case 'payment-completed': {
        const key = `sms:${payment.orderId ?? `${context.stream}/${context.id}`}`;
        const text = `Payment ${payment.paymentProcessId} of ${payment.price}${payment.orderId ? ` for order ${payment.orderId}` : ''} completed.`;
        await sentLog.sendOnce(
          {
            key,
            userId: payment.userId,
            context,
            notification: {
              channel: 'sms',
              event: payment.type,
              orderId: payment.orderId,
              entryId: context.id,
              time: new Date().toISOString(),
            },
          },
          () => sender.send({ channel: 'sms', userId: payment.userId, text, idempotencyKey: key }),
        );
      }
    }
  };
}
