import { createPublisher, subscribe } from '@msa/stream-kit';
import { OrderEvents, PaymentEvents } from '@msa/stream-kit/events';
import {
  closeServer,
  drained,
  gracefulShutdown,
  listen,
  logOptions,
  openRequestConnection,
} from '@msa/stream-kit/service';
import { pino } from 'pino';
import { createApp } from './app.ts';
import { loadConfig, type Config } from './config.ts';
import { redisOrders } from './orders.ts';
import { startPaymentTimeouts } from './timeouts.ts';

let config: Config;
try {
  config = loadConfig(process.env);
} catch (err) {
  console.error(`order-service: ${(err as Error).message}`);
  process.exit(1);
}

// Straight to stdout, without pino's thread-pool hand-off per write (see README, Logs).
const logger = pino(logOptions('order-service', config), process.stdout);
// One request connection for everything: the publisher, the idempotent-order script and /readyz.
// Nothing waits for it here, so the service starts (and answers /healthz) while Redis is away.
const redis = openRequestConnection(config.REDIS_URL, logger.child({ component: 'redis' }), 'order-service');
const publisher = createPublisher({ connection: redis, logger: logger.child({ component: 'publisher' }) });
const GROUP = 'order-service-group';
const orders = redisOrders({
  redis,
  logger: logger.child({ component: 'orders' }),
  paymentTimeoutMs: config.PAYMENT_TIMEOUT_MS,
  group: GROUP,
});
// The read model: a projection of both streams in order-service's own group. Its steps are
// idempotent (an entry applied twice finds its step), so the subscription acks after each.
const projections = [
  subscribe(
    'order-service-group',
    config.CONSUMER_NAME,
    OrderEvents,
    orders.orderEventsHandler,
    consumerOptions(),
  ),
  subscribe(
    'order-service-group',
    config.CONSUMER_NAME,
    PaymentEvents,
    orders.paymentEventsHandler,
    consumerOptions(),
  ),
];
const timeouts = startPaymentTimeouts({
  redis,
  orders,
  logger: logger.child({ component: 'timeouts' }),
  group: GROUP,
});
const app = createApp({
  publisher,
  redis,
  logger: logger.child({ component: 'http' }),
  instance: config.INSTANCE_ID,
  orders,
});
const server = await listen(app, {
  port: config.PORT,
  host: config.HOST,
  maxConnections: config.MAX_CONNECTIONS,
  logger: logger.child({ component: 'http' }),
}).catch((err: unknown) => {
  logger.fatal({ err, host: config.HOST, port: config.PORT }, 'cannot listen');
  return drained(process.stdout).then(() => process.exit(1));
});
logger.info({ host: config.HOST, port: config.PORT }, 'order-service listening');

// HTTP first, so no request arrives to find the publisher closed; then the timeouts and the
// projections, which write with the shared connection; the publisher waits for its publishes under
// way, then the connection it shares goes.
const shutdown = gracefulShutdown(
  logger,
  [
    () => closeServer(server),
    () => timeouts.close(),
    () => Promise.all(projections.map((projection) => projection.close())),
    () => publisher.close(),
    () => redis.quit().catch(() => redis.disconnect()),
  ],
  { output: process.stdout },
);
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => void shutdown(signal).then((code) => process.exit(code)));
}

function consumerOptions() {
  return {
    connection: config.REDIS_URL,
    logger: logger.child({ component: 'consumer' }),
    claimIdleMs: config.CLAIM_IDLE_MS,
    count: config.READ_COUNT,
    concurrency: config.CONCURRENCY,
  };
}
