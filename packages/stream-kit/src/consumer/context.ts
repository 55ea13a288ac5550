import type { RedisClient } from '../connection.ts';
import type { Logger } from '../logger.ts';
import type { StreamDefinition } from '../stream.ts';

/**
 * What every part of a subscription sees of it: its connection and where it reads. Parts share
 * nothing else; the loop (loop.ts) passes them what they need.
 */
export interface ConsumerContext {
  readonly redis: RedisClient;
  readonly stream: StreamDefinition;
  readonly group: string;
  readonly consumer: string;
  readonly log: Logger;
  /** The fields that place a log line: `stream`, `group`, `consumer`. */
  readonly where: { readonly stream: string; readonly group: string; readonly consumer: string };
}

export function consumerContext(
  redis: RedisClient,
  stream: StreamDefinition,
  group: string,
  consumer: string,
  log: Logger,
): ConsumerContext {
  return { redis, stream, group, consumer, log, where: { stream: stream.name, group, consumer } };
}

/** An entry as Redis sends it: field names and values stay bytes until checked to be UTF-8. */
export type Entry = [id: string, fields: Buffer[]];

/** One row of XPENDING's extended form. */
export type PendingInfo = [id: string, consumer: string, idleMs: number, deliveries: number];

/**
 * XCLAIM's minimum idle time for entries that have been idle `idleMs` if nobody touched them
 * since: it claims them only if they are still ours. 2 ms under, as Redis and Date.now() round
 * apart.
 */
export function stillOurs(idleMs: number): number {
  return Math.max(0, idleMs - 2);
}
