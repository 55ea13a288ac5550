import type { Redis } from 'ioredis';
import type { Channel } from './sender.ts';

export interface SentNotification {
  channel: Channel;
  /** The event type that caused it, e.g. `order-created`. */
  event: string;
  /** Absent for payments written by the tutorial's Java payment-service, which has none. */
  orderId?: string | undefined;
  /** The stream entry that caused it. */
  entryId: string;
  /** When it was sent, ISO 8601. */
  time: string;
}

/** Every notification sent, per user, in notification-service's own Redis keys. */
export interface SentLog {
  record(userId: string, notification: SentNotification): Promise<void>;
  /** Oldest first. */
  list(userId: string): Promise<SentNotification[]>;
}

const key = (userId: string) => `notification-service:sent:${userId}`;

export function redisSentLog(redis: Redis): SentLog {
  return {
    async record(userId, notification) {
      await redis.rpush(key(userId), JSON.stringify(notification));
    },
    async list(userId) {
      const items = await redis.lrange(key(userId), 0, -1);
      return items.map((item) => JSON.parse(item) as SentNotification);
    },
  };
}
