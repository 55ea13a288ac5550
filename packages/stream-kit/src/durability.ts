import type { RedisClient } from './connection.ts';

/**
 * How many replicas must hold a write before it counts as done, and how long to wait for them.
 * Redis replicates asynchronously: a write its master acknowledged is lost if the master dies
 * before a replica has it, and the replica takes over. Waiting for `replicas` of them (`WAIT`)
 * makes a write survive the loss of its master, unless every one of those replicas is lost too.
 */
export interface Durability {
  /** At least 1. */
  readonly replicas: number;
  /** How long to wait for them, in ms; at least 1 (`WAIT` with 0 would wait for ever). */
  readonly timeoutMs: number;
}

/**
 * A write Redis acknowledged that fewer than `Durability.replicas` replicas confirmed within
 * `Durability.timeoutMs`: it is written, but its master's loss could lose it. Its message starts
 * with `NOREPLICAS`, as Redis's own refusal for `min-replicas-to-write` does, so that it counts
 * as a Redis fault (`isRedisFault`): a request answers 503, and a client retries it with its
 * idempotency key.
 */
export class NotReplicatedError extends Error {
  constructor(
    readonly confirmed: number,
    readonly wanted: number,
    readonly timeoutMs: number,
  ) {
    super(
      `NOREPLICAS ${confirmed} of ${wanted} replicas confirmed the write within ${timeoutMs} ms: it is written, but the loss of its master could lose it`,
    );
    this.name = new.target.name;
  }
}

export function checkDurability({ replicas, timeoutMs }: Durability): void {
  if (!Number.isInteger(replicas) || replicas < 1)
    throw new RangeError(`durability.replicas must be a positive integer, got ${replicas}`);
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1)
    throw new RangeError(`durability.timeoutMs must be a positive integer, got ${timeoutMs}`);
}

/**
 * Returns `replicated(key)`: resolves once every write sent on `redis` to `key`'s master before
 * the call is on `durability.replicas` replicas, and rejects with `NotReplicatedError` if they
 * did not confirm it in time (or with the Redis error). Call it after the write has answered.
 * The calls of one tick share one `WAIT` per key (a group commit): `WAIT` covers every write the
 * connection sent before it, so a burst of orders costs one replication round trip, not one each.
 * The `WAIT` goes in a pipeline behind a read of `key`, which takes it, on a Redis Cluster, to the
 * master of `key`'s slot, on the connection that sent the writes. It holds that connection until
 * the replicas answer: give durable writes a connection of their own.
 */
export function waitForReplicas(redis: RedisClient, durability: Durability): (key: string) => Promise<void> {
  checkDurability(durability);
  const { replicas, timeoutMs } = durability;
  const due = new Map<string, { resolve: () => void; reject: (err: unknown) => void }[]>();
  let scheduled = false;

  function flush() {
    scheduled = false;
    for (const [key, waiters] of due) {
      due.delete(key);
      const settle = (err?: unknown) => {
        for (const waiter of waiters)
          if (err === undefined) waiter.resolve();
          else waiter.reject(err);
      };
      redis
        .pipeline()
        .exists(key)
        .wait(replicas, timeoutMs)
        .exec()
        .then((results) => {
          const [err, confirmed] = results?.[1] ?? [new Error('WAIT got no answer'), 0];
          if (err) settle(err);
          else if ((confirmed as number) < replicas)
            settle(new NotReplicatedError(confirmed as number, replicas, timeoutMs));
          else settle();
        }, settle);
    }
  }

  return (key) =>
    new Promise<void>((resolve, reject) => {
      const waiters = due.get(key) ?? [];
      waiters.push({ resolve, reject });
      due.set(key, waiters);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
}
