import type { Logger } from '../logger.ts';

/**
 * A shutdown to run on SIGTERM/SIGINT: runs `steps` in order (each even if one before failed),
 * and resolves to the exit code: 0 when all succeeded, 1 if one failed or they took longer than
 * `timeoutMs`. Later calls return the first call's promise.
 */
export function gracefulShutdown(
  logger: Logger,
  steps: readonly (() => Promise<unknown>)[],
  timeoutMs = 15_000,
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
    ]));
}
