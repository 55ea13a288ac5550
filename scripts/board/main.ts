/**
 * `pnpm board`: the stream board on http://127.0.0.1:8090 (BOARD_PORT, BOARD_HOST), over the Redis
 * at REDIS_URL, read-only unless BOARD_TOKEN is set. Exit codes: 0 stopped by SIGTERM or Ctrl-C,
 * 1 a bad environment, a port it cannot listen on, or a shutdown that failed.
 */
import {
  closeServer,
  gracefulShutdown,
  listen,
  logDestination,
  openRequestConnection,
  parseEnv,
} from '@msa/stream-kit/service';
import { pino } from 'pino';
import { createBoardApp } from './app.ts';
import { BoardEnv, type BoardConfig } from './config.ts';

let config: BoardConfig;
try {
  config = parseEnv(BoardEnv, process.env);
} catch (err) {
  console.error(`board: ${(err as Error).message}`);
  process.exit(1);
}

const logs = logDestination(process.stdout);
const logger = pino(
  { name: 'board', level: config.LOG_LEVEL, base: { pid: process.pid, instance: config.INSTANCE_ID } },
  logs,
);
const redis = openRequestConnection(config.REDIS_URL, logger.child({ component: 'redis' }), 'board', {
  cluster: config.REDIS_CLUSTER,
});
const { app, board } = createBoardApp({ redis, config, logger: logger.child({ component: 'board' }) });
const server = await listen(app, { port: config.BOARD_PORT, host: config.BOARD_HOST }).catch(
  (err: unknown) => {
    logger.fatal({ err, host: config.BOARD_HOST, port: config.BOARD_PORT }, 'cannot listen');
    logs.flush();
    process.exit(1);
  },
);
const address = server.address();
const port = typeof address === 'object' && address ? address.port : config.BOARD_PORT;
const host = config.BOARD_HOST.includes(':') ? `[${config.BOARD_HOST}]` : config.BOARD_HOST;
logger.info(
  { url: `http://${host}:${port}/`, writable: config.BOARD_TOKEN !== undefined },
  config.BOARD_TOKEN
    ? 'board listening'
    : 'board listening, read-only (set BOARD_TOKEN to replay, discard and place orders)',
);

// The board first: it ends the pages' event streams, which would hold the server open.
const shutdown = gracefulShutdown(
  logger,
  [() => board.close(), () => closeServer(server), () => redis.quit().catch(() => redis.disconnect())],
  { output: logs },
);
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => void shutdown(signal).then((code) => process.exit(code)));
}
