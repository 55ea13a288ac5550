import { isUtf8 } from 'node:buffer';
import type { z } from 'zod';
import { EventValidationError } from './errors.ts';
import { traceFields } from './tracing.ts';

/** Flat string fields, as XADD writes them and XRANGE shows them. */
export type Fields = Record<string, string>;

/**
 * A stream name bound to the zod schema of its entries. The schema reads flat string fields
 * (its input) and yields the typed event (its output), so one schema serves both directions:
 * `publish()` encodes an event to fields and checks that the schema reads them back.
 */
export interface StreamDefinition<Schema extends z.ZodType = z.ZodType> {
  readonly name: string;
  readonly schema: Schema;
  /**
   * Fields to assume when an entry lacks them, given its entry ID: entries written by older or
   * foreign producers (the Java tutorial writes no `type`) read as the stream's default event.
   */
  readonly defaults?: (entryId: string) => Fields;
  /**
   * How much of the stream every XADD keeps (trimmed with `~`, so Redis drops whole nodes,
   * cheaply). Trimming ignores consumer groups: keep entries well past the longest time a
   * consumer may be down, or it loses what it has not read yet.
   * @defaultValue `{ maxAgeMs: 7 days }`
   */
  readonly retention?: Retention;
  /**
   * How far ahead of Redis's clock an entry ID may lie. `XADD *` takes IDs from that clock, so an
   * ID far ahead of it was set by hand, and every later `*` ID follows it: age-based retention
   * stops trimming and, at the last possible ID, the stream takes nothing more. Subscribers
   * dead-letter such entries; publishers refuse to write one (`IDAHEAD` error, nothing written).
   * @defaultValue 300000 (5 minutes)
   */
  readonly maxIdAheadMs?: number;
  /**
   * How many streams the logical stream is split over: 1 keeps the one key `name`; K writes each
   * event to `<name>:{0}` … `<name>:{K-1}` by its `partitionKey`, each key in a hash slot of its
   * own, so that a Redis Cluster spreads them over its masters. A subscription then owns whole
   * partitions (one consumer of a group per partition at a time) and handles each one's entries in
   * order: entries with the same key are handled in the order they were written. See README,
   * Partitions. @defaultValue 1
   */
  readonly partitions?: number;
  /**
   * The field whose value picks an event's partition (FNV-1a of its UTF-8 bytes, modulo
   * `partitions`; see `partitionOf`): events with the same value keep their order. Required with
   * more than one partition.
   */
  readonly partitionKey?: string;
}

/**
 * `maxLen`: about the last N entries (XADD MAXLEN ~). `maxAgeMs`: entries younger than this, by
 * the time in their ID (XADD MINID ~). `'keep-all'`: never trim.
 */
export type Retention = { maxLen: number } | { maxAgeMs: number } | 'keep-all';

export const DEFAULT_RETENTION: Retention = { maxAgeMs: 7 * 24 * 60 * 60 * 1000 };

export const DEFAULT_MAX_ID_AHEAD_MS = 5 * 60 * 1000;

/** The event type a stream carries, as handlers receive it and `publish()` accepts it. */
export type EventOf<D extends StreamDefinition> = z.output<D['schema']>;

/**
 * Binds a stream name to the schema of its entries (and, optionally, defaults for entries that
 * lack fields, and a retention), so that `publish()` and `subscribe()` infer the event type from
 * it. Throws `RangeError` for a retention out of range.
 */
