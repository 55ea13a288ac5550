/*
 * The messaging API: publish, subscribe, stream definitions, the errors a caller reacts to, and
 * dead letters. The event catalogue is `@msa/stream-kit/events`; scripting helpers for handlers
 * that ack in their own Lua script are `@msa/stream-kit/lua`; the service chassis (env, HTTP,
 * shutdown) is `@msa/stream-kit/service`.
 */
export type { Connection, RedisClient } from './connection.ts';
export { EventValidationError, NonRetryableError, PublisherClosedError, RetryLaterError } from './errors.ts';
export { NotReplicatedError } from './durability.ts';
export type { Durability } from './durability.ts';
export { compareIds } from './consumer/group.ts';
export { byType } from './handlers.ts';
export type { Logger } from './logger.ts';
export type { ConsumeOutcome, ConsumerIdentity, ConsumerMeter, MessagingMetrics } from './metrics.ts';
export { createPublisher } from './publisher.ts';
export type { Publisher, PublisherOptions } from './publisher.ts';
export { dropDeadLetters, listDeadLetters, replayDeadLetters } from './dead-letters.ts';
export type { DeadLetter, DeadLetterOptions, Dropped, ListOptions, Replayed } from './dead-letters.ts';
export { handledBefore, handledThrough, handledUntilMs, horizonOf } from './horizon.ts';
export type { Horizon } from './horizon.ts';
export { replay } from './replay.ts';
export type { ReplayOptions, ReplayReport, ReplayRoute } from './replay.ts';
export { defineStream } from './stream.ts';
export type { EventOf, Fields, Retention, StreamDefinition } from './stream.ts';
export { DEFAULT_RETRY_POLICY, subscribe } from './subscriber.ts';
export type { DeliveryContext, Handler, SubscribeOptions, Subscription } from './subscriber.ts';
