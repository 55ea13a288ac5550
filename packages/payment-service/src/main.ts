import { createPublisher, OrderEvents, subscribe } from '@msa/stream-kit';
import { pino } from 'pino';
import { createApp } from './app.ts';
import { loadConfig } from './config.ts';
import { paymentHandler } from './process-payment.ts';

let config;
try {
  config = loadConfig(process.env);
} catch (err) {
  console.error(`payment-service: ${(err as Error).message}`);
  process.exit(1);
}

const logger = pino({ name: 'payment-service', level: config.LOG_LEVEL });
const publisher = createPublisher({
  connection: config.REDIS_URL,
  logger: logger.child({ component: 'publisher' }),
});
const subscription = subscribe(
  'payment-service-group',
  config.CONSUMER_NAME,
  OrderEvents,
  paymentHandler({ publisher, logger: logger.child({ component: 'payments' }) }),
  { connection: config.REDIS_URL, logger: logger.child({ component: 'consumer' }) },
);
const server = createApp().listen(config.PORT, (err) => {
  if (err) {
    logger.fatal({ err, port: config.PORT }, 'cannot listen');
    process.exit(1);
  }
  logger.info({ port: config.PORT, consumer: config.CONSUMER_NAME }, 'payment-service listening');
});

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
  // Finish the payment under way before the publisher it needs goes away.
  await subscription.close();
  await publisher.close();
  logger.info('stopped');
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
