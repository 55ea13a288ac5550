import { ServerClock } from '../clock.ts';
import {
  isNoGroupError,
  isRedisFault,
  onSocketClose,
  openReaderConnection,
  reconnectIfStalled,
} from '../connection.ts';
import type { ConsumeOutcome, ConsumerMeter } from '../metrics.ts';
import { idTimeMs, maxIdAheadMs, partitionNames, type StreamDefinition } from '../stream.ts';
import { AckBatcher } from './acks.ts';
import { consumerContext, type ConsumerContext, type Entry } from './context.ts';
import { Delivery, type Handler, type Outcome } from './delivery.ts';
import { GroupKeeper } from './group.ts';
import { LeaseKeeper } from './leases.ts';
import { Liveness, LIVENESS_CHECK_MS } from './liveness.ts';
import type { Settings } from './options.ts';
import { OutcomeApplier, type OutcomeParts } from './outcomes.ts';
import { runPool } from './pool.ts';
import { deleteIdleConsumers, redeliver, takeOverIdle, walkOwnPending } from './reclaim.ts';
import { pauseDelay, RetrySchedule } from './retry-policy.ts';
import { RunCounts } from './runs.ts';
import { nextStep, readsAhead, reclaimIntervalMs, type LoopState } from './schedule.ts';
import { sleep, StepGuard } from './waits.ts';

/**
 * The wall time `performance.now()` counts from: read once, as its getter costs about as much as a
 * clock read, and with metrics on a delivery would read it for every entry.
 */
const TIME_ORIGIN = performance.timeOrigin;

/** An outcome as metrics name it. */
const REPORTED: Record<Outcome['kind'], ConsumeOutcome> = {
  ack: 'acked',
  retry: 'retried',
  'dead-letter': 'dead-lettered',
};

/**
 * What a loop that reads one partition of a stream is told by the subscription that owns it (see
 * partitions.ts). Such a loop keeps its entries in order: a failed entry holds back everything
 * after it until it is done with, and it first takes over whatever the partition's earlier owners
 * left pending.
 */
export interface PartitionTenancy {
  /** The stream the partition belongs to: metrics count under its name. */
  readonly logical: StreamDefinition;
  /**
   * For how long (ms) the partition's lease is surely the subscription's: 0 once it may not be.
   * The loop starts nothing without it, and blocks no longer in a read.
   */
  heldForMs(): number;
}

/**
 * One subscription's loop: start, then round after round (see `nextStep`) read, handle and apply
 * each outcome, `concurrency` handlers at a time, until `close()`. The parts it drives (leases,
 * acks, run counts, retries, the group, reclaim) each see only the context they are given.
 */
export class ConsumerLoop {
  private readonly ctx: ConsumerContext;
  private readonly leases: LeaseKeeper;
  private readonly liveness: Liveness;
  private readonly acks: AckBatcher;
  private readonly runs: RunCounts;
  private readonly retries: RetrySchedule;
  private readonly group: GroupKeeper;
  private readonly delivery: Delivery;
  private readonly outcomes: OutcomeApplier;
  /** The parts an entry's run changes, as `OutcomeApplier` and `redeliver` see them. */
  private readonly parts: OutcomeParts;
  private readonly clock: ServerClock;
  /** Where each run's outcome is reported; none unless `metrics` was given. */
  private readonly meter: ConsumerMeter | undefined;
  private stopping = false;
  /** Aborted by close(): cuts the loop's waits short. */
  private readonly stop = new AbortController();
  private closing: Promise<void> | undefined;
  /** The runs under way (handler and outcome), by entry ID: what `close()` waits for. */
  private readonly handling = new Map<string, Promise<void>>();
  /** Abandoned once `close()` has dropped the connection: the loop stops waiting on Redis. */
  private readonly steps = new StepGuard();
  private readonly running: Promise<void>;
  /** A pass through our own pending list called for (see `LoopState`); `'all'` at start. */
  private ownPending: 'all' | 'due' | undefined = 'all';
  /** The next batch, asked for while this one is handled (see `readsAhead`). */
  private readAhead: Promise<Entry[]> | undefined;
  /** When the next reclaim pass is due; the first runs at start. */
  private claimAt = 0;
  /** When the group is next checked for dead consumers; the first check runs at start. */
  private livenessAt = 0;
  /** Whatever the partition's earlier owners left pending is still to be taken over (see `PartitionTenancy`). */
  private adopt: boolean;

