import type { Logger } from '../logger.ts';

/** Options of `gracefulShutdown`. */
export interface ShutdownOptions {
  /** After this long the shutdown resolves to 1, steps still running or not. @defaultValue 15000 */
  timeoutMs?: number;
  /**
   * Where the logger writes (a service's `logDestination`, or `process.stdout`): the shutdown
   * resolves only once the lines still waiting in it are out (see `drained`), so that
   * `process.exit` drops none.
   */
  output?: Drainable;
}

/** What `drained` waits on: a writable stream, or a service's `logDestination`. */
export interface Drainable {
  /** Writes `text`; `done` is called once it and everything written before it are out. */
  write(text: string, done: (err?: Error | null) => void): unknown;
}

/**
 * A shutdown to run on SIGTERM/SIGINT: runs `steps` in order (each even if one before failed),
 * and resolves to the exit code: 0 when all succeeded, 1 if one failed or they took longer than
 * `timeoutMs`. Later calls return the first call's promise.
 */
export function gracefulShutdown(
  logger: Logger,
  steps: readonly (() => Promise<unknown>)[],
  { timeoutMs = 15_000, output }: ShutdownOptions = {},
): (signal: string) => Promise<number> {
  let done: Promise<number> | undefined;
  async function run(signal: string) {
    logger.info({ signal }, 'shutting down');
    let code = 0;
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        logger.error({ err }, 'shutdown step failed');
        code = 1;
      }
    }
    logger.info({ code }, 'stopped');
    return code;
  }
  return (signal) =>
    (done ??= Promise.race([
      run(signal),
      // If something hangs, exiting late with an error beats never exiting.
      new Promise<number>((resolve) =>
        setTimeout(() => {
          logger.error({ timeoutMs }, 'shutdown timed out');
          resolve(1);
        }, timeoutMs).unref(),
      ),
    ]).then(async (code) => {
      if (output) await drained(output);
      return code;
    }));
}

/**
 * Resolves once everything written to `stream` so far is out (a pipe's reader has taken it), once
 * the stream fails, or after `timeoutMs`, whichever comes first. The services' last step before
 * `process.exit`: their logs go straight to stdout (see README, Logs), where lines wait in the
 * process's memory while the reader lags behind, and `process.exit` drops whatever still waits.
 * Give it the service's `logDestination`, whose lines of the tick are not in stdout yet.
 */
export function drained(stream: Drainable, timeoutMs = 5_000): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    // An empty write's callback comes after every write before it (or with the stream's error).
    stream.write('', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
