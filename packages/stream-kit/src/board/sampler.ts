import type { RedisClient } from '../connection.ts';
import { inspectStreams, sumPartitions, type Inspection } from '../inspect.ts';
import type { Logger } from '../logger.ts';
import type { PartitionView, Sample, StreamView } from './api.ts';
import { addRunsBetween, parseRunTimes, quantilesOf, type Buckets } from './run-times.ts';

/*
 * The board's clock: every `intervalMs` it reads the streams and groups from Redis (a few
 * commands each, no scan) and scrapes the services' /metrics, keeps the rates of the last
 * `historyMs` for the charts, and tells the listeners (the open event streams). A page load and
 * every viewer read what the last tick read: Redis sees one reader however many people look.
 */

export interface SamplerOptions {
  readonly redis: RedisClient;
  /** Stream name → its dead-letter stream. */
  readonly streams: ReadonlyMap<string, string>;
  /** Stream name → its partitions' keys, for the partitioned ones: shown summed, and each. */
  readonly partitions?: ReadonlyMap<string, readonly string[]>;
  readonly metrics: readonly { readonly name: string; readonly url: string }[];
  readonly intervalMs: number;
  readonly historyMs: number;
  readonly logger: Logger;
}

/** What one tick read. */
export interface Tick {
  readonly at: number;
  readonly redisUp: boolean;
  readonly streams: readonly StreamView[];
  readonly services: readonly { readonly name: string; readonly up: boolean }[];
  /** The rates since the tick before; absent on the first tick. */
  readonly sample?: Sample;
}

export interface Sampler {
  /** The last tick, once there is one. */
  latest(): Promise<Tick>;
  /** The samples of the last `historyMs`, oldest first. */
  history(): readonly Sample[];
  /** Calls `listener` after every tick; returns the way to stop. */
  listen(listener: (tick: Tick) => void): () => void;
  /** Stops ticking; waits for a tick under way. Safe to call twice. */
  close(): Promise<void>;
}

export function startSampler(options: SamplerOptions): Sampler {
  const { redis, streams, metrics, intervalMs, historyMs, logger } = options;
  const partitions: ReadonlyMap<string, readonly string[]> = options.partitions ?? new Map();
  const inspected = new Map([...streams].map(([name, deadLetters]) => [name, new Set([deadLetters])]));
  for (const names of partitions.values()) for (const name of names) inspected.set(name, new Set());
  /** A read with each partitioned stream summed over its partitions, and the partitions apart. */
  const merge = (read: Inspection) => {
    const byKey = new Map(read.streams.map((state) => [state.stream, state]));
    const parts = new Map<string, PartitionView[]>();
    const states = [...streams.keys()].map((name) => {
      const names = partitions.get(name);
      if (!names) return byKey.get(name)!;
      const states = names.map((key) => byKey.get(key)!);
      parts.set(
        name,
        states.map((state) => ({
          name: state.stream,
          length: state.length,
          groups: state.groups.map(({ group, lag, pending }) => ({ name: group, lag, pending })),
        })),
      );
      return sumPartitions(byKey.get(name)!, states);
    });
    return { inspection: { at: read.at, streams: states }, parts };
  };
  const listeners = new Set<(tick: Tick) => void>();
  const samples: Sample[] = [];
  let previous: { inspection: Inspection; scrapes: (Buckets | undefined)[] } | undefined;
  let last: Tick | undefined;
  let first: (tick: Tick) => void = () => {};
  const firstTick = new Promise<Tick>((resolve) => (first = resolve));
  let failing = false;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;

  async function scrape(url: string): Promise<Buckets | undefined> {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(Math.min(intervalMs, 2_000)) });
      if (res.ok) return parseRunTimes(await res.text());
      await res.body?.cancel();
      return undefined;
    } catch {
      return undefined;
    }
  }

  async function tick(): Promise<void> {
    const [read, scrapes] = await Promise.all([
      inspectStreams(redis, inspected, { detail: true }).then(
        (read) => {
          if (failing) logger.info({}, 'board: reading redis again');
          failing = false;
          return merge(read);
        },
        (err: unknown) => {
          if (!failing) logger.warn({ err }, 'board: cannot read the streams from redis');
          failing = true;
          return undefined;
        },
      ),
      Promise.all(metrics.map(({ url }) => scrape(url))),
    ]);
    const services = metrics.map(({ name }, i) => ({ name, up: scrapes[i] !== undefined }));
    if (!read) {
      last = { at: Date.now(), redisUp: false, streams: last?.streams ?? [], services };
    } else {
      const { inspection, parts } = read;
      const sample = previous && sampleBetween(previous, { inspection, scrapes });
      if (sample) {
        samples.push(sample);
        while (samples.length > 0 && samples[0]!.at < sample.at - historyMs) samples.shift();
      }
      previous = { inspection, scrapes };
      last = {
        at: inspection.at,
        redisUp: true,
        streams: inspection.streams.map((state) =>
          view(state, streams.get(state.stream)!, parts.get(state.stream)),
        ),
        services,
        ...(sample ? { sample } : {}),
      };
    }
    first(last);
    for (const listener of listeners) listener(last);
  }

  let running: Promise<void> = Promise.resolve();
  const loop = () => {
    running = tick()
      .catch((err: unknown) => logger.error({ err }, 'board: tick failed'))
      .finally(() => {
        if (!closed) timer = setTimeout(loop, intervalMs);
      });
  };
  loop();

  let closing: Promise<void> | undefined;
  return {
    latest: () => (last ? Promise.resolve(last) : firstTick),
    history: () => samples,
    listen(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    close() {
      closing ??= (async () => {
        closed = true;
        clearTimeout(timer);
        listeners.clear();
        await running;
      })();
      return closing;
    },
  };
}