  constructor(
    group: string,
    consumer: string,
    stream: StreamDefinition,
    handler: Handler<unknown>,
    private readonly settings: Settings,
    private readonly tenancy?: PartitionTenancy,
  ) {
    this.adopt = tenancy !== undefined;
    // Named so that CLIENT LIST tells which subscription a connection serves. The watchdog (see
    // `reconnectIfStalled`): the longest command, a blocked read, answers within BLOCK.
    const redis = openReaderConnection(
      settings.connection,
      settings.logger,
      `stream-kit:${group}:${consumer}`,
      settings.blockMs + Math.max(settings.blockMs, 1_000),
    );
    // A read that Redis served just as the connection died delivered entries whose reply never
    // came: they sit in our pending list, and only a pass through it finds them.
    onSocketClose(redis, () => (this.ownPending = 'all'));
    this.ctx = consumerContext(redis, stream, group, consumer, settings.logger);
    this.clock = new ServerClock(redis);
    this.leases = new LeaseKeeper(this.ctx, settings.claimIdleMs, (id) => this.handling.has(id));
    // After a gap in our liveness others may have taken our entries: start none of the entries
    // read before it (their first run is still to come), and go through what is still ours.
    this.liveness = new Liveness(this.ctx, settings, () => {
      for (const id of this.leases.dropUnstarted()) this.runs.uncount(id);
      this.ownPending = 'all';
    });
    this.acks = new AckBatcher(this.ctx);
    this.runs = new RunCounts(this.ctx);
    this.retries = new RetrySchedule(settings.retryDelayMs);
    this.group = new GroupKeeper(
      this.ctx,
      settings.startId,
      (ms) => this.sleep(ms),
      () => this.stopping,
    );
    this.delivery = new Delivery(
      this.ctx,
      handler,
      settings.maxDeliveries,
      this.clock,
      {
        epoch: () => this.liveness.epoch,
        holds: (id, epoch) => this.leases.holds(id) && this.liveness.holdsSince(epoch) && this.tenant(),
      },
      settings.tracer,
    );
    this.parts = { leases: this.leases, acks: this.acks, runs: this.runs, retries: this.retries };
    this.outcomes = new OutcomeApplier(this.ctx, this.parts, settings);
    const logical = tenancy?.logical ?? stream;
    this.meter = settings.metrics?.consumer({
      stream: logical.name,
      group,
      deadLetterStream: settings.deadLetterStream,
      ...(tenancy ? { partitions: partitionNames(logical) } : {}),
    });
    this.running = this.run();
  }

  close(): Promise<void> {
    return (this.closing ??= this.shutdown());
  }

  /**
   * Resolves once no handler runs: after `close()`, also those that outlived `closeTimeoutMs`
   * (never, for one that never ends). What a partition's owner waits for before it lets go.
   */
  handlersDone(): Promise<void> {
    return Promise.allSettled([...this.handling.values()]).then(() => {});
  }

