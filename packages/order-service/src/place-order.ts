import { randomUUID } from 'node:crypto';
import { OrderEvents, type Publisher } from '@msa/stream-kit';

export interface OrderInput {
  userId: string;
  productId: string;
  price: number;
}

export interface PlacedOrder {
  orderId: string;
  /** The `order-events` entry that carries it. */
  entryId: string;
}

/** Accepts an order by publishing `order-created`; payment and notification follow from the event. */
export async function placeOrder(input: OrderInput, deps: { publisher: Publisher }): Promise<PlacedOrder> {
  const orderId = randomUUID();
  const entryId = await deps.publisher.publish(OrderEvents, { type: 'order-created', orderId, ...input });
  return { orderId, entryId };
}
