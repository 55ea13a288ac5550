/**
 * `pnpm tail`: follows the catalogue's streams live, one readable line per entry, until Ctrl-C;
 * or, with `--group`, prints what a consumer group holds pending and exits. Uses `REDIS_URL`
 * (default `redis://127.0.0.1:6379`) and only reads. Exit codes: 0 stopped by Ctrl-C or SIGTERM
 * (or the pending entries printed), 1 Redis failed at the start or a stream or group named is not
 * there, 2 called wrong. While following, a lost connection is reported on stderr and retried
 * until Redis is back: a restart of Redis does not end the tail.
 */
import { parseArgs } from 'node:util';
import type { StreamDefinition } from '@msa/stream-kit';
import { Redis } from 'ioredis';
import { isColorSupported } from 'pino-pretty';
import { streams } from '../services.ts';

/** Entries per stream and XREAD; more waiting entries are read in further rounds. */
const BATCH = 100;
/** How long one XREAD waits for new entries before it is sent again. */
const BLOCK_MS = 10_000;
/**
 * How long a closed connection may hold the process. ioredis arms a timer of this length on
 * every `disconnect()`, which a socket that is already gone (Redis unreachable, or down while
 * following) never clears: its default, 2 s, would delay every exit after a failure.
 */
const DISCONNECT_MS = 100;
/** The largest part of an entry ID (`<ms>-<seq>`, both unsigned 64-bit). */
const MAX_PART = 2n ** 64n - 1n;

/**
 * The streams it can follow, by name: the catalogue's, and their dead-letter streams (which
 * carry the original entry's fields plus `dlq:*`), each with the definition that reads them.
 */
const KNOWN = new Map<string, StreamDefinition>(
  streams.flatMap((stream) => [
    [stream.name, stream],
    [`${stream.name}:dlq`, stream],
  ]),
);
const USAGE = `usage: pnpm tail [<stream>...] [--from <id|time>]
       pnpm tail [<stream>...] --group <group>
Follows the streams (every stream of the catalogue unless named), one line per entry, until Ctrl-C:
time, stream, entry ID, event type, orderId, then the other fields.
  --from <id|time>  start at an entry ID (1795312027109-0, 1795312027109; 0 for the first), a time
                    (2026-11-26T06:00:00Z; local time without Z or an offset) or a time ago (30s,
                    5m, 1h, 2d), then follow; without it, only new entries
  --group <group>   print the entries the group holds pending (consumer, idle time, deliveries)
                    and exit
  --no-color        no colors; they are off anyway when stdout is not a terminal or NO_COLOR is
                    set (FORCE_COLOR or --color turns them on)
streams: ${streams.map((stream) => stream.name).join(', ')}; dead letters: ${streams.map((stream) => `${stream.name}:dlq`).join(', ')}`;

function calledWrong(problem: string): never {
  console.error(`pnpm tail: ${problem}\n${USAGE}`);
  process.exit(2);
}

// ---- formatting (pure) -------------------------------------------------------------------------

/** An entry ID as numbers, for ordering entries of several streams. */
function idParts(id: string): [bigint, bigint] {
  const dash = id.indexOf('-');
  return dash < 0 ? [BigInt(id), 0n] : [BigInt(id.slice(0, dash)), BigInt(id.slice(dash + 1))];
}

function compareIds(a: string, b: string): number {
  const [aMs, aSeq] = idParts(a);
  const [bMs, bSeq] = idParts(b);
  return aMs === bMs ? Number(aSeq - bSeq) : aMs < bMs ? -1 : 1;
}

