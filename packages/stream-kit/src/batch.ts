import { isRedisFault } from './connection.ts';

/**
 * Runs a batch of items in one call (typically one Lua script) and answers, in the items' order,
 * each item's result, or the `Error` that item alone caused (the call then handles the others as
 * if it were not there). Throwing fails the whole batch.
 */
export type BatchFunction<Item, Result> = (items: readonly Item[]) => Promise<readonly (Result | Error)[]>;

/** Options of `batchCalls`. */
export interface BatchOptions<Item> {
  /**
   * The most items one call of the batch function gets; more queued in one tick go out as several
   * calls, side by side.
   * @defaultValue 100
   */
  maxBatchSize?: number;
  /**
   * Items with different keys never share a call (e.g. entries of different streams or groups,
   * when the batch function acks them with one XACK). Unset, all items may share one.
   */
  keyOf?: (item: Item) => string;
}

/**
 * DataLoader-style micro-batching: each call of the returned function queues one item, and the
 * items queued in the same tick go out together as one call of `run`, once every handler started
 * in that tick has queued (`setImmediate`: after the microtasks, so also after the awaits that
 * led there). Each caller gets its own item's result, or rejects with its own item's error.
 *
 * If the whole call fails, no item is known to be at fault: with an error from Redis or the
 * connection (`isRedisFault`: out of memory, a lost connection, a stall), every caller of the
 * batch rejects with that very error, as its own call would have (its run does not count against
 * the entry, and the subscription pauses); with any other error, the items are run again one at a
 * time (each in a call of `run` of its own), so that each caller gets the error its own item
 * causes, and the others go through. `run` must therefore be safe to repeat for an item, as
 * exactly-once effect scripts are.
 */
export function batchCalls<Item, Result>(
  run: BatchFunction<Item, Result>,
  { maxBatchSize = 100, keyOf }: BatchOptions<Item> = {},
): (item: Item) => Promise<Result> {
  if (!Number.isInteger(maxBatchSize) || maxBatchSize < 1)
    throw new RangeError(`maxBatchSize must be a positive integer, got ${maxBatchSize}`);

  interface Call {
    item: Item;
    resolve: (result: Result) => void;
    reject: (err: unknown) => void;
  }
  const queues = new Map<string, Call[]>();
  let flushing = false;

  const settle = (call: Call, outcome: Result | Error | undefined) => {
    if (outcome instanceof Error) call.reject(outcome);
    else call.resolve(outcome as Result);
  };

  /** Runs `calls` in one call of `run`; settles every one of them, never rejects. */
  async function send(calls: Call[]): Promise<void> {
    let outcomes: readonly (Result | Error)[];
    try {
      outcomes = await run(calls.map((call) => call.item));
      if (outcomes.length !== calls.length)
        throw new Error(`the batch function answered ${outcomes.length} outcomes for ${calls.length} items`);
    } catch (err) {
      if (calls.length === 1 || isRedisFault(err)) for (const call of calls) call.reject(err);
      else await Promise.all(calls.map((call) => send([call])));
      return;
    }
    calls.forEach((call, i) => settle(call, outcomes[i]));
  }

  function flush() {
    flushing = false;
    const batches = [...queues.values()];
    queues.clear();
    for (const calls of batches) {
      for (let start = 0; start < calls.length; start += maxBatchSize)
        void send(calls.slice(start, start + maxBatchSize));
    }
  }

  return (item) =>
    new Promise<Result>((resolve, reject) => {
      const key = keyOf ? keyOf(item) : '';
      let queue = queues.get(key);
      if (!queue) queues.set(key, (queue = []));
      queue.push({ item, resolve, reject });
      if (!flushing) {
        flushing = true;
        setImmediate(flush);
      }
    });
}
