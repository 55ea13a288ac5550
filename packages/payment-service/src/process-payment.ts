import { randomUUID } from 'node:crypto';
import { PaymentEvents, type Handler, type OrderEvent, type Publisher } from '@msa/stream-kit';
import type { Logger } from 'pino';

export interface PaymentDeps {
  publisher: Publisher;
  logger: Logger;
}

/**
 * Pays for each order and announces it on `payment-events`. The payment process ID is a UUID, not
 * the tutorial's in-memory counter, so it stays unique across restarts and across instances.
 */
export function paymentHandler({ publisher, logger }: PaymentDeps): Handler<OrderEvent> {
  return async (order, { id }) => {
    switch (order.type) {
      case 'order-created': {
        const paymentProcessId = randomUUID();
        const entryId = await publisher.publish(PaymentEvents, {
          type: 'payment-completed',
          orderId: order.orderId,
          userId: order.userId,
          productId: order.productId,
          price: order.price,
          paymentProcessId,
        });
        logger.info(
          { orderId: order.orderId, orderEntryId: id, paymentProcessId, entryId },
          'payment completed',
        );
      }
    }
  };
}