  private async shutdown() {
    this.stopping = true;
    this.stop.abort();
    // Never started here: whoever takes them runs them for the first time.
    const handingBack = this.leases
      .handBackUnstarted()
      .then((ids) => ids.forEach((id) => this.runs.uncount(id)));
    // The leases are renewed on while the handlers under way finish (those entries alone), or
    // another consumer could take an entry and run it at the same time.
    const timeout = () => sleep(this.settings.closeTimeoutMs, { unref: true });
    const timedOut =
      this.handling.size > 0
        ? await Promise.race([
            Promise.allSettled(this.handling.values()).then(() => false),
            timeout().then(() => true),
          ])
        : false;
    this.leases.close();
    // The acks still queued for handlers that finished, and the runs that must not count (the
    // handed-back entries' included, so that whoever takes them over counts right): let them land
    // (a blocked read's answer comes first, within BLOCK) before the connection goes.
    const uncounting = handingBack.then(() => this.runs.writeBack(true));
    await Promise.race([Promise.allSettled([this.acks.settle(), uncounting]), timeout()]);
    // A blocked XREADGROUP only returns when its BLOCK expires; dropping the connection ends it
    // now. Whatever it would have returned stays in this consumer's pending list.
    this.ctx.redis.disconnect();
    this.steps.abandon();
    // Dead from now on: whatever a handler that outlived closeTimeoutMs holds is taken at once.
    await this.liveness.close();
    if (timedOut) {
      // The loop is still inside the handler and may never come out: do not wait for it.
      this.ctx.log.warn(
        { ...this.ctx.where, timeoutMs: this.settings.closeTimeoutMs },
        'handler still running at close; its entry stays pending',
      );
      return;
    }
    await this.running;
  }

