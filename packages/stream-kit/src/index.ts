export type { Connection } from './connection.ts';
export { EventValidationError, NonRetryableError } from './errors.ts';
export type { Logger } from './logger.ts';
export { createPublisher } from './publisher.ts';
export type { Publisher, PublisherOptions } from './publisher.ts';
export { defineStream } from './stream.ts';
export type { EventOf, Fields, StreamDefinition } from './stream.ts';
export { defaultConsumerName, subscribe } from './subscriber.ts';
export type { DeliveryContext, Handler, SubscribeOptions, Subscription } from './subscriber.ts';
export {
  OrderCreated,
  OrderEvents,
  PaymentCompleted,
  PaymentEvents,
} from './events.ts';
export type { OrderEvent, PaymentEvent } from './events.ts';
