import { subscribe } from '@msa/stream-kit';
import { OrderEvents } from '@msa/stream-kit/events';
import {
  closeServer,
  createMetrics,
  drained,
  gracefulShutdown,
  listen,
  logDestination,
  logOptions,
  openRequestConnection,
  startTracing,
} from '@msa/stream-kit/service';
import { pino } from 'pino';
import { createApp } from './app.ts';
import { loadConfig, type Config } from './config.ts';
import { paymentHandler } from './process-payment.ts';

let config: Config;
try {
  config = loadConfig(process.env);
} catch (err) {
  console.error(`payment-service: ${(err as Error).message}`);
  process.exit(1);
}

// Spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; off (and free) otherwise.
const tracing = startTracing('payment-service');
const { tracer } = tracing;
// Straight to stdout, a tick's lines in one write, without pino's thread-pool hand-off (see README, Logs).
const logs = logDestination(process.stdout);
const logger = pino(logOptions('payment-service', config, { traced: tracer !== undefined }), logs);
// The lines of the last tick, when the process ends in it (an uncaught exception).
process.on('exit', () => logs.flush());
// A cluster client with REDIS_CLUSTER=true; the subscriptions' connections copy its settings.
const redis = openRequestConnection(
  config.REDIS_URL,
  logger.child({ component: 'redis' }),
  'payment-service',
  {
    cluster: config.REDIS_CLUSTER,
  },
);
// Counts of the subscription and the payments, HTTP timings, and the streams' state read from Redis at scrape time.
const metrics = createMetrics({ redis, logger: logger.child({ component: 'metrics' }) });
const subscription = subscribe(
  'payment-service-group',
  config.CONSUMER_NAME,
  OrderEvents,
  paymentHandler({
    redis,
    logger: logger.child({ component: 'payments' }),
    limit: config.PAYMENT_LIMIT,
    metrics,
  }),
  {
    connection: redis,
    logger: logger.child({ component: 'consumer' }),
    claimIdleMs: config.CLAIM_IDLE_MS,
    count: config.READ_COUNT,
    concurrency: config.CONCURRENCY,
    metrics,
    tracer,
  },
);
const server = await listen(
  createApp({
    redis,
    logger: logger.child({ component: 'http' }),
    instance: config.INSTANCE_ID,
    metrics,
    tracer,
  }),
  {
    port: config.PORT,
    host: config.HOST,
    maxConnections: config.MAX_CONNECTIONS,
    logger: logger.child({ component: 'http' }),
  },
).catch((err: unknown) => {
  logger.fatal({ err, host: config.HOST, port: config.PORT }, 'cannot listen');
  return drained(logs).then(() => process.exit(1));
});
logger.info(
  { host: config.HOST, port: config.PORT, consumer: config.CONSUMER_NAME },
  'payment-service listening',
);

// The subscription before the connection: the payment under way still needs it.
const shutdown = gracefulShutdown(
  logger,
  [
    () => closeServer(server),
    () => subscription.close(),
    () => redis.quit().catch(() => redis.disconnect()),
    () => tracing.close(),
  ],
  { output: logs },
);
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => void shutdown(signal).then((code) => process.exit(code)));
}
