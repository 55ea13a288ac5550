import type { Span, Tracer } from '@opentelemetry/api';
import type { ServerClock } from '../clock.ts';
import { isRedisFault } from '../connection.ts';
import { NonRetryableError, RetryLaterError } from '../errors.ts';
import { decode, maxIdAheadMs, textFields } from '../stream.ts';
import { endProcess, runIn, startProcess } from '../tracing.ts';
import type { ConsumerContext } from './context.ts';

/** What became of one run of the handler, for the loop to apply. */
export type Outcome =
  /** Done with: ack the entry (unless the handler acked it in its own script). */
  | { readonly kind: 'ack' }
  /** Not done: the entry stays pending and comes back; `counts`: whether this run counts toward `maxDeliveries`. */
  | { readonly kind: 'retry'; readonly counts: boolean }
  /** Never to be done: copy it to the dead-letter stream with `reason`, then ack it. */
  | { readonly kind: 'dead-letter'; readonly reason: string };

const ACK: Outcome = { kind: 'ack' };
const RETRY: Outcome = { kind: 'retry', counts: true };
const RETRY_LATER: Outcome = { kind: 'retry', counts: false };

/** Where an event came from, given to the handler beside it. */
export interface DeliveryContext {
  /** The entry ID, e.g. `1700000000000-0`; unique within the stream. */
  readonly id: string;
  readonly stream: string;
  readonly group: string;
  /** The consumer it was delivered to: this subscription's. */
  readonly consumer: string;
  /**
   * Which run of the handler this is for the entry: 1 the first time, then one more each time it
   * is handled again, by this consumer or another. Runs that Redis's trouble cut short (out of
   * memory, a timeout, a lost connection) or that ended in `RetryLaterError` are not counted;
   * nor are deliveries whose handler never ran (Redis's own delivery counter counts those).
   */
  readonly deliveryCount: number;
  /**
   * Whether this consumer still holds the entry: false once it may have lost it to another
   * consumer, which then handles it too (this process was paused, by SIGSTOP, a long GC pause or a
   * stalled Redis, long enough to be taken for dead; or its lease was taken). Call it right before
   * an effect outside Redis that must not be repeated (a mail, a charge), and give up with
   * `RetryLaterError` when false. Effects written in Redis need no such check: write them in one
   * script with a guard (see `handlerAcks`), which holds whoever runs it.
   */
  stillHeld(): boolean;
}

/** Whether this consumer still holds an entry: what `DeliveryContext.stillHeld` asks. */
export interface Tenure {
  /** Changes whenever held entries may have been lost (a gap in the liveness mark). */
  epoch(): number;
  /** Whether entry `id`, taken in `epoch`, is still held. */
  holds(id: string, epoch: number): boolean;
}

/**
 * Handles one event. The outcome is the acknowledgement:
 * - resolves: the entry is acked (XACK) and never delivered to this group again. Or, with
 *   `handlerAcks`, the handler has acked it itself, in the same atomic step as its effect (a Lua
 *   script that ends with `XACK <context.stream> <context.group> <context.id>`; see
 *   `@msa/stream-kit/lua`), so that effect and ack cannot come apart; the subscription then sends
 *   no XACK of its own. Use one or the other: there is no third way;
 * - throws: the entry stays pending and is delivered again, `retryDelayMs` after its first
 *   delivery, then after twice as long each time (at most 60 s); once the handler has failed on
 *   its run number `maxDeliveries` it goes to the dead-letter stream instead;
 * - throws `NonRetryableError`: the entry goes to the dead-letter stream at once;
 * - throws `RetryLaterError`: the entry comes back `retryDelayMs` later; the run does not count;
 * - throws an error from Redis or the connection (out of memory, a timeout, `READONLY`, ...;
 *   also when wrapped as another error's `cause`): not the entry's fault, so the run does not
 *   count; the subscription pauses, backing off, and handles the entry again once Redis works.
 * Delivery is at least once: a crash between the handler's effect and the ack delivers the entry
 * again (to this consumer when it restarts under the same name, or to another one after
 * `claimIdleMs`), so effects must tolerate repeats.
 */
export type Handler<T> = (event: T, context: DeliveryContext) => Promise<void> | void;

/**
 * One run of the handler for one entry: checks the entry (run count, ID, UTF-8, schema), runs the
 * handler, and says what the outcome means. Writes nothing to Redis itself: the outcome is the
 * ack, and the loop applies it. An error from Redis or the connection (from the handler or the
 * clock check) is thrown: it is not the entry's fault.
 */
