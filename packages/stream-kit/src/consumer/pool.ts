/** How a `runPool` ended. */
export interface PoolResult {
  /** How many items were started, from the first: those after were never touched. */
  readonly started: number;
  /** The first error thrown, if one was: no item was started after it. */
  readonly error?: unknown;
}

/**
 * The bounded worker pool: runs `work` on `items` in their order, at most `concurrency` at once
 * (1: one after another), starting none once `stopped()` says so or one has thrown. Settles once
 * every started item has; never rejects.
 */
export async function runPool<T>(
  items: readonly T[],
  concurrency: number,
  work: (item: T) => Promise<void> | void,
  stopped: () => boolean,
): Promise<PoolResult> {
  let next = 0;
  let failed = false;
  let error: unknown;
  const worker = async () => {
    while (next < items.length && !failed && !stopped()) {
      try {
        await work(items[next++]!);
      } catch (err) {
        if (!failed) error = err;
        failed = true;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  return failed ? { started: next, error } : { started: next };
}
