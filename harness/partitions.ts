import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Cluster, Redis } from 'ioredis';
import { z } from 'zod';
import { defineStream } from '@msa/stream-kit';
import { slotName } from '@msa/stream-kit/lua';
import { spawnEntry } from './services.ts';

/*
 * A partitioned stream whose entries carry a key and that key's sequence number (1, 2, 3, … in the
 * order they were written), and consumers (`partition-consumer.ts`, run as processes) that apply
 * each entry in one script with its ack, in the partition's hash slot: the key's last sequence
 * number moves on, and an entry that does not come right after it is written down as what it is,
 * an entry handled twice or out of order. What the partition tests and the partition bench share.
 */

export const LEDGER_GROUP = 'ledger-group';

export function ledgerStream(name: string, partitions: number) {
  return defineStream({
    name,
    schema: z.object({ key: z.string(), seq: z.coerce.number().int().positive() }),
    partitions,
    partitionKey: 'key',
    retention: 'keep-all',
  });
}
export type LedgerStream = ReturnType<typeof ledgerStream>;

/** Where partition `partition`'s consumers keep each key's last sequence number applied. */
export function lastSeqKey(partition: string): string {
  return `${slotName(partition)}:ledger:last`;
}

/** Where they write down the entries that came twice or out of order. */
export function violationsKey(partition: string): string {
  return `${slotName(partition)}:ledger:violations`;
}

/**
 * KEYS[1] the partition, KEYS[2] its last sequence numbers, KEYS[3] its violations; ARGV group,
 * entry ID, key, sequence number. Applies the entry and acks it, in one step.
 */
export const APPLY = `
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
local seq = tonumber(ARGV[4])
if seq <= last then
  redis.call('RPUSH', KEYS[3], 'twice or late: ' .. ARGV[3] .. ' #' .. seq .. ' after #' .. last)
elseif seq ~= last + 1 then
  redis.call('RPUSH', KEYS[3], 'out of order: ' .. ARGV[3] .. ' #' .. seq .. ' after #' .. last)
end
if seq > last then redis.call('HSET', KEYS[2], ARGV[3], seq) end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
`;

/** Starts a consumer of the ledger as a process of its own (see partition-consumer.ts). */
export function spawnLedgerConsumer(env: {
  REDIS_URL: string;
  REDIS_CLUSTER?: string;
  STREAM: string;
  PARTITIONS: string;
  CONSUMER: string;
  LOG_LEVEL?: string;
  /** How long each handler takes, in ms. @defaultValue 0 */
  WORK_MS?: string;
}): ChildProcess {
  const root = fileURLToPath(new URL('..', import.meta.url));
  return spawnEntry(root, 'harness/partition-consumer.ts', env);
}

/** What the ledger shows: its violations, each key's last sequence number, and what is pending. */
export async function ledgerReport(
  redis: Redis | Cluster,
  stream: LedgerStream,
  partitions: readonly string[],
) {
  const violations: string[] = [];
  const last = new Map<string, number>();
  let pending = 0;
  for (const partition of partitions) {
    violations.push(...(await redis.lrange(violationsKey(partition), 0, -1)));
    const seqs = await redis.hgetall(lastSeqKey(partition));
    for (const [key, seq] of Object.entries(seqs)) last.set(key, Number(seq));
    const summary = (await redis.xpending(partition, LEDGER_GROUP).catch(() => [0])) as [number];
    pending += summary[0];
  }
  return { violations, last, pending, stream: stream.name };
}

/** Who holds each partition's lease for the ledger's group (null: nobody). */
export function leaseOwners(
  redis: Redis | Cluster,
  partitions: readonly string[],
): Promise<(string | null)[]> {
  return Promise.all(
    partitions.map((partition) => redis.get(`${slotName(partition)}:owner:${LEDGER_GROUP}`)),
  );
}
