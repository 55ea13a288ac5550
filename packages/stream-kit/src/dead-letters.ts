import type { RedisClient } from './connection.ts';
import { PUT_BACK_ONCE } from './scripts.ts';
import {
  decode,
  slotName,
  defaultDeadLetterStream,
  fieldsFromReply,
  partitionNames,
  partitionOf,
  textFields,
  trimArguments,
  xaddArguments,
  type Fields,
  type StreamDefinition,
} from './stream.ts';

/** An entry a subscription gave up on, as it sits in the dead-letter stream. */
export interface DeadLetter {
  /** Its ID in the dead-letter stream: what `replayDeadLetters` takes. */
  readonly id: string;
  /** Its ID in the stream it came from. */
  readonly entryId: string;
  readonly group: string;
  readonly consumer: string;
  readonly deliveries: number;
  /** Why it was given up on, e.g. `invalid entry: price: must be a positive decimal number`. */
  readonly reason: string;
  /**
   * The entry's own fields, as it was published (bytes that are not UTF-8 show as U+FFFD here;
   * replay writes back the bytes themselves).
   */
  readonly fields: Fields;
}

/** Where the dead letters are, for streams whose subscriptions set `deadLetterStream`. */
export interface DeadLetterOptions {
  /** @defaultValue `${stream.name}:dlq`, as `subscribe()` writes it */
  deadLetterStream?: string;
}

/** Options of `listDeadLetters()`. */
export interface ListOptions extends DeadLetterOptions {
  /** @defaultValue 100 */
  count?: number;
  /** List the dead letters after this dead-letter ID (for paging). @defaultValue from the first */
  after?: string;
}

/*
 * The dead-letter format, written (`writeDeadLetter`) and read (`listDeadLetters`,
 * `replayDeadLetters`) here alone: the entry's own fields, byte for byte, then `dlq:*` fields
 * saying where it came from and why it was given up on.
 */
const META = 'dlq:';

/** Where a dead letter came from and why: its `dlq:*` fields. */
export interface DeadLetterSource {
  readonly entryId: string;
  readonly stream: string;
  readonly group: string;
  readonly consumer: string;
  /** The run of the handler that gave up on it. */
  readonly deliveries: number;
  readonly reason: string;
}

/** The dead-letter stream refused the write: the entry stays pending rather than be lost. */
export class DeadLetterError extends Error {
  constructor(cause: unknown) {
    super('dead-letter write failed', { cause });
    this.name = new.target.name;
  }
}

/**
 * Appends the entry (its bytes as they are, `fields`) with `source` to `deadLetterStream`. Throws
 * `DeadLetterError`, its cause the Redis error, if the write failed. Acking the entry is the
 * caller's next step; not one MULTI with this, as a transaction would still run the XACK after a
 * failed XADD and lose the entry.
 */
export async function writeDeadLetter(
  redis: RedisClient,
  deadLetterStream: string,
  fields: readonly Buffer[],
  source: DeadLetterSource,
): Promise<void> {
  // prettier-ignore
  const meta = [
    'dlq:id', source.entryId,
    'dlq:stream', source.stream,
    'dlq:group', source.group,
    'dlq:consumer', source.consumer,
    'dlq:deliveries', String(source.deliveries),
    'dlq:reason', source.reason,
  ];
  await redis.xadd(deadLetterStream, '*', ...fields, ...meta).catch((err: unknown) => {
    throw new DeadLetterError(err);
  });
}

/**
 * How long `{<stream>}:replayed:<dead-letter stream>:<entry ID>` remembers that an entry was put back, so
 * that replaying the dead letter another group left for it does not put it back twice.
 */
const REPLAY_MARK_SECONDS = 30 * 24 * 60 * 60;

/** The dead letters of `stream`, oldest first. */
export async function listDeadLetters(
  redis: RedisClient,
  stream: StreamDefinition,
  { count = 100, after, deadLetterStream = defaultDeadLetterStream(stream) }: ListOptions = {},
): Promise<DeadLetter[]> {
  const entries = await redis.xrange(deadLetterStream, after ? `(${after}` : '-', '+', 'COUNT', count);
  return entries.map(([id, flat]) => toDeadLetter(id, flat));
}

/** A dead letter as XRANGE returns it (`id`, the flat fields) read into its parts. */
export function toDeadLetter(id: string, flat: string[]): DeadLetter {
  const all = fieldsFromReply(flat);
  const fields: Fields = {};
  for (const [name, value] of Object.entries(all)) if (!name.startsWith(META)) fields[name] = value;
  return {
    id,
    entryId: all['dlq:id'] ?? '',
    group: all['dlq:group'] ?? '',
    consumer: all['dlq:consumer'] ?? '',
    deliveries: Number(all['dlq:deliveries'] ?? 0),
    reason: all['dlq:reason'] ?? '',
    fields,
  };
}

