/*
 * The stream board: an Express router that shows streams, consumer groups and consumers live,
 * searches and replays dead letters, and follows one entity (an order) across the streams. Mount
 * it in any Express app (`app.use('/board', board.router)`), or run `pnpm board`. Its HTTP API is
 * described in api.ts; the page is public/, plain files served as they are.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import express, { Router, type NextFunction, type Request, type Response } from 'express';
import type { RedisClient } from '../connection.ts';
import { z } from 'zod';
import { dropDeadLetters, replayDeadLetters } from '../dead-letters.ts';
import { silentLogger, type Logger } from '../logger.ts';
import { defaultDeadLetterStream, partitionNames, type StreamDefinition } from '../stream.ts';
import type { Overview } from './api.ts';
import { startSampler, type Tick } from './sampler.ts';
import { allMatching, searchDeadLetters, type Search } from './search.ts';
import { timelineOf, type Lookup } from './timeline.ts';

export type * from './api.ts';
export type { Lookup } from './timeline.ts';

/** What the board follows besides streams: one kind of entity, such as an order. */
export interface BoardEntity {
  /** What it is called on the page: `order`. */
  readonly name: string;
  /** The field of an entry that names it (`orderId`): the dead-letter search matches on it. */
  readonly field: string;
  /**
   * What is known of one: its summary and the entries of its life (by stream and ID); undefined
   * when nothing is. Throw `BoardError` with 400 for an id that cannot be one.
   */
  readonly lookup?: (id: string) => Promise<Lookup | undefined>;
  /** Places one, for the page's form: the JSON body as sent, answered with a status and a body as is. */
  readonly place?: (body: unknown) => Promise<{ status: number; body: unknown }>;
}

/** Options of `createBoard`. */
export interface BoardOptions {
  /**
   * A request connection (`openRequestConnection`), as a Redis user allowed to read the streams
   * and groups, and for writes to replay and drop dead letters. The board does not close it.
   */
  readonly redis: RedisClient;
  /** The streams it shows, each with its dead letters at `${name}:dlq`. */
  readonly streams: readonly StreamDefinition[];
  /**
   * The token that writes (replay, discard, place) need, as `Authorization: Bearer <token>`.
   * Without one the board is read-only: writes are refused with 403.
   * @defaultValue none
   */
  readonly token?: string | undefined;
  /** The services' `/metrics` URLs, for the handlers' run times; rates and lag need only Redis. @defaultValue none */
  readonly metrics?: readonly { readonly name: string; readonly url: string }[];
  readonly entity?: BoardEntity;
  /** How often it reads Redis and the /metrics URLs, in ms. @defaultValue 1000 */
  readonly intervalMs?: number;
  /** How much history the charts get, in ms. @defaultValue 900000 (15 minutes) */
  readonly historyMs?: number;
  /** Where reads that fail and every write (replay, discard) are told. @defaultValue silent */
  readonly logger?: Logger;
}

/** A board: its router, and the ticking and live connections that `close()` ends. */
export interface Board {
  readonly router: Router;
  /** Stops reading Redis and ends every live page's event stream. Safe to call twice. */
  close(): Promise<void>;
}

/** A request the board refuses: answered with `status` and `{ error, field }`. */
export class BoardError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** "Replay all matching" and "discard all matching" act on at most this many dead letters per request. */
const ALL_MATCHING_LIMIT = 10_000;