function view(
  state: Inspection['streams'][number],
  deadLetterStream: string,
  partitions: readonly PartitionView[] | undefined,
): StreamView {
  return {
    ...(partitions ? { partitions } : {}),
    name: state.stream,
    length: state.length,
    lastId: state.lastId ?? '0-0',
    entriesAdded: state.entriesAdded ?? 0,
    deadLetterStream,
    deadLetters: state.deadLetters,
    groups: state.groups.map((group) => ({
      name: group.group,
      lag: group.lag,
      lagSeconds: group.lagSeconds,
      pending: group.pending,
      oldestPendingSeconds: group.oldestPendingSeconds,
      lastDeliveredId: group.lastDeliveredId,
      entriesRead: group.entriesRead,
      consumers: group.consumers ?? [],
    })),
  };
}

type Reading = { inspection: Inspection; scrapes: (Buckets | undefined)[] };

/** The rates between two readings; undefined when no time passed on Redis's clock. */
function sampleBetween(before: Reading, after: Reading): Sample | undefined {
  const seconds = (after.inspection.at - before.inspection.at) / 1_000;
  if (seconds <= 0) return undefined;
  const rate = (now: number, then: number | undefined) =>
    then === undefined ? 0 : Math.max(0, now - then) / seconds;
  const earlier = new Map(before.inspection.streams.map((state) => [state.stream, state]));
  const added: Sample['added'] = {};
  const groups: Record<string, Sample['groups'][string]> = {};
  for (const state of after.inspection.streams) {
    const then = earlier.get(state.stream);
    added[state.stream] = rate(state.entriesAdded ?? 0, then?.entriesAdded);
    const thenGroups = new Map(then?.groups.map((group) => [group.group, group]));
    for (const group of state.groups) {
      const old = thenGroups.get(group.group);
      // Handled: read by the group and no longer pending (acked, or dead-lettered then acked). A
      // group made on an empty stream has no entries-read until its first read: it has read none.
      const handled = (g: typeof group) => {
        const read = g.entriesRead ?? (g.lastDeliveredId === '0-0' ? 0 : undefined);
        return read === undefined ? undefined : read - g.pending;
      };
      const now = handled(group);
      groups[`${state.stream}/${group.group}`] = {
        handled: now === undefined ? 0 : rate(now, old && handled(old)),
        lag: group.lag,
        lagSeconds: group.lagSeconds,
        pending: group.pending,
      };
    }
  }
  const runs: Buckets = new Map();
  after.scrapes.forEach((scrape, i) => {
    const earlierScrape = before.scrapes[i];
    if (scrape && earlierScrape) addRunsBetween(runs, earlierScrape, scrape);
  });
  return { at: after.inspection.at, added, groups, handlers: quantilesOf(runs) };
}
