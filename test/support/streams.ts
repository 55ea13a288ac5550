import type { Redis } from 'ioredis';
import { fieldsFromReply, type Fields } from '../../packages/stream-kit/src/stream.ts';

/** The fields of every entry of `stream`, oldest first, as `redis-cli XRANGE` shows them. */
export async function entryFields(redis: Redis, stream: string): Promise<Fields[]> {
  const entries = await redis.xrange(stream, '-', '+');
  return entries.map(([, flat]) => fieldsFromReply(flat));
}
