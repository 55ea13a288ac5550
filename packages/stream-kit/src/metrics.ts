/**
 * What stream-kit reports as it works, when `subscribe()` or `createPublisher()` is given
 * `metrics`: the counts behind the `messaging_*` metrics. `createMetrics`
 * (`@msa/stream-kit/service`) implements it on prom-client; the messaging API itself needs no
 * metrics library. Unset, nothing is counted or timed.
 *
 * An interface of plain calls rather than prom-client's own metrics: a subscription reports every
 * entry it handles, and a labelled prom-client histogram costs about half a microsecond an
 * observation, a tenth of what a no-op delivery costs in all (see README, Benchmarks).
 */
export interface MessagingMetrics {
  /**
   * A subscription starts: each run of its handler is reported to the meter answered. Called once
   * per subscription; subscriptions of the same stream and group may share one meter.
   */
  consumer(subscription: ConsumerIdentity): ConsumerMeter;
  /** `count` events were appended to `stream`. */
  sent(stream: string, count: number): void;
}

/** What a subscription consumes, as its meter is asked for. */
export interface ConsumerIdentity {
  readonly stream: string;
  readonly group: string;
  /** Where its dead letters go (`deadLetterStream`). */
  readonly deadLetterStream: string;
  /** The keys of its partitions (`<stream>:{0}` …), when the stream is partitioned. */
  readonly partitions?: readonly string[];
}

/**
 * How a run of the handler ended: its entry acked (the handler resolved, or acked it in its own
 * script), left pending for another run (it threw; also `RetryLaterError`), or dead-lettered.
 * Runs that Redis's trouble cut short are not reported: they are not the entry's doing, and the
 * entry runs again.
 */
export type ConsumeOutcome = 'acked' | 'retried' | 'dead-lettered';

export interface ConsumerMeter {
  /**
   * One run of the handler ended with `outcome` after `seconds` (the entry's checks, its handler
   * and its dead letter, if any); `latencySeconds`: from the time in the entry's ID (when Redis
   * stored it) to now, on this host's clock.
   */
  processed(outcome: ConsumeOutcome, seconds: number, latencySeconds: number): void;
}