export function defineStream<Schema extends z.ZodType>(
  definition: StreamDefinition<Schema>,
): StreamDefinition<Schema> {
  const retention = definition.retention ?? DEFAULT_RETENTION;
  if (retention !== 'keep-all') {
    const [key, value] = Object.entries(retention)[0] as [string, number];
    if (!Number.isInteger(value) || value < 1)
      throw new RangeError(`retention.${key} must be a positive integer, got ${value}`);
  }
  // Braces are a hash tag's (see `slotName`): only as one, else a key tagged with the stream's name
  // would hash elsewhere than the stream.
  if (/[{}]/.test(definition.name) && slotName(definition.name) !== definition.name)
    throw new RangeError(`stream name ${definition.name} holds braces that are no hash tag ({<non-empty>})`);
  const maxIdAheadMs = definition.maxIdAheadMs ?? DEFAULT_MAX_ID_AHEAD_MS;
  if (!Number.isInteger(maxIdAheadMs) || maxIdAheadMs < 0)
    throw new RangeError(`maxIdAheadMs must be a non-negative integer, got ${maxIdAheadMs}`);
  const partitions = definition.partitions ?? 1;
  if (!Number.isInteger(partitions) || partitions < 1 || partitions > MAX_PARTITIONS)
    throw new RangeError(`partitions must be an integer from 1 to ${MAX_PARTITIONS}, got ${partitions}`);
  if (partitions > 1) {
    if (!definition.partitionKey)
      throw new RangeError('partitionKey is required with more than one partition');
    // Each partition's tag must be its own: a tag in the name would put them all in one slot.
    if (/[{}]/.test(definition.name))
      throw new RangeError(`a partitioned stream's name may hold no braces, got ${definition.name}`);
  }
  return Object.freeze({ ...definition, retention, maxIdAheadMs, partitions });
}

/** The most partitions a stream may have: each owned partition costs its consumer two connections. */
export const MAX_PARTITIONS = 256;

/**
 * The keys a stream's entries live in: its name alone, or with partitions `<name>:{0}` …
 * `<name>:{K-1}` (the partition number is the hash tag, so each lands in a slot of its own).
 */
export function partitionNames(stream: StreamDefinition): string[] {
  const count = stream.partitions ?? 1;
  if (count === 1) return [stream.name];
  return Array.from({ length: count }, (_, k) => `${stream.name}:{${k}}`);
}

/**
 * Partition `k` of `stream` as a stream of its own, which the consumer loop reads as any other.
 * With one partition, the stream itself.
 */
export function partitionStream<D extends StreamDefinition>(stream: D, k: number): D {
  if ((stream.partitions ?? 1) === 1) return stream;
  return Object.freeze({
    ...stream,
    name: partitionNames(stream)[k]!,
    partitions: 1,
    partitionKey: undefined,
  });
}

/**
 * Which partition an event with these fields goes to: FNV-1a (32 bits) of the partition key's
 * value in UTF-8, modulo the partition count. Written out so that a producer in another language
 * can route the same way. 0 with one partition; throws `EventValidationError` when the key's field
 * is missing.
 */
export function partitionOf(stream: StreamDefinition, fields: Fields): number {
  const count = stream.partitions ?? 1;
  if (count === 1) return 0;
  const value = fields[stream.partitionKey!];
  if (value === undefined)
    throw new EventValidationError(stream.name, [`${stream.partitionKey}: the partition key is missing`]);
  let hash = 0x811c9dc5;
  for (const byte of Buffer.from(value, 'utf8')) hash = Math.imul(hash ^ byte, 0x01000193) >>> 0;
  return hash % count;
}

/** The key `event` is appended to: its stream's name, or the partition its key picks. */
export function streamKeyOf<D extends StreamDefinition>(stream: D, event: EventOf<D>): string {
  if ((stream.partitions ?? 1) === 1) return stream.name;
  return partitionNames(stream)[partitionOf(stream, encode(event as object))]!;
}

/**
 * `stream`'s name as the keys that live in its hash slot begin (`{order-events}:alive:<group>`):
 * in braces, a hash tag, so that a Redis Cluster keeps them with the stream and one script may
 * touch both. A name that holds a hash tag already (`orders:{3}`) is used as it is.
 */
export function slotName(stream: string): string {
  const open = stream.indexOf('{');
  const close = open === -1 ? -1 : stream.indexOf('}', open + 1);
  return close > open + 1 ? stream : `{${stream}}`;
}

/**
 * What a service puts into the name of a key that must change atomically with `stream`
 * (`payment-service:payment:{payment-events}:<orderId>`): on a Redis Cluster, `stream`'s slot
 * name and a colon; on one Redis nothing, so that keys keep the names they had before cluster
 * mode existed and an upgrade finds its data where it left it.
 */
