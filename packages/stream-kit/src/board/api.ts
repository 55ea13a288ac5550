/*
 * The board's HTTP API, as the page (public/board.js) and other clients read it. Every path is
 * relative to where the router is mounted. Answers are JSON; an error is `{ error, field? }` with
 * 400 (bad input; `field` names it), 401 (a write without the right token), 403 (a write on a
 * read-only board), 404 (unknown stream or order) or 503 (Redis cannot be reached).
 *
 *   GET  /api/overview                   Overview: the state now
 *   GET  /api/history                    { samples: Sample[] }: the last 15 minutes, oldest first
 *   GET  /api/events                     server-sent events: `sample` with { overview, sample } each tick
 *   GET  /api/dead-letters?stream=S[&orderId=..][&reason=..][&from=ISO][&to=ISO][&after=ID][&count=N]
 *                                        DeadLetterPage
 *   POST /api/dead-letters/replay        { stream, ids } or { stream, all: true, ...the search } → { replayed: { id, entryId? }[], more }
 *   POST /api/dead-letters/discard       { stream, ids } or { stream, all: true, ...the search } → { dropped: { id, dropped }[], more }
 *                                        (`more`: "all" stopped after reading 10,000 dead letters; send it again for the rest)
 *   GET  /api/timeline/:id               Timeline (404 when neither the lookup nor a stream knows the id)
 *   POST /api/place                      the form's body, passed to the `place` option → its status and body
 *
 * Writes (POST) need `Authorization: Bearer <token>` when the board has a token, and are refused
 * (403) when it has none.
 */

/** A consumer of a group, as XINFO CONSUMERS tells it. */
export interface ConsumerView {
  readonly name: string;
  /** Entries it holds pending. */
  readonly pending: number;
  /** Since its last attempted read, in ms. */
  readonly idleMs: number;
  /** Since its last successful read, in ms (Redis 7.2+; otherwise the same as idleMs). */
  readonly inactiveMs: number;
}

/** A consumer group of a stream. */
export interface GroupView {
  readonly name: string;
  /** Entries not yet delivered to the group; null when Redis cannot tell. */
  readonly lag: number | null;
  /** Age of the oldest entry not yet delivered, in seconds; 0 when none waits. */
  readonly lagSeconds: number;
  /** Entries delivered and not acked. */
  readonly pending: number;
  /** Age of the oldest pending entry, in seconds; 0 when none is. */
  readonly oldestPendingSeconds: number;
  readonly lastDeliveredId: string;
  /** Entries read by the group since it was created (Redis's `entries-read`); null when unknown. */
  readonly entriesRead: number | null;
  readonly consumers: readonly ConsumerView[];
}

/** A stream the board shows, with its groups. */
export interface StreamView {
  readonly name: string;
  readonly length: number;
  /** The last entry's ID, `0-0` when none was ever added. */
  readonly lastId: string;
  /** Entries ever added (Redis's `entries-added`). */
  readonly entriesAdded: number;
  readonly deadLetterStream: string;
  readonly deadLetters: number;
  /** Summed over its partitions, for a partitioned stream. */
  readonly groups: readonly GroupView[];
  /** Each partition of a partitioned stream (`<name>:{k}`), with its groups' lag and pending. */
  readonly partitions?: readonly PartitionView[];
}

/** One partition of a partitioned stream, at one read. */
export interface PartitionView {
  readonly name: string;
  readonly length: number;
  readonly groups: readonly {
    readonly name: string;
    readonly lag: number | null;
    readonly pending: number;
  }[];
}

/** What `GET /api/overview` answers and each `sample` event carries as `overview`. */
export interface Overview {
  /** When it was read, in ms since the epoch, on Redis's clock. */
  readonly at: number;
  /** False when the last read of Redis failed: `streams` is then the last state read, or empty. */
  readonly redisUp: boolean;
  readonly streams: readonly StreamView[];
  /** Whether writes are possible (the board has a token); they still need it. */
  readonly writable: boolean;
  /** What the board was given: a timeline lookup (`entity` names what it looks up), a place form. */
  readonly features: { readonly timeline: boolean; readonly place: boolean; readonly entity: string };
  /** The field of an entry that names the entity (`orderId`), for searching dead letters. */
  readonly entityField: string;
  /** Each service's /metrics as the last tick scraped it: up or not. */
  readonly services: readonly { readonly name: string; readonly up: boolean }[];
}

/** One tick's figures: rates over the interval since the tick before. */
export interface Sample {
  /** ms since the epoch. */
  readonly at: number;
  /** By stream name: entries added per second. */
  readonly added: Record<string, number>;
  /** By `stream/group`: entries handled (acked or dead-lettered) per second, lag, pending. */
  readonly groups: Record<
    string,
    {
      readonly handled: number;
      readonly lag: number | null;
      readonly lagSeconds: number;
      readonly pending: number;
    }
  >;
  /** By `stream/group`: handler run time p50 and p99 in seconds over the interval, from the services' /metrics; absent when no run was counted. */
  readonly handlers: Record<string, { readonly p50: number; readonly p99: number }>;
}

/** A dead letter as the board lists it. */
export interface DeadLetterView {
  readonly id: string;
  readonly stream: string;
  readonly entryId: string;
  readonly group: string;
  readonly consumer: string;
  readonly deliveries: number;
  readonly reason: string;
  /** ms since the epoch, from its ID: when it was dead-lettered. */
  readonly at: number;
  readonly fields: Record<string, string>;
}

/** A page of a search of one dead-letter stream, oldest first. */
export interface DeadLetterPage {
  readonly letters: readonly DeadLetterView[];
  /** Pass as `after` for the next page; absent when the search reached the end. */
  readonly next?: string;
  /** Dead letters in the stream in all. */
  readonly total: number;
}

/** One entry of an entity's life, and where each group of its stream is with it. */
export interface TimelineEntry {
  readonly stream: string;
  readonly entryId: string;
  readonly at: number;
  /** The entry's fields; absent when retention has trimmed it away. */
  readonly fields?: Record<string, string>;
  /** The status the entity moved to with it, as the lookup says. */
  readonly status?: string;
  readonly event?: string;
  /** handled: acked; pending: delivered, held by `consumer`; waiting: not yet delivered. */
  readonly groups: readonly {
    readonly group: string;
    readonly state: 'handled' | 'pending' | 'waiting';
    readonly consumer?: string;
    readonly deliveries?: number;
  }[];
}

/** `GET /api/timeline/:id`. */
export interface Timeline {
  readonly id: string;
  /** The lookup's answer (for an order: status, userId, productId, price...), absent when it knows nothing of it. */
  readonly summary?: Record<string, unknown>;
  readonly entries: readonly TimelineEntry[];
  readonly deadLetters: readonly DeadLetterView[];
}