/** Control, format (zero-width, bidi) and line-separator characters: a value could move the cursor or fake a line. */
const INVISIBLE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu;
const PLAIN = /^[^\s"'=\\\p{Cc}\p{Cf}\p{Zl}\p{Zp}]+$/u;

/** `text` with every invisible character as a `\uXXXX` escape. */
function visible(text: string): string {
  return text.replace(INVISIBLE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** `text` as is if it is one plain word, else JSON-quoted with every invisible character escaped. */
function quote(text: string): string {
  return PLAIN.test(text) ? text : visible(JSON.stringify(text));
}

const two = (n: number) => String(n).padStart(2, '0');

/** The local time in an entry ID, `HH:MM:ss.mmm`, with the date before it when it is not today. */
function clock(id: string, now: Date): string {
  const ms = Number(idParts(id)[0]);
  const time = new Date(ms);
  if (Number.isNaN(time.getTime())) return '??:??:??.???';
  const hms = `${two(time.getHours())}:${two(time.getMinutes())}:${two(time.getSeconds())}.${String(time.getMilliseconds()).padStart(3, '0')}`;
  return time.toDateString() === now.toDateString()
    ? hms
    : `${time.getFullYear()}-${two(time.getMonth() + 1)}-${two(time.getDate())} ${hms}`;
}

/** `12.3s`, `4m05s`, `2h03m`, `3d04h`. */
function duration(ms: number): string {
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  const [m, h, d] = [Math.floor(s / 60), Math.floor(s / 3600), Math.floor(s / 86_400)];
  if (h < 1) return `${m}m${two(Math.floor(s) % 60)}s`;
  if (d < 1) return `${h}h${two(m % 60)}m`;
  return `${d}d${two(h % 24)}h`;
}

/** What an entry reads as, by its stream's definition, as a subscriber would read it. */
interface Reading {
  /** The event type, `malformed` when the entry does not parse, `deleted` when it is gone. */
  type: string;
  orderId: string | undefined;
  /** The fields not shown as the type or the orderId, in their order on the wire. */
  rest: [string, string][];
  /** Why the entry does not parse. */
  problem?: string;
}

function read(definition: StreamDefinition, stream: string, id: string, flat: string[] | null): Reading {
  if (!flat) return { type: 'deleted', orderId: undefined, rest: [] };
  const fields: [string, string][] = [];
  for (let i = 0; i + 1 < flat.length; i += 2) fields.push([flat[i]!, flat[i + 1]!]);
  // A dead letter is the original entry plus `dlq:*` fields; it reads as the original did.
  const dlq = stream.endsWith(':dlq');
  const wire = Object.fromEntries(fields.filter(([key]) => !(dlq && key.startsWith('dlq:'))));
  const entryId = (dlq && fields.find(([key]) => key === 'dlq:id')?.[1]) || id;
  const result = definition.schema.safeParse(Object.assign({}, definition.defaults?.(entryId), wire));
  if (!result.success) {
    const problem = result.error.issues
      .map((issue) => `${issue.path.join('.') || '(entry)'}: ${issue.message}`)
      .join('; ');
    const orderId = wire.orderId;
    return {
      type: 'malformed',
      orderId,
      rest: fields.filter(([key]) => !(orderId !== undefined && key === 'orderId')),
      problem,
    };
  }
  const event = result.data as Record<string, unknown>;
  const type = typeof event.type === 'string' ? event.type : '-';
  const orderId = typeof event.orderId === 'string' ? event.orderId : undefined;
  return { type, orderId, rest: fields.filter(([key]) => key !== 'type' && key !== 'orderId') };
}

/** Who holds a pending entry, as XPENDING reports it. */
interface Pending {
  consumer: string;
  idleMs: number;
  deliveries: number;
}

interface Style {
  colors: boolean;
  /** Stream names are padded to this width, so the columns after them line up. */
  streamWidth: number;
  now: Date;
}

/**
 * One line: `06:00:01.123 order-events 1795312027109-0 order-created <orderId> userId=u1 ...`,
 * then `| invalid entry: <why>` for an entry that does not parse and `| <consumer> idle 12.3s,
 * 2 deliveries` for a pending one. Values from the stream are quoted when they are not one plain
 * word, so a line is always one line.
 */
function line(
  definition: StreamDefinition,
  stream: string,
  id: string,
  flat: string[] | null,
  style: Style,
  pending?: Pending,
): string {
  const paint = (code: number, text: string) => (style.colors ? `\u001b[${code}m${text}\u001b[0m` : text);
  const { type, orderId, rest, problem } = read(definition, stream, id, flat);
  const parts = [
    paint(90, clock(id, style.now)),
    paint(36, stream.padEnd(style.streamWidth)),
    paint(90, id),
    paint(type === 'malformed' || type === 'deleted' ? 31 : 32, quote(type)),
    paint(33, orderId === undefined ? '-' : quote(orderId)),
    ...rest.map(([key, value]) => `${paint(90, `${quote(key)}=`)}${quote(value)}`),
  ];
  if (problem !== undefined) parts.push(paint(31, `| invalid entry: ${visible(problem)}`));
  if (pending) {
    const times = pending.deliveries === 1 ? 'delivery' : 'deliveries';
    parts.push(
      paint(
        35,
        `| ${quote(pending.consumer)} idle ${duration(pending.idleMs)}, ${pending.deliveries} ${times}`,
      ),
    );
  }
  return parts.join(' ');
}

/**
 * Where `--from`'s value starts: the exclusive XREAD cursor, or how far back from Redis's clock.
 * Throws `RangeError` saying what is wrong with it.
 */
function startOf(from: string): { cursor: string } | { agoMs: number } {
  const ago = /^(\d+)(ms|s|m|h|d)$/.exec(from);
  if (ago) {
    const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[ago[2]!]!;
    return { agoMs: Number(ago[1]) * unit };
  }
  const id = /^(\d+)(?:-(\d+))?$/.exec(from);
  if (id) {
    const [ms, seq] = [BigInt(id[1]!), BigInt(id[2] ?? 0)];
    if (ms > MAX_PART || seq > MAX_PART)
      throw new RangeError(`--from ${from} is past the last possible entry ID`);
    return { cursor: before(ms, seq) };
  }
  if (/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(from)) {
    // A date alone is midnight local time, like a date with a time and no offset.
    const ms = Date.parse(from.length === 10 ? `${from}T00:00` : from.replace(' ', 'T'));
    if (!Number.isNaN(ms)) return { cursor: before(BigInt(Math.max(0, ms)), 0n) };
  }
  throw new RangeError(
    `--from must be an entry ID (1795312027109-0), a time (2026-11-26T06:00:00Z) or a time ago (30s, 5m, 1h, 2d), got "${visible(from)}"`,
  );
}

/** The entry ID just before `<ms>-<seq>`: XREAD returns entries after its cursor. */
function before(ms: bigint, seq: bigint): string {
  if (seq > 0n) return `${ms}-${seq - 1n}`;
  return ms > 0n ? `${ms - 1n}-${MAX_PART}` : '0-0';
}

// ---- arguments ---------------------------------------------------------------------------------

let parsed;
try {
  parsed = parseArgs({
    allowPositionals: true,
    options: {
      from: { type: 'string' },
      group: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
      // Read by colorette (pino-pretty's isColorSupported) from argv itself; here so they parse.
      color: { type: 'boolean' },
      'no-color': { type: 'boolean' },
    },
  });
} catch (err) {
  // Node's hint on positionals that start with '-' means nothing here: a stream name never does.
  calledWrong((err as Error).message.replace(/\. To specify a positional argument[\s\S]*$/, ''));
}
const { values, positionals } = parsed;
if (values.help) {
  console.log(USAGE);
  process.exit(0);
}
for (const name of positionals)
  if (!KNOWN.has(name))
    calledWrong(`"${visible(name)}" is not a stream of the catalogue (${[...KNOWN.keys()].join(', ')})`);
if (values.from !== undefined && values.group !== undefined)
  calledWrong('--from and --group do not go together: --group shows what is pending now');
if (values.group === '') calledWrong('--group needs a group name');
let from: ReturnType<typeof startOf> | undefined;
try {
  from = values.from === undefined ? undefined : startOf(values.from);
} catch (err) {
  calledWrong((err as Error).message);
}
const named = positionals.length > 0;
const chosen = named ? [...new Set(positionals)] : streams.map((stream) => stream.name);
const style: Style = {
  // The same decision as `pnpm dev`: a terminal, unless NO_COLOR (or --no-color); FORCE_COLOR forces.
  colors: isColorSupported && !values['no-color'],
  streamWidth: Math.max(...chosen.map((name) => name.length)),
  now: new Date(),
};

// ---- Redis -------------------------------------------------------------------------------------

const url = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
let stopping = false;
let lastError: string | undefined;
/** For the commands before following: a Redis that cannot be reached fails them fast. */
const redis = new Redis(url, { maxRetriesPerRequest: 1, disconnectTimeout: DISCONNECT_MS });
// Errors are reported by their message alone: ioredis attaches the failed command, and for AUTH
// its arguments are the password.
redis.on('error', (err: Error) => (lastError = err.message));
/** The blocking XREAD, on a connection of its own that retries until Redis is back. */
let reader: Redis | undefined;

async function now(): Promise<number> {
  const [seconds, micros] = await redis.time();
  return Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
}

function stop(): void {
  stopping = true;
  reader?.disconnect();
  redis.disconnect();
  // Nothing should hold the process after that; if something does, it does not hold Ctrl-C.
  setTimeout(() => process.exit(0), 2_000).unref();
}
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
// A reader that went away (`pnpm tail | head`) ends the tail, quietly.
process.stdout.on('error', stop);

/** A stream or group named on the command line that is not there: its message, then exit 1. */
class Missing extends Error {}

/** Prints the entries `group` holds pending on the chosen streams, oldest first. */
async function showPending(group: string): Promise<void> {
  const held: { stream: string; id: string; pending: Pending }[] = [];
  const problems: string[] = [];
  const present: string[] = [];
  for (const stream of chosen) {
    if ((await redis.type(stream)) !== 'stream') {
      if (named) problems.push(`no stream ${stream}`);
      continue;
    }
    const groups = (await redis.xinfo('GROUPS', stream)) as string[][];
    if (!groups.some((info) => info[info.indexOf('name') + 1] === group)) {
      if (named) problems.push(`no group ${group} on stream ${stream}`);
      continue;
    }
    present.push(stream);
  }
  if (!named && present.length === 0) problems.push(`no group ${group} on any stream (${chosen.join(', ')})`);
  if (problems.length > 0) throw new Missing(problems.map(visible).join('\n'));
  for (const stream of present) {
    for (let start = '-'; ;) {
      const page = (await redis.xpending(stream, group, start, '+', BATCH)) as [
        string,
        string,
        number,
        number,
      ][];
      for (const [id, consumer, idleMs, deliveries] of page)
        held.push({ stream, id, pending: { consumer, idleMs, deliveries } });
      if (page.length < BATCH) break;
      start = `(${page.at(-1)![0]}`;
    }
  }
  if (held.length === 0) {
    // On stderr: stdout stays entry lines (or nothing) for whatever reads it.
    console.error(`nothing pending for group ${visible(group)} on ${present.join(', ')}`);
    return;
  }
  held.sort((a, b) => compareIds(a.id, b.id));
  const pipeline = redis.pipeline();
  for (const { stream, id } of held) pipeline.xrange(stream, id, id);
  const ranges = (await pipeline.exec())!;
  for (const [i, { stream, id, pending }] of held.entries()) {
    const [err, entries] = ranges[i]!;
    if (err) throw err;
    const fields = (entries as [string, string[]][])[0]?.[1] ?? null;
    console.log(line(KNOWN.get(stream)!, stream, id, fields, style, pending));
  }
}

/**
 * Follows the chosen streams from `cursors` (exclusive, one per stream) until stopped. Entries
 * of several streams print in ID order: what a round reads past the end of a stream whose batch
 * was full waits for the next round.
 */
async function follow(cursors: Map<string, string>): Promise<void> {
  reader = new Redis(url, {
    maxRetriesPerRequest: null,
    connectionName: 'pnpm-tail',
    disconnectTimeout: DISCONNECT_MS,
  });
  let down = false;
  reader.on('error', (err: Error) => (lastError = err.message));
  reader.on('close', () => {
    if (stopping || down) return;
    down = true;
    console.error('pnpm tail: lost the connection to Redis; retrying until it is back (Ctrl-C to stop)');
  });
  reader.on('ready', () => {
    if (!down) return;
    down = false;
    console.error('pnpm tail: Redis is back; following again');
  });
  while (!stopping) {
    const names = [...cursors.keys()];
    const reply = (await reader.xread(
      'COUNT',
      BATCH,
      'BLOCK',
      BLOCK_MS,
      'STREAMS',
      ...names,
      ...names.map((name) => cursors.get(name)!),
    )) as [string, [string, string[]][]][] | null;
    if (!reply) continue;
    let horizon: string | undefined;
    for (const [, entries] of reply)
      if (entries.length === BATCH && (!horizon || compareIds(entries.at(-1)![0], horizon) < 0))
        horizon = entries.at(-1)![0];
    const ready: { stream: string; id: string; fields: string[] }[] = [];
    for (const [stream, entries] of reply) {
      for (const [id, fields] of entries)
        if (!horizon || compareIds(id, horizon) <= 0) ready.push({ stream, id, fields });
      const last = entries.at(-1)![0];
      const upTo = horizon && compareIds(last, horizon) > 0 ? horizon : last;
      if (compareIds(upTo, cursors.get(stream)!) > 0) cursors.set(stream, upTo);
    }
    ready.sort((a, b) => compareIds(a.id, b.id));
    style.now = new Date();
    for (const { stream, id, fields } of ready)
      process.stdout.write(`${line(KNOWN.get(stream)!, stream, id, fields, style)}\n`);
  }
}

try {
  if (values.group !== undefined) await showPending(values.group);
  else {
    const cursors = new Map<string, string>();
    // A time ago is measured on Redis's clock, which gives entries their IDs.
    const start =
      from && 'agoMs' in from ? before(BigInt(Math.max(0, (await now()) - from.agoMs)), 0n) : from?.cursor;
    for (const stream of chosen) {
      // Without --from: after the last entry now. Not `$`, which is resolved anew by every XREAD
      // and would skip what arrives between two of them.
      const last = start ?? (await redis.xrevrange(stream, '+', '-', 'COUNT', 1))[0]?.[0] ?? '0-0';
      cursors.set(stream, last);
    }
    redis.disconnect();
    await follow(cursors);
  }
} catch (err) {
  if (!stopping) {
    const message = err instanceof Missing ? err.message : redisProblem(err as Error);
    console.error(message.replace(/^/gm, 'pnpm tail: '));
    process.exitCode = 1;
  }
} finally {
  reader?.disconnect();
  redis.disconnect();
}

/** One line on what went wrong with Redis, naming the server but never the password. */
function redisProblem(err: Error): string {
  let where = 'REDIS_URL';
  try {
    where = new URL(url).host || where;
  } catch {
    // Not a URL, and it might hold a password: name the variable instead.
  }
  const retried = err.name === 'MaxRetriesPerRequestError' || err.message === 'Connection is closed.';
  return `Redis at ${visible(where)}: ${visible((retried ? lastError : undefined) ?? err.message)}`;
}
