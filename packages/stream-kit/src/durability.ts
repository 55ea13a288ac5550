import { onSocketClose, type RedisClient } from './connection.ts';

/**
 * How many replicas must hold a write before it counts as done, and how long to wait for them.
 * Redis replicates asynchronously: a write its master acknowledged is lost if the master dies
 * before a replica has it, and the replica takes over. Waiting for `replicas` of them (`WAIT`)
 * makes a write survive the loss of its master, as far as Redis's own promise goes: a failover
 * elects the replica that is furthest along, which holds the write if any of those does.
 */
export interface Durability {
  /** At least 1. */
  readonly replicas: number;
  /** How long to wait for them, in ms; at least 1 (`WAIT` with 0 would wait for ever). */
  readonly timeoutMs: number;
}

/**
 * A write Redis acknowledged that fewer than `Durability.replicas` replicas confirmed within
 * `Durability.timeoutMs` (or whose connection was lost before they could): it is written, but its
 * master's loss could lose it. Its message starts with `NOREPLICAS`, as Redis's own refusal for
 * `min-replicas-to-write` does, so that it counts as a Redis fault (`isRedisFault`): a request
 * answers 503, and a client retries it with its idempotency key.
 */
export class NotReplicatedError extends Error {
  constructor(
    readonly confirmed: number,
    readonly wanted: number,
    readonly timeoutMs: number,
    why = `${confirmed} of ${wanted} replicas confirmed the write within ${timeoutMs} ms`,
  ) {
    super(`NOREPLICAS ${why}: it is written, but the loss of its master could lose it`);
    this.name = new.target.name;
  }
}

export function checkDurability({ replicas, timeoutMs }: Durability): void {
  if (!Number.isInteger(replicas) || replicas < 1)
    throw new RangeError(`durability.replicas must be a positive integer, got ${replicas}`);
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1)
    throw new RangeError(`durability.timeoutMs must be a positive integer, got ${timeoutMs}`);
}

/** Runs a write on `redis`, then waits for replicas to hold it; see `waitForReplicas`. */
export type ReplicatedWrite = <T>(key: string, write: () => Promise<T>) => Promise<T>;

/**
 * Returns `replicated(key, write)`: runs `write` (commands on `redis` that write `key`'s slot),
 * and resolves to its answer once `durability.replicas` replicas hold it; rejects with
 * `NotReplicatedError` if they did not confirm it in time (or with the Redis error). `WAIT`
 * covers every write the connection sent before it, so the calls whose writes answered in one
 * tick share one `WAIT` per key (a group commit): a burst of orders costs one replication round
 * trip, not one each. The `WAIT` goes in a pipeline behind a read of `key`, which takes it, on a
 * Redis Cluster, to the master of `key`'s slot, on the connection that sent the writes; a socket
 * of `redis` that closed between a write and its `WAIT` (a reconnect: the `WAIT` would cover
 * nothing) fails the wait. It holds that connection until the replicas answer: give durable
 * writes a connection of their own, whose command timeout is above `timeoutMs`.
 */
export function waitForReplicas(redis: RedisClient, durability: Durability): ReplicatedWrite {
  checkDurability(durability);
  const { replicas, timeoutMs } = durability;
  /** Bumped whenever a socket of `redis` closes: a `WAIT` after it covers no earlier write. */
  let epoch = 0;
  onSocketClose(redis, () => (epoch += 1));
  type Waiter = { since: number; resolve: () => void; reject: (err: unknown) => void };
  const due = new Map<string, Waiter[]>();
  let scheduled = false;

  function flush() {
    scheduled = false;
    for (const [key, waiters] of due) {
      due.delete(key);
      const settle = (outcome: (waiter: Waiter) => unknown) => {
        for (const waiter of waiters) outcome(waiter);
      };
      const sent = epoch;
      redis
        .pipeline()
        .exists(key)
        .wait(replicas, timeoutMs)
        .exec()
        .then(
          (results) => {
            // The read's error (MOVED to another master after a reconnect) voids the WAIT behind it.
            const failed =
              results?.[0]?.[0] ?? results?.[1]?.[0] ?? (results ? null : new Error('WAIT got no answer'));
            const confirmed = Number(results?.[1]?.[1] ?? 0);
            settle((waiter) => {
              if (failed) waiter.reject(failed);
              else if (waiter.since !== sent || epoch !== sent)
                waiter.reject(
                  new NotReplicatedError(
                    0,
                    replicas,
                    timeoutMs,
                    'the connection was lost before the replicas confirmed the write',
                  ),
                );
              else if (confirmed < replicas)
                waiter.reject(new NotReplicatedError(confirmed, replicas, timeoutMs));
              else waiter.resolve();
            });
          },
          (err: unknown) => settle((waiter) => waiter.reject(err)),
        );
    }
  }

  return async (key, write) => {
    const since = epoch;
    const answer = await write();
    await new Promise<void>((resolve, reject) => {
      const waiters = due.get(key) ?? [];
      waiters.push({ since, resolve, reject });
      due.set(key, waiters);
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    });
    return answer;
  };
}
