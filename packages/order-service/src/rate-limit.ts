import { TooManyRequestsError } from '@msa/stream-kit/service';
import type { RedisClient } from '@msa/stream-kit';
import ipaddr from 'ipaddr.js';
import type { Logger } from 'pino';
import { RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';

/*
 * How many orders a user, and a client address, may place: counted in Redis (rate-limiter-flexible,
 * one script call per count, a fixed window per key), so that every order-service instance shares
 * the counts. A request over either limit is refused with 429 and `Retry-After`, before anything is
 * published.
 */

/** `RATE_LIMIT_PER_USER`, `RATE_LIMIT_PER_ADDRESS` (0: no limit) and `RATE_LIMIT_WINDOW_S`. */
export interface RateLimitConfig {
  RATE_LIMIT_PER_USER: number;
  RATE_LIMIT_PER_ADDRESS: number;
  RATE_LIMIT_WINDOW_S: number;
}

export interface OrderRateLimits {
  /**
   * Counts an order of `userId` (undefined: a user nobody verified, not counted) from `address`
   * (Express's `req.ip`); throws `TooManyRequestsError`
   * if either is over its limit. When Redis cannot count (away, too slow), the order goes on
   * uncounted: its publish, on the same Redis, decides; a limit must not turn a blip into an outage.
   */
  check(userId: string | undefined, address: string | undefined): Promise<void>;
}

/** How often a Redis that cannot count is logged, at most: it may be every request. */
const WARN_EVERY_MS = 10_000;

/**
 * How long an order waits for its counts: a Redis that does not answer would otherwise hold it for
 * the request connection's 2 s before the publish waits as long again.
 */
export const COUNT_TIMEOUT_MS = 200;

export function orderRateLimits(
  redis: RedisClient,
  config: RateLimitConfig,
  logger: Logger,
): OrderRateLimits {
  const windowS = config.RATE_LIMIT_WINDOW_S;
  const limiter = (points: number, what: string) =>
    points > 0
      ? new RateLimiterRedis({
          storeClient: redis,
          points,
          duration: windowS,
          // Keys order-service:rate:user:<userId>, order-service:rate:address:<address>.
          keyPrefix: `order-service:rate:${what}`,
          // Not connected: uncounted at once, rather than after the connection's timeout.
          rejectIfRedisNotReady: true,
        })
      : undefined;
  const byUser = limiter(config.RATE_LIMIT_PER_USER, 'user');
  const byAddress = limiter(config.RATE_LIMIT_PER_ADDRESS, 'address');
  let warnedAt = -Infinity;
  return {
    async check(userId, address) {
      const counts = [
        userId === undefined ? undefined : byUser?.consume(userId),
        address === undefined ? undefined : byAddress?.consume(clientOf(address)),
      ];
      if (counts.every((count) => count === undefined)) return;
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`no count within ${COUNT_TIMEOUT_MS} ms`)),
          COUNT_TIMEOUT_MS,
        );
      });
      late.catch(() => {}); // handled below, through the races
      const [user, client] = await Promise.allSettled(
        counts.map((count) => (count === undefined ? undefined : Promise.race([count, late]))),
      );
      clearTimeout(timer);
      let retryMs = 0;
      let over: string | undefined;
      for (const [result, what, points] of [
        [user, 'user', config.RATE_LIMIT_PER_USER],
        [client, 'client address', config.RATE_LIMIT_PER_ADDRESS],
      ] as const) {
        if (result === undefined || result.status === 'fulfilled') continue;
        if (result.reason instanceof RateLimiterRes) {
          retryMs = Math.max(retryMs, result.reason.msBeforeNext);
          over ??= `at most ${points} orders every ${windowS} s per ${what}`;
        } else if (performance.now() - warnedAt > WARN_EVERY_MS) {
          warnedAt = performance.now();
          logger.warn(
            { err: result.reason },
            'cannot count orders for the rate limits: letting them through',
          );
        }
      }
      if (over !== undefined)
        throw new TooManyRequestsError(`too many orders: ${over}`, Math.max(1, Math.ceil(retryMs / 1000)));
    },
  };
}

/**
 * The client an address stands for: an IPv4 address (IPv4-mapped IPv6 too) as it is, an IPv6
 * address by its /64, the least a host is given: else each of its 2^64 addresses would have a
 * limit of its own.
 */
export function clientOf(address: string): string {
  if (!ipaddr.isValid(address)) return address;
  const ip = ipaddr.process(address);
  if (ip.kind() === 'ipv4') return ip.toString();
  const parts = (ip as ipaddr.IPv6).parts.slice(0, 4);
  return `${parts.map((part) => part.toString(16)).join(':')}::/64`;
}