const require = createRequire(import.meta.url);
const ASSETS: Record<string, { path: string; type: string }> = {
  'board.js': { path: fileURLToPath(new URL('public/board.js', import.meta.url)), type: 'text/javascript' },
  'board.css': { path: fileURLToPath(new URL('public/board.css', import.meta.url)), type: 'text/css' },
  'uPlot.iife.min.js': { path: require.resolve('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript' },
  'uPlot.min.css': { path: require.resolve('uplot/dist/uPlot.min.css'), type: 'text/css' },
};
const PAGE = fileURLToPath(new URL('public/index.html', import.meta.url));

const MAX_ID_PART = 2n ** 64n - 1n;
const ENTRY_ID = /^(\d{1,20})-(\d{1,20})$/;
const EntryId = z.string().refine((id) => {
  const parts = ENTRY_ID.exec(id);
  return parts !== null && BigInt(parts[1]!) <= MAX_ID_PART && BigInt(parts[2]!) <= MAX_ID_PART;
}, 'must be an entry ID such as 1795312027109-0');
const Time = z
  .string()
  .refine((text) => Date.parse(text) >= 0, 'must be a time such as 2026-11-27T06:00:00Z, after 1970')
  .transform((text) => Date.parse(text));
const Text = z.string().max(200, 'must be at most 200 characters');
const SearchFields = {
  stream: z.string('is required'),
  reason: Text.optional(),
  from: Time.optional(),
  to: Time.optional(),
};
const SearchQuery = z.object({
  ...SearchFields,
  after: EntryId.optional(),
  count: z.coerce
    .number('must be a whole number from 1 to 200')
    .int('must be a whole number from 1 to 200')
    .min(1, 'must be a whole number from 1 to 200')
    .max(200, 'must be a whole number from 1 to 200')
    .default(50),
});
const Action = z
  .object({
    ...SearchFields,
    ids: z
      .array(EntryId, 'must be a list of dead-letter IDs')
      .min(1, 'must name at least one')
      .max(1_000, 'must name at most 1000')
      .optional(),
    all: z.literal(true, 'must be true when given').optional(),
  })
  .refine((action) => (action.ids === undefined) !== (action.all === undefined), {
    message: 'give `ids` (dead-letter IDs) or `all: true` with a search, one of the two',
    path: ['ids'],
  });
const EntityId = Text.min(1, 'is required').regex(/^[^\p{Cc}]*$/u, 'must not hold control characters');

/** Parses `value` with `schema`, or throws a 400 naming the field at fault. */
function parse<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  const field = issue.path.join('.') || undefined;
  throw new BoardError(400, field ? `${field}: ${issue.message}` : issue.message, field);
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/**
 * A board over `options.streams`. It reads Redis once a tick (`intervalMs`) whoever is looking:
 * a few commands per stream and group, none that scans a stream.
 */
export function createBoard(options: BoardOptions): Board {
  const { redis, token, entity, logger = silentLogger } = options;
  const definitions = new Map(options.streams.map((stream) => [stream.name, stream]));
  const deadLetterStreams = new Map(
    options.streams.map((stream) => [stream.name, defaultDeadLetterStream(stream)]),
  );
  const sampler = startSampler({
    redis,
    streams: deadLetterStreams,
    partitions: new Map(
      options.streams
        .filter((stream) => (stream.partitions ?? 1) > 1)
        .map((stream) => [stream.name, partitionNames(stream)]),
    ),
    metrics: options.metrics ?? [],
    intervalMs: options.intervalMs ?? 1_000,
    historyMs: options.historyMs ?? 15 * 60 * 1_000,
    logger,
  });
  const entityField = entity?.field ?? '';
  const overviewOf = (tick: Tick): Overview => ({
    at: tick.at,
    redisUp: tick.redisUp,
    streams: tick.streams,
    writable: token !== undefined,
    features: {
      timeline: entity?.lookup !== undefined,
      place: entity?.place !== undefined,
      entity: entity?.name ?? '',
    },
    entityField,
    services: tick.services,
  });

  const streamOf = (name: string) => {
    const stream = definitions.get(name);
    if (!stream) throw new BoardError(404, `unknown stream "${name}"`, 'stream');
    return stream;
  };
  const searchOf = (
    parsed: { reason?: string | undefined; from?: number | undefined; to?: number | undefined },
    entityId: unknown,
  ): Search => {
    const id = entityField ? parse(Text.optional(), entityId) : undefined;
    return {
      ...(id ? { entity: { field: entityField, id } } : {}),
      ...(parsed.reason ? { reason: parsed.reason } : {}),
      ...(parsed.from === undefined ? {} : { fromMs: parsed.from }),
      ...(parsed.to === undefined ? {} : { toMs: parsed.to }),
    };
  };
  const authorize = (req: Request) => {
    if (token === undefined)
      throw new BoardError(
        403,
        'the board is read-only: start it with BOARD_TOKEN to replay, discard or place',
      );
    const header = req.get('authorization') ?? '';
    const given = header.startsWith('Bearer ') ? header.slice('Bearer '.length) : '';
    if (!timingSafeEqual(digest(given), digest(token)))
      throw new BoardError(401, 'the board token is missing or wrong');
  };
  /** The dead letters a write acts on: the IDs given, or every one matching the search. */
  const targetsOf = async (req: Request) => {
    const action = parse(Action, req.body);
    const stream = streamOf(action.stream);
    const deadLetterStream = deadLetterStreams.get(stream.name)!;
    if (action.ids !== undefined) return { stream, deadLetterStream, ids: action.ids, more: false };
    const body = req.body as Record<string, unknown>;
    const found = await allMatching(
      redis,
      stream.name,
      deadLetterStream,
      searchOf(action, body[entityField]),
      ALL_MATCHING_LIMIT,
    );
    return { stream, deadLetterStream, ...found };
  };

  const live = new Set<Response>();
  let closing: Promise<void> | undefined;
  const router = Router();
  router.use((_req, res, next) => {
    res.setHeader(
      'Content-Security-Policy',
      "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    );
    res.setHeader('X-Content-Type-Options', 'nosniff');
    res.setHeader('Referrer-Policy', 'no-referrer');
    next();
  });
  router.get('/', (req, res) => {
    // The page's links are relative: mounted at /board, it must be /board/.
    const [path, query] = req.originalUrl.split('?', 2);
    if (!path!.endsWith('/')) return res.redirect(308, `${path}/${query === undefined ? '' : `?${query}`}`);
    res.setHeader('Cache-Control', 'no-cache');
    res.sendFile(PAGE, { dotfiles: 'allow' });
  });
  router.get('/assets/:file', (req, res, next) => {
    const asset = Object.hasOwn(ASSETS, req.params.file) ? ASSETS[req.params.file] : undefined;
    if (!asset) return next(new BoardError(404, `no asset ${req.params.file}`));
    res.setHeader('Cache-Control', 'no-cache');
    // uPlot lies under node_modules/.pnpm/: a dot-directory, which send() refuses by default.
    res.type(asset.type).sendFile(asset.path, { dotfiles: 'allow' });
  });
  router.get('/api/overview', async (_req, res) => {
    res.json(overviewOf(await sampler.latest()));
  });
  router.get('/api/history', (_req, res) => {
    res.json({ samples: sampler.history() });
  });
  router.get('/api/events', (req, res) => {
    if (closing) throw new BoardError(503, 'the board is shutting down');
    res.writeHead(200, {
      'Content-Type': 'text/event-stream',
      'Cache-Control': 'no-cache, no-transform',
      'X-Accel-Buffering': 'no',
    });
    res.write('retry: 2000\n\n');
    live.add(res);
    const stop = sampler.listen((tick) => {
      // A page that stopped reading (a suspended laptop) skips ticks instead of piling them up here.
      if (res.writableNeedDrain) return;
      res.write(
        `event: sample\ndata: ${JSON.stringify({ overview: overviewOf(tick), sample: tick.sample })}\n\n`,
      );
    });
    req.on('close', () => {
      stop();
      live.delete(res);
    });
  });
  router.get('/api/dead-letters', async (req, res) => {
    const query = parse(SearchQuery, req.query);
    const stream = streamOf(query.stream);
    const search = searchOf(query, entityField ? req.query[entityField] : undefined);
    res.json(
      await searchDeadLetters(redis, stream.name, deadLetterStreams.get(stream.name)!, search, {
        count: query.count,
        ...(query.after ? { after: query.after } : {}),
      }),
    );
  });
  const json = express.json({ limit: '16kb' });
  // Each write: what it does to the dead letters named, how its answer calls them, what it counts.
  const writes = {
    replay: {
      answer: 'replayed',
      run: (stream: StreamDefinition, ids: string[], deadLetterStream: string) =>
        replayDeadLetters(redis, stream, ids, { deadLetterStream }),
      done: (result: { entryId?: string | undefined }) => result.entryId !== undefined,
    },
    discard: {
      answer: 'dropped',
      run: (stream: StreamDefinition, ids: string[], deadLetterStream: string) =>
        dropDeadLetters(redis, stream, ids, { deadLetterStream }),
      done: (result: { dropped?: boolean }) => result.dropped === true,
    },
  } as const;
  for (const [kind, { answer, run, done }] of Object.entries(writes)) {
    router.post(`/api/dead-letters/${kind}`, json, async (req, res) => {
      authorize(req);
      const { stream, deadLetterStream, ids, more } = await targetsOf(req);
      const results: { entryId?: string | undefined; dropped?: boolean }[] = await run(
        stream,
        ids,
        deadLetterStream,
      );
      // Every write is logged: who looks at the board can see what was put back or thrown away.
      logger.info(
        { stream: stream.name, [answer]: results.filter(done).length, asked: ids.length },
        `board: ${kind} of dead letters`,
      );
      res.json({ [answer]: results, more });
    });
  }
  router.get('/api/timeline/:id', async (req, res) => {
    if (!entity?.lookup) throw new BoardError(404, 'this board looks nothing up');
    const id = parse(EntityId, req.params.id);
    const [found, tick] = await Promise.all([entity.lookup(id), sampler.latest()]);
    const timeline = await timelineOf(redis, id, found, tick, entityField);
    if (!timeline) throw new BoardError(404, `no ${entity.name} ${id} found`, 'id');
    res.json(timeline);
  });
  router.post('/api/place', json, async (req, res) => {
    if (!entity?.place) throw new BoardError(404, 'this board places nothing');
    authorize(req);
    const { status, body } = await entity.place(req.body);
    res.status(status).json(body);
  });
  router.use((_req, _res, next) => next(new BoardError(404, 'not found')));
  router.use((err: unknown, _req: Request, res: Response, next: NextFunction) => {
    if (res.headersSent) return next(err);
    const { status, type } = (err ?? {}) as { status?: unknown; type?: unknown };
    if (err instanceof BoardError) {
      if (err.status === 401) res.setHeader('WWW-Authenticate', 'Bearer');
      res.status(err.status).json({ error: err.message, ...(err.field ? { field: err.field } : {}) });
    } else if (typeof status === 'number' && status >= 400 && status < 500 && typeof type !== 'string') {
      // send()'s own refusals (a range it cannot serve): their status says it all.
      res.status(status).json({ error: `${status === 416 ? 'range not satisfiable' : 'cannot serve that'}` });
    } else if (typeof status === 'number' && status >= 400 && status < 500 && typeof type === 'string') {
      // Express's body parser: malformed JSON, too large.
      res.status(status).json({
        error: `body: ${type === 'entity.too.large' ? 'too large (16 kB at most)' : 'malformed JSON'}`,
        field: 'body',
      });
    } else if (redis.status !== 'ready') {
      res.status(503).json({ error: 'redis cannot be reached: try again later' });
    } else {
      logger.error({ err }, 'board: unexpected error');
      res.status(500).json({ error: 'internal error' });
    }
  });

  return {
    router,
    close() {
      closing ??= (async () => {
        await sampler.close();
        for (const res of live) res.end();
        live.clear();
      })();
      return closing;
    },
  };
}