export function slotTag(redis: { readonly isCluster: boolean }, stream: string): string {
  return redis.isCluster ? `${slotName(stream)}:` : '';
}

/** Where subscriptions to `stream` put what they give up on, unless told otherwise. */
export function defaultDeadLetterStream(stream: StreamDefinition): string {
  return `${stream.name}:dlq`;
}

/** The XADD arguments that trim `stream` as its retention says, before the ID. */
export function trimArguments(stream: StreamDefinition, now = Date.now()): string[] {
  const retention = stream.retention ?? DEFAULT_RETENTION;
  if (retention === 'keep-all') return [];
  if ('maxLen' in retention) return ['MAXLEN', '~', String(retention.maxLen)];
  return ['MINID', '~', `${Math.max(0, now - retention.maxAgeMs)}-0`];
}

/**
 * Everything XADD needs after the key to append `event` to `stream`: the trim its retention
 * calls for, `*`, and the fields, checked as `publish()` checks them (throws
 * `EventValidationError`), then the trace fields. For writing an event inside your own Lua script
 * or MULTI, atomically with other effects: `redis.call('XADD', KEYS[1], unpack(ARGV))`. Called
 * while a span records (a handler of a traced subscription), it opens a `send <stream>` span
 * under it and the entry carries it on (`traceparent`); `trace` gives those fields instead.
 */
export function xaddArguments<D extends StreamDefinition>(
  stream: D,
  event: EventOf<D>,
  trace: readonly string[] = traceFields(stream.name),
): string[] {
  const args = trimArguments(stream);
  args.push('*');
  pushFields(args, encodeChecked(stream, event));
  for (const field of trace) args.push(field);
  return args;
}

/** How far ahead of Redis's clock an entry ID of `stream` may lie, in ms. */
export function maxIdAheadMs(stream: StreamDefinition): number {
  return stream.maxIdAheadMs ?? DEFAULT_MAX_ID_AHEAD_MS;
}

/**
 * Lua: `xadd_checked(key, max_ahead_ms, ...)` runs `XADD key ...` and returns the new ID, unless
 * that ID lies more than `max_ahead_ms` ahead of Redis's clock (the stream's last ID was set far
 * ahead by hand, and `*` follows it): then it deletes the entry again and raises an `IDAHEAD`
 * error, so the script's other effects do not happen and nobody ever reads the entry. Put it at
 * the top of a script that writes events, and call it with `maxIdAheadMs(stream)` and
 * `xaddArguments(stream, event)`.
 *
 * Redis's clock is read once per script run, at its first XADD, not at each: a script writing a
 * hundred events spent a tenth of its time in TIME. Redis 7.0 stamps each XADD with its own
 * clock, so a later XADD of the run may look a few ms ahead of that first reading: an ID that
 * looks too far ahead is checked again against a fresh reading before it is refused.
 */
export const XADD_CHECKED = `
local xadd_checked_now
local function xadd_checked_clock()
  local time = redis.call('TIME')
  xadd_checked_now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function xadd_checked(key, max_ahead_ms, ...)
  local id = redis.call('XADD', key, ...)
  if not xadd_checked_now then xadd_checked_clock() end
  local id_ms = tonumber(string.match(id, '^%d+'))
  local ahead = id_ms - xadd_checked_now
  if ahead > tonumber(max_ahead_ms) then
    xadd_checked_clock()
    ahead = id_ms - xadd_checked_now
  end
  if ahead > tonumber(max_ahead_ms) then
    redis.call('XDEL', key, id)
    error({err = 'IDAHEAD ' .. key .. ': a new entry got ID ' .. id .. ', ' .. string.format('%.0f', ahead) ..
      ' ms ahead of the server clock; refused (see README, Entry IDs)'})
  end
  return id
end
`;

/**
 * The time in entry ID `<ms>-<seq>`: the ms of Redis's clock when it was stored. Read digit by
 * digit, at about a third of the cost of slicing the string and converting it: with metrics on,
 * a subscription reads it for every entry it handles.
 */