  private async run() {
    const { log, where } = this.ctx;
    let failures = 0;
    await this.steps.run(this.start());
    while (!this.stopping) {
      try {
        await this.steps.run(this.step());
        if (failures > 0) {
          log.info({ ...where, failures }, 'consumer loop recovered');
          failures = 0;
        }
      } catch (err) {
        if (this.stopping) break;
        reconnectIfStalled(this.ctx.redis, err, log, where);
        // Entries read before the error may sit in our pending list unhandled: go through it,
        // in order. A batch read ahead is in that list too (Redis served the read before the
        // pass's XPENDING, on the same connection): handling it first would break the order.
        this.ownPending = 'all';
        // Its entries, if it brought any, were never started: their first run is still to come.
        // (Unless a gap in our liveness dropped them and took their run off already.)
        this.readAhead?.then(
          (entries) => entries.forEach(([id]) => this.leases.holds(id) && this.runs.uncount(id)),
          () => {},
        );
        this.readAhead = undefined;
        if (isNoGroupError(err)) {
          this.retries.clear();
          await this.steps.run(this.group.recreate());
          continue;
        }
        failures += 1;
        // The first failure of a run is a warning; repeats of it would only flood the log.
        log[failures === 1 ? 'warn' : 'debug'](
          { ...where, err, failures },
          isRedisFault(err)
            ? 'redis is failing or refusing work; pausing, and trying again with backoff (entries stay pending, nothing counts as a failed delivery)'
            : 'consumer loop failed; retrying',
        );
        await this.sleep(pauseDelay(failures));
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return sleep(ms, { signal: this.stop.signal });
  }

  private async start() {
    // Nothing is read before this consumer's mark is live (see `Liveness.ready`).
    await new Promise<void>((resolve) => {
      void this.liveness.ready.then(resolve);
      this.stop.signal.addEventListener('abort', () => resolve(), { once: true });
    });
    if (this.stopping) return;
    await this.group.ensure();
    // Where the group stands, in case it is lost before the first reclaim pass.
    await this.group.markRecreatePoint().catch(() => {});
  }

  /** Whether the partition this loop reads is still the subscription's (always, without partitions). */
  private tenant(): boolean {
    return this.tenancy === undefined || this.tenancy.heldForMs() > 0;
  }

  /**
   * Whether the loop keeps order (a partition's) and must start nothing more of what it holds now:
   * a failed entry waits for its retry, or an entry was skipped (the lease or the liveness mark
   * not surely ours) and waits for the pass through the pending list; whatever comes after either
   * must wait for it.
   */
  private holdsBack(): boolean {
    return (
      this.tenancy !== undefined &&
      (this.retries.nextAt !== 0 || this.ownPending !== undefined || !this.tenant() || this.liveness.lapsed())
    );
  }

  private state(): LoopState {
    return {
      holdNew: this.holdsBack(),
      readAhead: this.readAhead !== undefined,
      ownPending: this.ownPending,
      retryAt: this.retries.nextAt,
      claimAt: this.claimAt,
      livenessAt: this.livenessAt,
    };
  }

  private async step() {
    if (this.liveness.lapsed() || !this.tenant()) {
      // Others may be taking our entries for a dead consumer's right now: read and start nothing
      // until a renewal gets through (the gap callback then sends us through what is still ours).
      await this.sleep(LIVENESS_CHECK_MS / 4);
      return;
    }
    if (this.runs.hasUncounted) await this.runs.writeBack();
    if (this.adopt) {
      // The partition is ours now: what its earlier owners left pending comes first, in order.
      const { count } = this.settings;
      const runsKey = (id: string) => this.runs.key(id);
      await takeOverIdle(this.ctx, { claimIdleMs: 0, count, isStopping: () => this.stopping, runsKey });
      this.adopt = false;
      this.ownPending = 'all';
      return;
    }
    const step = nextStep(this.state(), Date.now(), this.settings.blockMs);
    switch (step.kind) {
      case 'read-ahead': {
        const next = this.readAhead!;
        this.readAhead = undefined;
        return this.handleNew(await next);
      }
      case 'own-pending':
        this.ownPending = undefined;
        if (step.retryTime) this.retries.taken();
        return walkOwnPending(
          this.ctx,
          {
            mode: step.mode,
            count: this.settings.count,
            concurrency: this.settings.concurrency,
            ordered: this.tenancy !== undefined,
            retries: this.retries,
            // Lapsed: what it would claim may be another consumer's by now; the gap sends it back.
            isStopping: () => this.stopping || this.liveness.lapsed() || this.holdsBack(),
          },
          (id, idleMs) =>
            redeliver(this.ctx, this.parts, id, idleMs, (fields, run) =>
              this.handleEntry(id, fields, run, true),
            ),
          () => this.acks.flush(),
        );
      case 'take-from-dead': {
        // Set first: a check that fails (Redis refusing it) must not come before every read.
        this.livenessAt = Date.now() + LIVENESS_CHECK_MS;
        const { ids, from, more } = await this.liveness.takeFromDead(this.settings.count);
        // A full call: more may wait, take them at the next step.
        if (more) this.livenessAt = 0;
        if (ids.length === 0) return;
        this.retries.dueNow(ids);
        this.ctx.log.info(
          { ...this.ctx.where, count: ids.length, from },
          'took over the entries of consumers that died (their liveness marks lapsed)',
        );
        return;
      }
      case 'reclaim': {
        const { claimIdleMs, count, deleteIdleConsumersAfterMs } = this.settings;
        const isStopping = () => this.stopping;
        const runsKey = (id: string) => this.runs.key(id);
        if ((await takeOverIdle(this.ctx, { claimIdleMs, count, isStopping, runsKey })) > 0)
          this.ownPending ??= 'due';
        await deleteIdleConsumers(this.ctx, deleteIdleConsumersAfterMs);
        await this.group.markRecreatePoint();
        this.claimAt = Date.now() + reclaimIntervalMs(claimIdleMs);
        return;
      }
      case 'read':
        // A partition's read is not served after its lease may have passed to another consumer,
        // which would take over its entries behind newer ones.
        return this.handleNew(
          await this.read(
            this.tenancy ? Math.max(1, Math.min(step.blockMs, this.tenancy.heldForMs())) : step.blockMs,
          ),
        );
      case 'pause':
        return this.sleep(step.ms);
    }
  }

  /**
   * Reads up to `count` new entries, waiting up to `blockMs` for the first when given. They are
   * ours from then on: their leases kept until handled.
   */
  private async read(blockMs: number | undefined): Promise<Entry[]> {
    const { redis, stream, group, consumer } = this.ctx;
    const block = blockMs === undefined ? [] : ['BLOCK', blockMs];
    // prettier-ignore
    const reply = await redis.callBuffer(
      'XREADGROUP', 'GROUP', group, consumer, 'COUNT', this.settings.count, ...block, 'STREAMS', stream.name, '>',
    );
    const streams = reply as [stream: Buffer, entries: [Buffer, Buffer[]][]][] | null;
    const entries: Entry[] = (streams?.[0]?.[1] ?? []).map(([id, fields]) => [id.toString(), fields]);
    const readAt = Date.now();
    for (const [id] of entries) this.leases.track(id, readAt);
    return entries;
  }

  /** Handles a batch of new entries, reading the next one ahead meanwhile when `readsAhead` says so. */
  private async handleNew(entries: Entry[]) {
    if (
      !this.stopping &&
      !this.liveness.lapsed() &&
      readsAhead(this.state(), Date.now(), entries.length, this.settings.count)
    ) {
      this.readAhead = this.read(undefined);
      this.readAhead.catch(() => {}); // awaited at the next step
    }
    await this.handleBatch(entries);
  }

  /**
   * Handles freshly read entries through the worker pool, `concurrency` at a time, skipping any
   * whose lease another consumer took meanwhile. A Redis error (a dead letter not acked, say)
   * stops the batch; the loop then goes through the pending list.
   */
  private async handleBatch(entries: Entry[]) {
    // IDs grow along a batch: if its last is not ahead of the clock, none is (one check a batch).
    const last = entries.at(-1);
    const mayBeAhead = last !== undefined && this.clock.looksAhead(last[0], maxIdAheadMs(this.ctx.stream));
    const { started, error } = await runPool(
      entries,
      this.settings.concurrency,
      ([id, fields]) => (this.leases.holds(id) ? this.handleEntry(id, fields, 1, mayBeAhead) : undefined),
      // Held back behind a failed entry: the rest come after its retry, through the pending list.
      () => this.stopping || this.holdsBack(),
    );
    for (const [id] of entries) this.leases.untrack(id);
    // The entries never started come back through the pending list, where their first real run
    // must count as the first. (At close, handing them back took their runs off already.)
    if (error !== undefined || !this.stopping)
      for (const [id] of entries.slice(started)) this.runs.uncount(id);
    if (error !== undefined) throw error;
    await this.acks.flush();
  }

  /**
   * Runs the handler for entry `id`, run number `run`, and applies the outcome. A Redis fault
   * (from the handler or from dead-lettering) is thrown on: the loop pauses and goes through its
   * pending list once Redis works again; the run does not count.
   */
  private handleEntry(
    id: string,
    flat: Buffer[],
    run: number,
    mayBeAhead: boolean,
  ): Promise<void> | undefined {
    // close() may have come while we were reading or claiming: its connection is gone, so a
    // handler started now could not be acked and its entry would be handled again elsewhere.
    if (this.stopping) return;
    if (this.liveness.lapsed() || !this.tenant()) {
      // Paused long enough (SIGSTOP, a long GC pause, Redis stalled) that others may have taken
      // this entry for a dead consumer's: start nothing until a renewal gets through, then go
      // through what is still ours (see the gap callback). This run never happened; untracked, so
      // that the gap callback does not take it off twice.
      this.leases.untrack(id);
      this.runs.uncount(id);
      this.ownPending = 'all';
      return;
    }
    // Not async itself: one promise and one suspended frame an entry fewer (deliver takes its
    // run off `handling` when it ends, and always ends after this, past its first await).
    const handling = this.deliver(id, flat, run, mayBeAhead);
    this.handling.set(id, handling);
    return handling;
  }

  private async deliver(id: string, flat: Buffer[], run: number, mayBeAhead: boolean) {
    // Timed only when reported: without metrics, a delivery reads no clock. One clock read at
    // each end: the end's also gives the wall time the entry's latency is taken at.
    const started = this.meter ? performance.now() : 0;
    try {
      const outcome = await this.delivery.run(id, flat, run, mayBeAhead);
      // Only a dead letter waits for Redis; an ack is queued (see AckBatcher).
      if (outcome.kind === 'dead-letter') await this.outcomes.deadLetter(id, flat, run, outcome.reason);
      else this.outcomes.apply(id, run, outcome);
      if (this.meter) {
        const ended = performance.now();
        const latencyMs = TIME_ORIGIN + ended - idTimeMs(id);
        this.meter.processed(
          REPORTED[outcome.kind],
          (ended - started) / 1_000,
          Math.max(0, latencyMs) / 1_000,
        );
      }
    } catch (err) {
      if (isRedisFault(err)) this.runs.uncount(id);
      throw err;
    } finally {
      this.handling.delete(id);
    }
  }
}
