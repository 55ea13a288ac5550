import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { RedisClient } from '../connection.ts';
import { silentLogger, type Logger } from '../logger.ts';
import { inspectStreams, sumPartitions, type Inspection } from '../inspect.ts';
import type { ConsumeOutcome, ConsumerIdentity, ConsumerMeter, MessagingMetrics } from '../metrics.ts';

/** Options of `createMetrics`. */
export interface MetricsOptions {
  /** A request connection (`openRequestConnection`): the stream gauges are read through it at scrape time. */
  redis: RedisClient;
  /** Where a failed read of the stream gauges is told (once, until one succeeds again). @defaultValue silent */
  logger?: Logger;
  /**
   * How long one read of the stream gauges serves scrapes, in ms: several Prometheus servers (or
   * a person with curl) scraping at once cost Redis one read.
   * @defaultValue 1000
   */
  cacheMs?: number;
}

/** A service's metrics: what `GET /metrics` answers, and the hooks that feed it. */
export interface ServiceMetrics extends MessagingMetrics {
  /** prom-client's registry: a service adds its own metrics here (`registers: [metrics.registry]`). */
  readonly registry: Registry;
  /**
   * Express middleware, to `app.use()` before every route: times each request
   * (`http_server_request_duration_seconds`, by method, route pattern and status).
   */
  readonly http: (req: HttpRequest, res: HttpResponse, next: () => void) => void;
  /** `GET /metrics`: the registry in Prometheus's text format. */
  readonly handler: (req: unknown, res: MetricsResponse) => Promise<void>;
}

/** What `http` reads of Express's request. */
interface HttpRequest {
  readonly method: string;
  readonly baseUrl: string;
  /** The route that matched, set by Express's router. */
  readonly route?: { readonly path?: unknown } | undefined;
}

interface HttpResponse {
  readonly statusCode: number;
  on(event: 'finish', listener: () => void): unknown;
}

interface MetricsResponse {
  setHeader(name: string, value: string): unknown;
  end(body: string): unknown;
}

/*
 * Buckets, in seconds. A handler's run: from a fraction of a millisecond (a script in Redis) to
 * seconds (a mail provider's API). An entry's latency: also the minutes and hours of a backlog.
 */
const PROCESS_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const LATENCY_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3_600];
const HTTP_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const OUTCOMES: readonly ConsumeOutcome[] = ['acked', 'retried', 'dead-lettered'];
/** Methods named in the label; any other is `other`, so a client cannot add series. */
const METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);

/** A histogram's counts as plain numbers: an observation is a few additions, no lookup by label. */
class Buckets {
  /** Per bucket, the observations above the bucket below and at most its bound (not cumulative). */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = new Float64Array(bounds.length);
  }

  observe(value: number) {
    const { bounds } = this;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i += 1;
    if (i < bounds.length) this.counts[i]! += 1;
    this.sum += value;
    this.count += 1;
  }
}

/** The counts of one stream and group, shared by its subscriptions in this process. */
class Meter implements ConsumerMeter {
  readonly runs: Record<ConsumeOutcome, Buckets> = {
    acked: new Buckets(PROCESS_BUCKETS),
    retried: new Buckets(PROCESS_BUCKETS),
    'dead-lettered': new Buckets(PROCESS_BUCKETS),
  };
  readonly latency = new Buckets(LATENCY_BUCKETS);

  constructor(readonly labels: { readonly stream: string; readonly group: string }) {}

  processed(outcome: ConsumeOutcome, seconds: number, latencySeconds: number) {
    this.runs[outcome].observe(seconds);
    // The latency of an entry done with; a retried one is not, and counts when it is.
    if (outcome !== 'retried') this.latency.observe(latencySeconds);
  }
}

interface Series {
  readonly labels: Record<string, string>;
  readonly buckets: Buckets;
}

/**
 * A histogram prom-client prints from counts kept elsewhere (`Buckets`): prom-client's own
 * `Histogram` takes observations one by one, at about half a microsecond each. Registered as a
 * metric through `registerMetric`, whose contract is `name`, `get()` and `reset()`.
 */
class CountedHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly series: () => Iterable<Series>,
  ) {}

  get() {
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    for (const { labels, buckets } of this.series()) {
      let cumulative = 0;
      buckets.bounds.forEach((le, i) => {
        cumulative += buckets.counts[i]!;
        values.push({ metricName: `${this.name}_bucket`, labels: { ...labels, le }, value: cumulative });
      });
      values.push({
        metricName: `${this.name}_bucket`,
        labels: { ...labels, le: '+Inf' },
        value: buckets.count,
      });
      values.push({ metricName: `${this.name}_sum`, labels, value: buckets.sum });
      values.push({ metricName: `${this.name}_count`, labels, value: buckets.count });
    }
    return Promise.resolve({
      name: this.name,
      help: this.help,
      type: this.type,
      aggregator: this.aggregator,
      values,
    });
  }

  reset() {}
}

