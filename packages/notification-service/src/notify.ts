import type { Handler, OrderEvent, PaymentEvent } from '@msa/stream-kit';
import type { NotificationSender } from './sender.ts';
import type { SentLog } from './sent-log.ts';

export interface NotifyDeps {
  sender: NotificationSender;
  sentLog: SentLog;
}

/** Mails the customer when an order is placed. */
export function orderMailHandler({ sender, sentLog }: NotifyDeps): Handler<OrderEvent> {
  return async (order, { id }) => {
    switch (order.type) {
      case 'order-created':
        await sender.send({
          channel: 'mail',
          userId: order.userId,
          text: `We received your order ${order.orderId} for product ${order.productId} (${order.price}).`,
        });
        await sentLog.record(order.userId, {
          channel: 'mail',
          event: order.type,
          orderId: order.orderId,
          entryId: id,
          time: new Date().toISOString(),
        });
    }
  };
}

/** Texts the customer when a payment completes. */
export function paymentSmsHandler({ sender, sentLog }: NotifyDeps): Handler<PaymentEvent> {
  return async (payment, { id }) => {
    switch (payment.type) {
      case 'payment-completed':
        await sender.send({
          channel: 'sms',
          userId: payment.userId,
          text: `Payment ${payment.paymentProcessId} of ${payment.price}${payment.orderId ? ` for order ${payment.orderId}` : ''} completed.`,
        });
        await sentLog.record(payment.userId, {
          channel: 'sms',
          event: payment.type,
          orderId: payment.orderId,
          entryId: id,
          time: new Date().toISOString(),
        });
    }
  };
}
