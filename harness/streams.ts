import type { RedisClient } from '@msa/stream-kit';

export type { Fields } from '@msa/stream-kit';

/** An entry's fields as XRANGE replies them (names and values in turn), by name. */
export function fieldsFromReply(flat: readonly string[]): Record<string, string> {
  const fields: Record<string, string> = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
  return fields;
}

/** The fields of every entry of `stream`, oldest first, as `redis-cli XRANGE` shows them. */
export async function entryFields(redis: RedisClient, stream: string): Promise<Record<string, string>[]> {
  const entries = await redis.xrange(stream, '-', '+');
  return entries.map(([, flat]) => fieldsFromReply(flat));
}