/**
 * One read of the stream gauges: the streams (a partitioned one summed over its partitions), the
 * groups of all of them, and each partition's groups.
 */
interface Snapshot {
  streams: Inspection['streams'];
  groups: Inspection['streams'][number]['groups'];
  partitions: { stream: string; partition: string; groups: Inspection['streams'][number]['groups'] }[];
}

/**
 * The service's metrics on prom-client: Node's default process metrics, HTTP request durations
 * (`http` middleware), stream-kit's counts (pass the result as `metrics` to `subscribe()` and
 * `createPublisher()`), and, read from Redis at scrape time, the length, dead letters and the
 * state of every group of each stream this process consumes, its peers' groups included: a group
 * whose consumers are all down still shows its lag from here. Every label is bounded (stream,
 * group, outcome, route pattern, method, status): none per consumer, order, user or entry.
 */
export function createMetrics({
  redis,
  logger = silentLogger,
  cacheMs = 1_000,
}: MetricsOptions): ServiceMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });

  const meters = new Map<string, Meter>();
  /** The streams consumed here, and where their dead letters go. */
  const streams = new Map<string, Set<string>>();
  /** The partitions of those that are partitioned, by stream. */
  const partitionsOf = new Map<string, readonly string[]>();

  registry.registerMetric(
    new CountedHistogram(
      'messaging_process_duration_seconds',
      "Duration of one run of a handler (its entry's checks, the handler, a dead letter), by outcome.",
      function* () {
        for (const meter of meters.values())
          for (const outcome of OUTCOMES)
            yield { labels: { ...meter.labels, outcome }, buckets: meter.runs[outcome] };
      },
    ) as unknown as Histogram,
  );
  registry.registerMetric(
    new CountedHistogram(
      'stream_delivery_latency_seconds',
      "From the time in an entry's ID (when Redis stored it) to the end of the handler's run that acked or dead-lettered it.",
      function* () {
        for (const meter of meters.values()) yield { labels: { ...meter.labels }, buckets: meter.latency };
      },
    ) as unknown as Histogram,
  );
  new Counter({
    name: 'messaging_client_consumed_messages_total',
    help: 'Runs of a handler, by outcome: acked, retried (left pending for another run), dead-lettered.',
    labelNames: ['stream', 'group', 'outcome'],
    registers: [registry],
    collect() {
      this.reset();
      for (const meter of meters.values())
        for (const outcome of OUTCOMES) this.inc({ ...meter.labels, outcome }, meter.runs[outcome].count);
    },
  });
  const sent = new Counter({
    name: 'messaging_client_sent_messages_total',
    help: 'Events this process appended to a stream.',
    labelNames: ['stream'],
    registers: [registry],
  });

  const httpDuration = new Histogram({
    name: 'http_server_request_duration_seconds',
    help: 'Duration of HTTP requests, by method, route pattern (`unmatched` for none) and status.',
    labelNames: ['method', 'route', 'status_code'],
    buckets: HTTP_BUCKETS,
    registers: [registry],
  });

  // The stream gauges: one read of Redis serves every gauge of a scrape, and scrapes within cacheMs.
  let cached: { at: number; snapshot: Promise<Snapshot | undefined> } | undefined;
  let failing = false;
  const snapshot = () => {
    if (cached && Date.now() - cached.at < cacheMs) return cached.snapshot;
    // The partitions are read as streams of their own, then summed under their stream's name.
    const keys = new Map(streams);
    for (const names of partitionsOf.values()) for (const name of names) keys.set(name, new Set());
    const read = inspectStreams(redis, keys)
      .then(({ streams: read }): Snapshot => {
        const byKey = new Map(read.map((state) => [state.stream, state]));
        const partitions: Snapshot['partitions'] = [];
        const states = [...streams.keys()].map((stream) => {
          const names = partitionsOf.get(stream);
          if (!names) return byKey.get(stream)!;
          const parts = names.map((name) => byKey.get(name)!);
          for (const part of parts) partitions.push({ stream, partition: part.stream, groups: part.groups });
          return sumPartitions(byKey.get(stream)!, parts);
        });
        return { streams: states, groups: states.flatMap((state) => state.groups), partitions };
      })
      .then(
        (state) => {
          if (failing) logger.info({}, 'stream metrics are read from redis again');
          failing = false;
          return state;
        },
        (err: unknown) => {
          if (!failing) logger.warn({ err }, 'cannot read the stream metrics from redis; leaving them out');
          failing = true;
          return undefined;
        },
      );
    cached = { at: Date.now(), snapshot: read };
    return read;
  };
  /** A gauge set from the snapshot at each scrape; without one (Redis failing), it has no values. */
  const fromRedis = <L extends string>(
    name: string,
    help: string,
    labelNames: readonly L[],
    set: (gauge: Gauge<L>, state: Snapshot) => void,
  ) =>
    new Gauge<L>({
      name,
      help,
      labelNames,
      registers: [registry],
      async collect() {
        this.reset();
        const state = await snapshot();
        if (state) set(this, state);
      },
    });
  new Gauge({
    name: 'stream_redis_up',
    help: '1 if this scrape read the stream metrics from Redis, 0 if it could not (they are left out).',
    registers: [registry],
    async collect() {
      this.set((await snapshot()) ? 1 : 0);
    },
  });
  fromRedis('stream_length', 'Entries in the stream (XLEN).', ['stream'], (gauge, state) => {
    for (const { stream, length } of state.streams) gauge.set({ stream }, length);
  });
  fromRedis(
    'stream_dead_letters',
    "Entries in the stream's dead-letter streams (XLEN of each).",
    ['stream'],
    (gauge, state) => {
      for (const { stream, deadLetters } of state.streams) gauge.set({ stream }, deadLetters);
    },
  );
  fromRedis(
    'stream_group_lag',
    'Entries of the stream not yet delivered to the group, summed over its partitions (XINFO GROUPS lag; left out when Redis cannot tell).',
    ['stream', 'group'],
    (gauge, state) => {
      for (const { stream, group, lag } of state.groups) if (lag !== null) gauge.set({ stream, group }, lag);
    },
  );
  fromRedis(
    'stream_partition_group_lag',
    'Entries of one partition of a partitioned stream not yet delivered to the group (stream_group_lag sums them).',
    ['stream', 'partition', 'group'],
    (gauge, state) => {
      for (const { stream, partition, groups } of state.partitions)
        for (const { group, lag } of groups) if (lag !== null) gauge.set({ stream, partition, group }, lag);
    },
  );
  fromRedis(
    'stream_group_lag_seconds',
    "Age of the oldest entry not yet delivered to the group, by its ID, on Redis's clock; 0 when none waits.",
    ['stream', 'group'],
    (gauge, state) => {
      for (const { stream, group, lagSeconds } of state.groups) gauge.set({ stream, group }, lagSeconds);
    },
  );
  fromRedis(
    'stream_group_pending',
    'Entries delivered to the group and not acked yet (XPENDING).',
    ['stream', 'group'],
    (gauge, state) => {
      for (const { stream, group, pending } of state.groups) gauge.set({ stream, group }, pending);
    },
  );
  fromRedis(
    'stream_group_oldest_pending_seconds',
    "Age of the oldest entry the group holds pending, by its ID, on Redis's clock; 0 when none is.",
    ['stream', 'group'],
    (gauge, state) => {
      for (const { stream, group, oldestPendingSeconds } of state.groups)
        gauge.set({ stream, group }, oldestPendingSeconds);
    },
  );

  return {
    registry,
    consumer({ stream, group, deadLetterStream, partitions }: ConsumerIdentity): ConsumerMeter {
      if (partitions) partitionsOf.set(stream, partitions);
      let deadLetters = streams.get(stream);
      if (!deadLetters) streams.set(stream, (deadLetters = new Set()));
      deadLetters.add(deadLetterStream);
      const key = `${stream}\n${group}`;
      let meter = meters.get(key);
      if (!meter) meters.set(key, (meter = new Meter({ stream, group })));
      return meter;
    },
    sent(stream, count) {
      sent.inc({ stream }, count);
    },
    http(req, res, next) {
      const start = performance.now();
      res.on('finish', () => {
        const route = typeof req.route?.path === 'string' ? req.baseUrl + req.route.path : 'unmatched';
        const method = METHODS.has(req.method) ? req.method : 'other';
        httpDuration.observe(
          { method, route, status_code: res.statusCode },
          (performance.now() - start) / 1_000,
        );
      });
      next();
    },
    async handler(_req, res) {
      const body = await registry.metrics();
      res.setHeader('Content-Type', registry.contentType);
      res.end(body);
    },
  };
}
