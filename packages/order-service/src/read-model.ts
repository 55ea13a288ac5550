import type { RedisClient } from '@msa/stream-kit';
import { OrderEvents } from '@msa/stream-kit/events';
import { slotTag } from '@msa/stream-kit/lua';

/*
 * Where the order read model lives. It comes in generations: each has keys of its own (generation 1
 * `order-service:order:<orderId>`..., generation N `order-service:read-model:<N>:order:<orderId>`...) and a
 * consumer group of its own, so a rebuild (`pnpm orders:rebuild`) can replay the streams into a
 * fresh generation while the live one keeps serving, then make it the live one. order-service
 * reads which generation is live when it starts.
 */

/** The number of the live generation; absent until the first rebuild: generation 1. */
export const LIVE_GENERATION_KEY = 'order-service:read-model';
/** The last generation number handed out: a rebuild that fails leaves its number used. */
export const LAST_GENERATION_KEY = 'order-service:read-model:last';

/** One generation's keys and consumer group. */
export interface ReadModel {
  generation: number;
  /** The group its projection consumes both streams in: `order-service-group` for generation 1. */
  group: string;
  /** The hash of an order. */
  order(orderId: string): string;
  /** A user's orders, newest first: a sorted set ordered by member (see `indexMember` in orders.ts). */
  ordersOf(userId: string): string;
  /** Every order still waiting for its payment, scored by when it times out (ms). */
  paymentDue: string;
  /** How many events were refused, per `<status> <event>`: a hash, for people and metrics. */
  refused: string;
}

/**
 * Generation `generation`'s keys. `tag` (`slotTag(redis, 'order-events')`) puts them in
 * order-events' hash slot on a Redis Cluster: the script that moves an order may append its
 * order-cancelled there.
 */
export function readModel(generation: number, tag = ''): ReadModel {
  // Generation 1 keeps the names the read model had before it had generations, so an upgrade
  // finds it where its group left it.
  const base = generation === 1 ? 'order-service' : `order-service:read-model:${generation}`;
  return {
    generation,
    group: generation === 1 ? 'order-service-group' : `order-service-group-${generation}`,
    order: (orderId) => `${base}:order:${tag}${orderId}`,
    ordersOf: (userId) => `${base}:orders-of:${tag}${userId}`,
    paymentDue: `${base}:${tag}payment-due`,
    refused: `${base}:${tag}refused-transitions`,
  };
}

/** The live generation, as `LIVE_GENERATION_KEY` names it, with its keys as `redis` keeps them. */
export async function liveReadModel(redis: RedisClient): Promise<ReadModel> {
  const live = await redis.get(LIVE_GENERATION_KEY);
  return readModel(live === null ? 1 : Number(live), slotTag(redis, OrderEvents.name));
}

/**
 * The key that makes an order's cancellation published once, whichever generation's projection
 * cancels it (two are live while instances switch after a rebuild): it holds the entry ID of the
 * order-cancelled published, for as long as a switch may take.
 */
export const cancellationKey = (orderId: string, tag = '') => `order-service:cancellation:${tag}${orderId}`;
export const CANCELLATION_KEY_TTL_MS = 7 * 24 * 60 * 60 * 1000;
