import type { ServiceMetrics } from '@msa/stream-kit/service';
import type { RedisClient } from '@msa/stream-kit';
import { Counter } from 'prom-client';
import type { OrderCounts, OrderStatus } from './orders.ts';
import type { ReadModel } from './read-model.ts';

/**
 * The saga's metrics, beside the service's own (`metrics.registry`):
 * - `orders_status_entered_total{status}`: orders this instance's projection moved into PENDING,
 *   PAID or CANCELLED (summed over instances, `rate()` of it is the orders' flow by outcome);
 * - `orders_transitions_refused_total{status,event}`: events refused because the order could not
 *   move that way (a payment after a cancellation, say), read at scrape time from the live
 *   generation's count in Redis, which every instance adds to: the same total from each.
 * Both bounded: three statuses (and NONE), a handful of event types.
 */
export function orderMetrics(
  metrics: ServiceMetrics,
  redis: RedisClient,
  liveModel: () => ReadModel | undefined,
): OrderCounts {
  const entered = new Counter({
    name: 'orders_status_entered_total',
    help: "Orders this instance's projection moved into a status.",
    labelNames: ['status'],
    registers: [metrics.registry],
  });
  // Every status from the start, at 0: a rate() over a series that appears late misses its first count.
  for (const status of ['PENDING', 'PAID', 'CANCELLED'] as const) entered.inc({ status }, 0);
  new Counter({
    name: 'orders_transitions_refused_total',
    help: 'Events refused because the order could not move that way, by its status and the event (all instances).',
    labelNames: ['status', 'event'],
    registers: [metrics.registry],
    async collect() {
      const model = liveModel();
      // Left out while the live generation is not known or Redis does not answer (stream_redis_up tells).
      const counts = model ? await redis.hgetall(model.refused).catch(() => undefined) : undefined;
      this.reset();
      for (const [field, count] of Object.entries(counts ?? {})) {
        const [status, event] = field.split(' ') as [string, string];
        this.inc({ status, event }, Number(count));
      }
    },
  });
  return {
    entered: (status: OrderStatus) => entered.inc({ status }),
    sent: (stream, count) => metrics.sent(stream, count),
  };
}
