import { ConsumerLoop } from './consumer/loop.ts';
import { PartitionedSubscription } from './consumer/partitions.ts';
import { withDefaults } from './consumer/options.ts';
import type { Handler } from './consumer/delivery.ts';
import type { SubscribeOptions } from './consumer/options.ts';
import type { EventOf, StreamDefinition } from './stream.ts';

/*
 * `subscribe()`, the way in. The loop and its parts live in consumer/: options.ts (options and
 * their defaults), loop.ts (start, read, the worker pool, close), schedule.ts (what runs next),
 * delivery.ts (decode, handler, outcome), retry-policy.ts, leases.ts, acks.ts, runs.ts (run
 * counts), reclaim.ts (pending entries, takeover, idle consumers) and group.ts.
 */

export type { DeliveryContext, Handler } from './consumer/delivery.ts';
export { DEFAULT_RETRY_POLICY, defaultConsumerName } from './consumer/options.ts';
export type { SubscribeOptions } from './consumer/options.ts';

/** A running subscription, as `subscribe()` returns it. */
export interface Subscription {
  /**
   * Stops reading, waits for the running handlers (up to `closeTimeoutMs`) and their acks, then
   * closes the connection. Entries read but not yet handled stay pending, handed back as long idle:
   * any other consumer takes them over at its next reclaim pass, and a consumer of the same name
   * handles them when it starts. Safe to call twice.
   */
  close(): Promise<void>;
}

/**
 * Consumes `stream` as `consumer` of `group` on a connection of its own: creates the group if
 * missing, first handles the entries this consumer left pending, then new ones, calling
 * `handler` for one entry at a time (entries keep their order within a consumer) unless
 * `concurrency` says more. Entries other
 * consumers have left pending longer than `claimIdleMs` are taken over. Entries that fail the
 * stream's schema go to the dead-letter stream at once. The loop rides out Redis restarts and
 * recreates a lost group.
 *
 * A partitioned stream (`partitions` > 1) is shared out among the group's consumers a partition at
 * a time, each partition read by one consumer, in order: a failed entry holds back the entries
 * after it in its partition until it is handled or dead-lettered (`concurrency` must be 1). See
 * README, Partitions.
 */
export function subscribe<D extends StreamDefinition>(
  group: string,
  consumer: string,
  stream: D,
  handler: Handler<EventOf<D>>,
  options: SubscribeOptions,
): Subscription {
  const settings = withDefaults(stream, options);
  const subscription =
    (stream.partitions ?? 1) > 1
      ? new PartitionedSubscription(group, consumer, stream, handler as Handler<unknown>, settings)
      : new ConsumerLoop(group, consumer, stream, handler as Handler<unknown>, settings);
  return { close: () => subscription.close() };
}
