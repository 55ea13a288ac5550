import { createHash, randomUUID } from 'node:crypto';
import { EventValidationError, type MessagingMetrics, type Publisher } from '@msa/stream-kit';
import { OrderEvents, type OrderCreated } from '@msa/stream-kit/events';
import {
  defineScript,
  maxIdAheadMs,
  slotTag,
  XADD_CHECKED,
  xaddArguments,
  type ReplicatedWrite,
} from '@msa/stream-kit/lua';
import { ConflictError, UnavailableError, ValidationError } from '@msa/stream-kit/service';
import type { RedisClient } from '@msa/stream-kit';

export interface OrderInput {
  userId: string;
  productId: string;
  price: number;
}

export interface PlacedOrder {
  orderId: string;
  /** The `order-events` entry that carries it. */
  entryId: string;
  /** True when an earlier request with the same idempotency key placed it; nothing was published now. */
  replayed: boolean;
}

export interface PlaceOrderDeps {
  /** Publishes orders placed without an idempotency key. */
  publisher: Publisher;
  /** Runs the idempotent placement script; a request connection, so a command fails fast. */
  redis: RedisClient;
  /** Counts the orders the script publishes (the publisher counts its own). */
  metrics?: Pick<MessagingMetrics, 'sent'> | undefined;
  /**
   * With `DURABLE_REPLICAS`: runs the placement script on `redis`, then waits for the replicas to
   * hold it (`waitForReplicas`); the publisher waits for its own.
   */
  replicated?: ReplicatedWrite | undefined;
}

/** The request header that carries a client's idempotency key. */
export const IDEMPOTENCY_HEADER = 'Idempotency-Key';

/** How long an idempotency key is remembered after the order it placed: 24 hours. */
export const IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60;

/**
 * Where the outcome of an idempotency key is kept: a hash of `bodyHash`, `orderId`, `entryId`, in
 * order-events' slot on a Redis Cluster (`tag`), as the script that writes it appends the order.
 */
const redisKey = (idempotencyKey: string, tag: string) => `order-service:idempotency:${tag}${idempotencyKey}`;

/** The idempotency key was used before for an order with another body; nothing was published. */
export class IdempotencyConflictError extends ConflictError {
  constructor(readonly key: string) {
    super(`${IDEMPOTENCY_HEADER} already used for an order with another body`, {
      field: IDEMPOTENCY_HEADER,
    });
  }
}

/** What the client is told when Redis did not take an order. */
const ORDERS_UNAVAILABLE = 'orders cannot be accepted right now, try again later';

/**
 * Accepts an order by publishing `order-created`; payment and notification follow from the event.
 *
 * With `idempotencyKey`, the order is placed at most once per key: the first call publishes it and
 * remembers the key for {@link IDEMPOTENCY_TTL_SECONDS} (24 h); a later call with the same key and
 * the same order resolves to the same `orderId` (with `replayed: true`) and publishes nothing.
 * The check and the publish run in one Lua script, so concurrent calls with one key publish once.
 * After the TTL the key is forgotten and places a new order.
 *
 * Throws `IdempotencyConflictError` (a `ConflictError`; nothing published) if the key was used
 * for another order, `ValidationError` if the order does not fit the event catalogue (nothing
 * published), or `UnavailableError` with the Redis error as its cause if Redis cannot be reached,
 * does not answer in time or refuses the write (out of memory; `order-events` takes no new IDs):
 * the order may or may not be placed, so retry with the same key to find out.
 */
export async function placeOrder(
  input: OrderInput,
  deps: PlaceOrderDeps,
  idempotencyKey?: string,
): Promise<PlacedOrder> {
  const event = { type: 'order-created' as const, orderId: randomUUID(), ...input };
  try {
    if (idempotencyKey === undefined) {
      const entryId = await deps.publisher.publish(OrderEvents, event);
      return { orderId: event.orderId, entryId, replayed: false };
    }
    const place = () => placeOnce(event, input, idempotencyKey, deps.redis, deps.replicated !== undefined);
    // A replayed key too: the first call may have answered 503 for want of replicas.
    const placed = await (deps.replicated ? deps.replicated(OrderEvents.name, place) : place());
    if (!placed.replayed) deps.metrics?.sent(OrderEvents.name, 1);
    return placed;
  } catch (err) {
    if (err instanceof IdempotencyConflictError) throw err;
    // The catalogue may be stricter than the route's schema in some corner: still bad input.
    if (err instanceof EventValidationError) throw new ValidationError(err.message, { cause: err });
    throw new UnavailableError(ORDERS_UNAVAILABLE, { cause: err, stream: OrderEvents.name });
  }
}

/** `event` published once per idempotency key, in one script with the key's check and record. */
async function placeOnce(
  event: OrderCreated,
  input: OrderInput,
  idempotencyKey: string,
  redis: RedisClient,
  durable: boolean,
): Promise<PlacedOrder> {
  const placeOrderOnce = defineScript<['replayed' | 'created', string, string] | ['conflict']>(
    redis,
    'orderServicePlaceOrderOnce',
    2,
    PLACE_ORDER_ONCE,
  );
  const reply = await placeOrderOnce(
    redisKey(idempotencyKey, slotTag(redis, OrderEvents.name)),
    OrderEvents.name,
    bodyHash(input),
    event.orderId,
    IDEMPOTENCY_TTL_SECONDS,
    maxIdAheadMs(OrderEvents),
    durable ? 1 : 0,
    ...xaddArguments(OrderEvents, event),
  );
  const [outcome, orderId, entryId] = reply;
  if (outcome === 'conflict') throw new IdempotencyConflictError(idempotencyKey);
  return { orderId: orderId!, entryId: entryId!, replayed: outcome === 'replayed' };
}

/** SHA-256 of the validated order, its fields in a fixed order: equal orders hash equal. */
function bodyHash({ userId, productId, price }: OrderInput): string {
  return createHash('sha256')
    .update(JSON.stringify([userId, productId, price]))
    .digest('hex');
}

/*
 * KEYS[1] the idempotency key, KEYS[2] the stream; ARGV[1] body hash, ARGV[2] the new order's ID,
 * ARGV[3] TTL in seconds, ARGV[4] how far an entry ID may run ahead of the clock, ARGV[5] 1 to
 * write on a replay too (`DURABLE_REPLICAS`: the `WAIT` after it covers only this connection's
 * writes, and the first placement may have come through another), ARGV[6..] the XADD arguments
 * after the key. The XADD comes before the key is stored: if it fails (out of memory, IDs ahead
 * of the clock), nothing is.
 * Returns {'replayed', orderId, entryId}, {'conflict'} or {'created', orderId, entryId}.
 */
const PLACE_ORDER_ONCE = `${XADD_CHECKED}
local stored = redis.call('HMGET', KEYS[1], 'bodyHash', 'orderId', 'entryId')
if stored[1] then
  if stored[1] == ARGV[1] then
    -- The same value again: a write that changes nothing, which the WAIT after it covers.
    if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'bodyHash', stored[1]) end
    return {'replayed', stored[2], stored[3]}
  end
  return {'conflict'}
end
local entryId = xadd_checked(KEYS[2], ARGV[4], unpack(ARGV, 6))
redis.call('HSET', KEYS[1], 'bodyHash', ARGV[1], 'orderId', ARGV[2], 'entryId', entryId)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {'created', ARGV[2], entryId}
`;