/** What `replayDeadLetters()` did with one dead letter. */
export interface Replayed {
  /** The dead letter's ID. */
  readonly id: string;
  /**
   * The entry it was put back as, in the original stream (the same for every dead letter of one
   * entry, and for a dead letter whose entry another call already put back), or `undefined` if
   * the dead letter does not exist.
   */
  readonly entryId: string | undefined;
}

/**
 * Puts dead letters back on `stream` (once their cause is fixed) and removes them from the
 * dead-letter stream, once per original entry: an entry is put back once, even if
 * several groups dead-lettered it and their dead letters are replayed in separate calls (for 30
 * days), and even if two operators replay it at the same time. The new
 * entry reaches every group of the stream again, not only the ones that gave up on it; the
 * services' effects are idempotent per order, so groups that had handled it do nothing twice. It
 * keeps its identity: an entry that reads as an event is written back as that event (a tutorial
 * entry keeps, as `orderId`, the entry ID it was first published under); one that still does not
 * read (or is not UTF-8) is written back byte for byte, and will be dead-lettered again.
 */
export async function replayDeadLetters(
  redis: RedisClient,
  stream: StreamDefinition,
  ids: readonly string[],
  { deadLetterStream = defaultDeadLetterStream(stream) }: DeadLetterOptions = {},
): Promise<Replayed[]> {
  /** Dead letters by the entry they came from; one without `dlq:id` (written by hand?) stands alone. */
  const byEntry = new Map<string, { ids: string[]; raw: Buffer[]; originalId: string; from: string }>();
  const missing: string[] = [];
  for (const id of new Set(ids)) {
    const [found] = await redis.xrangeBuffer(deadLetterStream, id, id);
    if (!found) {
      missing.push(id);
      continue;
    }
    // The entry's own fields as bytes, apart from the dlq:* ones.
    const raw: Buffer[] = [];
    let entryId = '';
    let from = '';
    const flat = found[1];
    for (let i = 0; i + 1 < flat.length; i += 2) {
      const name = flat[i]!.toString();
      if (name === 'dlq:id') entryId = flat[i + 1]!.toString();
      else if (name === 'dlq:stream') from = flat[i + 1]!.toString();
      else if (!name.startsWith(META)) raw.push(flat[i]!, flat[i + 1]!);
    }
    const entryKey = entryId || `letter:${id}`;
    const group = byEntry.get(entryKey) ?? { ids: [], raw, originalId: entryId, from };
    group.ids.push(id);
    byEntry.set(entryKey, group);
  }
  const replayed: Replayed[] = missing.map((id) => ({ id, entryId: undefined }));
  const partitions = partitionNames(stream);
  for (const [entryKey, { ids: letterIds, raw, originalId, from }] of byEntry) {
    const fields = textFields(raw);
    const decoded = typeof fields === 'number' ? undefined : decode(stream, originalId, fields);
    const args = decoded?.ok ? xaddArguments(stream, decoded.event) : [...trimArguments(stream), '*', ...raw];
    // A partitioned stream's entry goes back to the partition its key's stored value picks, as
    // publish() routed it (the end of it: after the entries of its key written since); one that
    // lacks the key, where it came from.
    const routed =
      partitions.length > 1 && typeof fields !== 'number' && fields[stream.partitionKey!] !== undefined
        ? partitions[partitionOf(stream, fields)]!
        : undefined;
    const key = routed ?? (partitions.includes(from) ? from : partitions[0]!);
    // The entry first, then its dead letters: a crash in between leaves dead letters whose replay
    // finds the mark and only deletes them. Two steps, as the mark lives in the stream's slot
    // and the dead letters in their own (Redis Cluster: atomic within a slot, idempotent across).
    const mark = `${slotName(key)}:replayed:${deadLetterStream}:${entryKey}`;
    const entryId = (await redis.eval(PUT_BACK_ONCE, 2, key, mark, REPLAY_MARK_SECONDS, ...args)) as string;
    await redis.xdel(deadLetterStream, ...letterIds);
    for (const id of letterIds) replayed.push({ id, entryId });
  }
  return replayed;
}

/** What `dropDeadLetters()` did with one dead letter. */
export interface Dropped {
  /** The dead letter's ID. */
  readonly id: string;
  /** Whether it was there to drop. */
  readonly dropped: boolean;
}

/**
 * Deletes dead letters for good (XDEL), for entries that can never succeed (`price: free`): their
 * original entries are not put back. Resolves to what became of each ID, in order.
 */
export async function dropDeadLetters(
  redis: RedisClient,
  stream: StreamDefinition,
  ids: readonly string[],
  { deadLetterStream = defaultDeadLetterStream(stream) }: DeadLetterOptions = {},
): Promise<Dropped[]> {
  const dropped: Dropped[] = [];
  for (const id of new Set(ids))
    dropped.push({ id, dropped: (await redis.xdel(deadLetterStream, id)) === 1 });
  return dropped;
}
