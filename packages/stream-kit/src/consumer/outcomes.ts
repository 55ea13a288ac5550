import { isRedisFault } from '../connection.ts';
import { DeadLetterError, writeDeadLetter } from '../dead-letters.ts';
import type { AckBatcher } from './acks.ts';
import type { ConsumerContext } from './context.ts';
import type { Outcome } from './delivery.ts';
import type { LeaseKeeper } from './leases.ts';
import type { RetrySchedule } from './retry-policy.ts';
import type { RunCounts } from './runs.ts';

/** The parts of the loop an outcome changes. */
export interface OutcomeParts {
  readonly leases: LeaseKeeper;
  readonly acks: AckBatcher;
  readonly runs: RunCounts;
  readonly retries: RetrySchedule;
}

/**
 * Applies the outcome of a run (see `Delivery`): the ack (or none, when the handler acks in its
 * own script), the retry, the dead letter. The one place where an entry is done with.
 */
export class OutcomeApplier {
  constructor(
    private readonly ctx: ConsumerContext,
    private readonly parts: OutcomeParts,
    private readonly options: { readonly handlerAcks: boolean; readonly deadLetterStream: string },
  ) {}

  /** Acks the entry (unless the handler did, `handlerAcks`), or schedules its retry. */
  apply(id: string, run: number, outcome: Exclude<Outcome, { kind: 'dead-letter' }>) {
    const { leases, acks, runs, retries } = this.parts;
    if (outcome.kind === 'retry') {
      if (!outcome.counts) runs.uncount(id);
      retries.failed(id, run);
      return;
    }
    leases.untrack(id);
    retries.forget(id);
    if (!this.options.handlerAcks) acks.ack(id);
    if (!runs.inRedisFor(id)) return;
    // With handlerAcks the handler acked, or should have: the count goes only if it did (a count
    // deleted while the entry is pending would start again at 1, see FORGET_RUNS_IF_ACKED).
    if (this.options.handlerAcks) runs.forgetIfAcked(id);
    else acks.forgetRuns(runs.key(id));
  }

  /**
   * Copies the entry, with why it failed, to the dead-letter stream, then acks it. A crash between
   * the two leaves the entry pending, to be dead-lettered again: a duplicate dead letter, never a
   * lost one. If the dead-letter stream refuses the write for a reason of its own, the entry stays
   * pending and comes back; the run does not count.
   */
  async deadLetter(id: string, flat: Buffer[], run: number, reason: string) {
    const { redis, stream, group, consumer, log, where } = this.ctx;
    const deadLetterStream = this.options.deadLetterStream;
    try {
      // prettier-ignore
      await writeDeadLetter(redis, deadLetterStream, flat, {
        entryId: id, stream: stream.name, group, consumer, deliveries: run, reason,
      });
    } catch (err) {
      if (!(err instanceof DeadLetterError)) throw err;
      // Redis is in trouble: the loop pauses (see run()).
      if (isRedisFault(err.cause)) throw err.cause;
      // The entries behind it go on meanwhile.
      log.warn(
        { ...where, entryId: id, err: err.cause },
        'cannot write to the dead-letter stream; entry stays pending',
      );
      this.apply(id, run, { kind: 'retry', counts: false });
      return;
    }
    this.parts.leases.untrack(id);
    await redis.xack(stream.name, group, id);
    if (this.parts.runs.inRedisFor(id)) redis.del(this.parts.runs.key(id)).catch(() => {});
    this.parts.retries.forget(id);
    log.warn({ ...where, entryId: id, deadLetterStream, reason }, 'entry moved to the dead-letter stream');
  }
}
