import type { Redis } from 'ioredis';

/*
 * Redis trouble on demand, for the fault run and test/redis-trouble.test.ts: out of memory (writes
 * refused with OOM), a stalled server (DEBUG SLEEP) and paused clients (CLIENT PAUSE). Everything
 * here goes through an admin connection of the caller's and needs no write of its own, so it
 * works while Redis refuses writes.
 */

/** `redis-server` arguments that let `stallRedis` run `DEBUG SLEEP`. */
export const TROUBLE_SERVER_ARGS = ['--enable-debug-command', 'yes'];

/** The key `startOutOfMemory` tries to SET to see writes refused; never written while the window holds. */
const PROBE_KEY = 'redis-trouble:probe';

/** An out-of-memory window as `startOutOfMemory` opened it. */
export interface OutOfMemory {
  /** The `maxmemory` set, in bytes. */
  maxmemory: number;
  /** What Redis counted against `maxmemory` just before (`used_memory` less `mem_not_counted_for_evict`). */
  counted: number;
  /** Redis's answer to the probe write: the OOM error. */
  refusal: string;
}

/** The fields of `INFO <section>`, by name. */
export async function info(redis: Redis, section: string): Promise<Record<string, string>> {
  const text = await redis.info(section);
  const fields: Record<string, string> = {};
  for (const line of text.split('\r\n')) {
    const at = line.indexOf(':');
    if (at > 0 && !line.startsWith('#')) fields[line.slice(0, at)] = line.slice(at + 1);
  }
  return fields;
}

/** The memory Redis counts against `maxmemory`: `used_memory` less AOF and replication buffers. */
export async function countedMemory(redis: Redis): Promise<number> {
  const memory = await info(redis, 'memory');
  return Number(memory.used_memory) - Number(memory.mem_not_counted_for_evict ?? 0);
}

/**
 * Makes Redis refuse writes for lack of memory: `maxmemory-policy noeviction` and `maxmemory` a
 * little under what it counts now. Memory moves (client buffers fill and drain: a consumer stopped
 * and started again drains its replies), so a limit right at the current figure may let writes
 * through: it checks that a `SET` is refused with `OOM` and lowers the limit (1 MiB under, then
 * 2 MiB, ... up to 16 MiB) until it is. Throws if no limit
 * bites (and sets no limit then). End the window with `endOutOfMemory`.
 */
export async function startOutOfMemory(redis: Redis): Promise<OutOfMemory> {
  await redis.config('SET', 'maxmemory-policy', 'noeviction');
  for (let below = 1024 * 1024; below <= 16 * 1024 * 1024; below *= 2) {
    const counted = await countedMemory(redis);
    const maxmemory = Math.max(counted - below, 1);
    await redis.config('SET', 'maxmemory', String(maxmemory));
    const refusal = await writeRefusal(redis);
    if (refusal !== undefined) return { maxmemory, counted, refusal };
  }
  await endOutOfMemory(redis);
  throw new Error('Redis accepted writes under every maxmemory tried: no out-of-memory window');
}

/** Lifts the memory limit (`maxmemory 0`): writes are accepted again. Safe to call twice. */
export async function endOutOfMemory(redis: Redis): Promise<void> {
  await redis.config('SET', 'maxmemory', '0');
}

/**
 * Redis's error for a `SET` now if it is an `OOM` refusal, else undefined. A `SET` that went
 * through is deleted again (`DEL` is allowed under OOM).
 */
export async function writeRefusal(redis: Redis): Promise<string | undefined> {
  try {
    await redis.set(PROBE_KEY, '1');
  } catch (err) {
    const message = (err as Error).message;
    if (message.startsWith('OOM')) return message;
    throw err;
  }
  await redis.del(PROBE_KEY);
  return undefined;
}

/** A stall of the whole server (`DEBUG SLEEP`), or its clients paused (`CLIENT PAUSE`). */
export type Stall =
  { kind: 'debug-sleep'; ms: number } | { kind: 'pause'; mode: 'WRITE' | 'ALL'; ms: number };

/** The stall as the command that causes it, e.g. `DEBUG SLEEP 2.5` or `CLIENT PAUSE 3000 WRITE`. */
export function describeStall(stall: Stall): string {
  return stall.kind === 'debug-sleep'
    ? `DEBUG SLEEP ${(stall.ms / 1000).toFixed(1)}`
    : `CLIENT PAUSE ${stall.ms} ${stall.mode}`;
}

/**
 * Stalls Redis and resolves once the stall is over. `DEBUG SLEEP` blocks the server itself (the
 * server needs `TROUBLE_SERVER_ARGS`); `CLIENT PAUSE ... WRITE` holds every client's writes (and
 * scripts), `ALL` every command, this connection's too.
 */
export async function stallRedis(redis: Redis, stall: Stall): Promise<void> {
  if (stall.kind === 'debug-sleep') {
    await redis.call('DEBUG', 'SLEEP', (stall.ms / 1000).toFixed(3));
    return;
  }
  await redis.call('CLIENT', 'PAUSE', String(stall.ms), stall.mode);
  await new Promise((resolve) => setTimeout(resolve, stall.ms));
}