export function idTimeMs(id: string): number {
  let ms = 0;
  for (let i = 0; i < id.length; i += 1) {
    const digit = id.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) break;
    ms = ms * 10 + digit;
  }
  return ms;
}

/** How far the time in entry ID `<ms>-<seq>` lies ahead of `nowMs`, in ms. */
export function idAheadOf(id: string, nowMs: number): number {
  return idTimeMs(id) - nowMs;
}

/** `event`'s fields as XADD takes them, name then value, checked as `publish()` checks them. */
export function fieldArguments<D extends StreamDefinition>(stream: D, event: EventOf<D>): string[] {
  return pushFields([], encodeChecked(stream, event));
}

/** Appends `fields` to `args`, name then value. */
function pushFields(args: string[], fields: Fields): string[] {
  // A loop, not entries().flat(): this runs for every event published, and flat() is slow in V8.
  for (const key in fields) args.push(key, fields[key]!);
  return args;
}

/** Strings stay as they are, numbers and booleans print as `String()` does, nested values as JSON. */
export function encode(event: object): Fields {
  const fields: Fields = {};
  // for...in, not Object.entries(): no array per field, and this runs for every event published
  // (an event is a plain object: it has no enumerable keys but its own).
  for (const key in event) {
    const value = (event as Record<string, unknown>)[key];
    if (value === undefined || value === null) continue;
    fields[key] =
      typeof value === 'string' ? value : typeof value === 'object' ? JSON.stringify(value) : String(value);
  }
  return fields;
}

export type Decoded<T> = { ok: true; event: T } | { ok: false; reason: string };

export function decode<D extends StreamDefinition>(
  stream: D,
  entryId: string,
  fields: Fields,
): Decoded<EventOf<D>> {
  // Object.assign, not a spread of the two: V8 runs that spread several times slower, and this
  // runs for every entry delivered.
  const input = stream.defaults ? Object.assign({}, stream.defaults(entryId), fields) : fields;
  const result = stream.schema.safeParse(input);
  return result.success
    ? { ok: true, event: result.data as EventOf<D> }
    : { ok: false, reason: describeIssues(result.error).join('; ') };
}

/** Encodes `event` and proves the stream's schema reads it back; throws otherwise. */
export function encodeChecked<D extends StreamDefinition>(stream: D, event: EventOf<D>): Fields {
  const fields = encode(event as object);
  const result = stream.schema.safeParse(fields);
  if (!result.success) throw new EventValidationError(stream.name, describeIssues(result.error));
  // XADD needs a field: a schema whose fields are all optional could otherwise pass `{}`.
  if (Object.keys(fields).length === 0)
    throw new EventValidationError(stream.name, ['(event): has no fields']);
  return fields;
}

/**
 * An entry's fields as text, as Redis sent them (names and values in turn), or the index in
 * `flat` of the first name or value that is not valid UTF-8.
 */
export function textFields(flat: readonly Buffer[]): Fields | number {
  const fields: Fields = {};
  for (let i = 0; i + 1 < flat.length; i += 2) {
    const name = flat[i]!.toString();
    const value = flat[i + 1]!.toString();
    // toString() turns bytes that are not UTF-8 into U+FFFD: only a string holding one needs the
    // exact (native, per-call) check. This runs for every field of every entry.
    if (name.includes('\uFFFD') && !isUtf8(flat[i]!)) return i;
    if (value.includes('\uFFFD') && !isUtf8(flat[i + 1]!)) return i + 1;
    fields[name] = value;
  }
  return fields;
}

export function fieldsFromReply(flat: readonly string[]): Fields {
  const fields: Fields = {};
  for (let i = 0; i + 1 < flat.length; i += 2) fields[flat[i]!] = flat[i + 1]!;
  return fields;
}

function describeIssues(error: z.ZodError): string[] {
  return error.issues.map((issue) => `${issue.path.join('.') || '(entry)'}: ${issue.message}`);
}
