import { OrderEvents, openRequestConnection, PaymentEvents, subscribe } from '@msa/stream-kit';
import { pino } from 'pino';
import { createApp } from './app.ts';
import { loadConfig } from './config.ts';
import { orderMailHandler, paymentSmsHandler } from './notify.ts';
import { logSender } from './sender.ts';
import { redisSentLog } from './sent-log.ts';

let config;
try {
  config = loadConfig(process.env);
} catch (err) {
  console.error(`notification-service: ${(err as Error).message}`);
  process.exit(1);
}

const GROUP = 'notification-service-group';
const logger = pino({ name: 'notification-service', level: config.LOG_LEVEL });
const redis = openRequestConnection(config.REDIS_URL, logger.child({ component: 'redis' }), 'notification-service');
const deps = { sender: logSender(logger.child({ component: 'sender' })), sentLog: redisSentLog(redis) };
const consumerOptions = { connection: config.REDIS_URL, logger: logger.child({ component: 'consumer' }) };
const subscriptions = [
  subscribe(GROUP, config.CONSUMER_NAME, OrderEvents, orderMailHandler(deps), consumerOptions),
  subscribe(GROUP, config.CONSUMER_NAME, PaymentEvents, paymentSmsHandler(deps), consumerOptions),
];
const server = createApp({ sentLog: deps.sentLog, logger: logger.child({ component: 'http' }) }).listen(
  config.PORT,
  (err) => {
    if (err) {
      logger.fatal({ err, port: config.PORT }, 'cannot listen');
      process.exit(1);
    }
    logger.info({ port: config.PORT, consumer: config.CONSUMER_NAME }, 'notification-service listening');
  },
);

let stopping = false;
async function shutdown(signal: NodeJS.Signals) {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'shutting down');
  // If something hangs, exiting late with an error beats never exiting.
  setTimeout(() => {
    logger.error('shutdown timed out');
    process.exit(1);
  }, 15_000).unref();
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
  await Promise.all(subscriptions.map((subscription) => subscription.close()));
  await redis.quit().catch(() => redis.disconnect());
  logger.info('stopped');
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