export class Delivery {
  constructor(
    private readonly ctx: ConsumerContext,
    private readonly handler: Handler<unknown>,
    private readonly maxDeliveries: number,
    private readonly clock: ServerClock,
    private readonly tenure: Tenure,
    /** Continues each entry's trace around its handler; none: no span, no clock, no lookup. */
    private readonly tracer?: Tracer,
  ) {}

  /** Runs the handler for entry `id`, run number `run`. `mayBeAhead` false: its ID is known not to be ahead of the clock. */
  async run(id: string, flat: Buffer[], run: number, mayBeAhead: boolean): Promise<Outcome> {
    if (run > this.maxDeliveries) {
      // Taken that often yet never finished: it likely kills or stalls whichever process runs it.
      return deadLetter(
        `not acked after ${run - 1} runs of its handler (its consumers died or stalled before finishing)`,
      );
    }
    const bound = maxIdAheadMs(this.ctx.stream);
    if (mayBeAhead && this.clock.looksAhead(id, bound)) {
      const ahead = await this.clock.aheadBy(id, bound);
      if (ahead !== undefined)
        return deadLetter(
          `entry ID ahead of the clock: ${id} is ${Math.round(ahead)} ms ahead of the server clock (more than ${bound} ms)`,
        );
    }
    const fields = textFields(flat);
    if (typeof fields === 'number') {
      const what = fields % 2 === 0 ? 'a field name' : `field ${JSON.stringify(String(flat[fields - 1]))}`;
      return deadLetter(`invalid entry: ${what} is not valid UTF-8`);
    }
    const decoded = decode(this.ctx.stream, id, fields);
    if (!decoded.ok) return deadLetter(`invalid entry: ${decoded.reason}`);
    const context = new Context(this.ctx, id, run, this.tenure);
    let span: Span | undefined;
    let outcome: Outcome;
    try {
      if (this.tracer) {
        const { stream, group, consumer } = this.ctx.where;
        const traced = startProcess(this.tracer, fields, { stream, group, consumer, id, run });
        span = traced.span;
        await runIn(traced.context, () => this.handler(decoded.event, context));
      } else await this.handler(decoded.event, context);
      outcome = ACK;
    } catch (err) {
      try {
        outcome = this.failure(err, id, run, span);
      } catch (fault) {
        // Redis's trouble, thrown on: the run does not count, and its span says why it ended.
        if (span) endProcess(span, 'retried', describe(fault));
        throw fault;
      }
    }
    if (span)
      endProcess(
        span,
        outcome.kind === 'ack' ? 'acked' : outcome.kind === 'retry' ? 'retried' : 'dead-lettered',
        outcome.kind === 'dead-letter' ? outcome.reason : undefined,
      );
    return outcome;
  }

  /** What a handler's error means for its entry; throws it on if it is Redis's, not the entry's. */
  private failure(err: unknown, id: string, run: number, span: Span | undefined): Outcome {
    const { log, where } = this.ctx;
    // The trace of the run, on the lines written after its span's context is left.
    const traceId = span?.spanContext().traceId;
    if (err instanceof NonRetryableError) return deadLetter(`non-retryable: ${err.message}`);
    if (err instanceof RetryLaterError) {
      log.debug({ ...where, entryId: id, traceId, err }, 'handler asked to retry later');
      return RETRY_LATER;
    }
    // Not the entry's fault: thrown on, so the loop pauses until Redis works again.
    if (isRedisFault(err)) throw err;
    if (run >= this.maxDeliveries) return deadLetter(`failed ${run} runs of its handler: ${describe(err)}`);
    log.warn(
      { ...where, entryId: id, deliveryCount: run, traceId, err },
      'handler failed; entry stays pending for another delivery',
    );
    return RETRY;
  }
}

/**
 * A run's `DeliveryContext`: a class, so that `stillHeld` is one method on its prototype rather than
 * a closure (and its scope) made for every entry.
 */
class Context implements DeliveryContext {
  readonly stream: string;
  readonly group: string;
  readonly consumer: string;
  // Private fields (#): a handler that logs or spreads its context sees only the public ones.
  readonly #tenure: Tenure;
  readonly #epoch: number;

  constructor(
    ctx: ConsumerContext,
    readonly id: string,
    readonly deliveryCount: number,
    tenure: Tenure,
  ) {
    this.stream = ctx.stream.name;
    this.group = ctx.group;
    this.consumer = ctx.consumer;
    this.#tenure = tenure;
    this.#epoch = tenure.epoch();
  }

  stillHeld(): boolean {
    return this.#tenure.holds(this.id, this.#epoch);
  }
}

function deadLetter(reason: string): Outcome {
  return { kind: 'dead-letter', reason };
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
