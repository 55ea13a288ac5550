import type { RedisClient } from './connection.ts';
import { idAheadOf } from './stream.ts';

/**
 * Redis's clock, as seen from this process. `XADD *` takes entry IDs from it, so an ID far ahead
 * of it was set by hand. Asks Redis (`TIME`) only when an ID looks ahead of the local clock, and
 * keeps the offset it finds: a host whose clock is off costs one `TIME`, not one per entry.
 */
export class ServerClock {
  private offsetMs = 0;

  constructor(private readonly redis: RedisClient) {}

  /** Whether `id` may lie more than `boundMs` ahead of Redis's clock: cheap, no I/O; confirm with `aheadBy`. */
  looksAhead(id: string, boundMs: number): boolean {
    return idAheadOf(id, Date.now() + this.offsetMs) > boundMs;
  }

  /** How far `id` lies ahead of Redis's clock if that is more than `boundMs`, else undefined (one `TIME`). */
  async aheadBy(id: string, boundMs: number): Promise<number | undefined> {
    const sentAt = Date.now();
    const [seconds, micros] = await this.redis.time();
    const server = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
    this.offsetMs = server - (sentAt + Date.now()) / 2;
    const ahead = idAheadOf(id, server);
    return ahead > boundMs ? ahead : undefined;
  }
}
