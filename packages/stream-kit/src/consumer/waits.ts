/* The loop's waits, and how close() cuts them short. */

/**
 * Resolves after `ms`, or at once when `signal` aborts. `unref`: the timer alone does not keep
 * the process alive.
 */
export function sleep(ms: number, { signal, unref = false }: { signal?: AbortSignal; unref?: boolean } = {}) {
  return new Promise<void>((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    if (unref) timer.unref();
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Runs the loop's steps so that close() can stop waiting for one: after `abandon()`, the step
 * under way and every later one resolve at once, whatever Redis does (while ioredis is between
 * reconnect attempts, disconnect() leaves queued commands hanging). Not a `Promise.race` with a
 * promise that settles at close: each race would leave a reaction on that promise until then, a
 * leak of a few hundred bytes per step of a long-lived loop.
 */
export class StepGuard {
  private abandoned = false;
  private abandonStep: (() => void) | undefined;

  /** Resolves with `work`, or as soon as `abandon()` is called, leaving `work` behind. */
  run(work: Promise<void>): Promise<void> {
    work.catch(() => {}); // an abandoned command may still fail later; nobody is listening then
    if (this.abandoned) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.abandonStep = resolve;
      work.then(resolve, reject).finally(() => {
        if (this.abandonStep === resolve) this.abandonStep = undefined;
      });
    });
  }

  abandon(): void {
    this.abandoned = true;
    this.abandonStep?.();
  }
}
