import { subscribe } from '@msa/stream-kit';
import { OrderEvents, PaymentEvents } from '@msa/stream-kit/events';
import {
  authenticate,
  closeServer,
  createMetrics,
  drained,
  gracefulShutdown,
  listen,
  listenInternal,
  logDestination,
  logOptions,
  openRequestConnection,
  startTracing,
} from '@msa/stream-kit/service';
import { pino } from 'pino';
import { createApp } from './app.ts';
import { loadConfig, type Config } from './config.ts';
import { orderMailHandler, paymentSmsHandler } from './notify.ts';
import { logSender } from './sender.ts';
import { redisSentLog } from './sent-log.ts';

let config: Config;
try {
  config = loadConfig(process.env);
} catch (err) {
  console.error(`notification-service: ${(err as Error).message}`);
  process.exit(1);
}

const GROUP = 'notification-service-group';
// Spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; off (and free) otherwise.
const tracing = startTracing('notification-service');
const { tracer } = tracing;
// Straight to stdout, a tick's lines in one write, without pino's thread-pool hand-off (see README, Logs).
const logs = logDestination(process.stdout);
const logger = pino(logOptions('notification-service', config, { traced: tracer !== undefined }), logs);
// The lines of the last tick, when the process ends in it (an uncaught exception).
process.on('exit', () => logs.flush());
// A cluster client with REDIS_CLUSTER=true; the subscriptions' connections copy its settings.
const redis = openRequestConnection(
  config.REDIS_URL,
  logger.child({ component: 'redis' }),
  'notification-service',
  {
    cluster: config.REDIS_CLUSTER,
  },
);
const deps = {
  sender: logSender(logger.child({ component: 'sender' })),
  // Shorter than claimIdleMs: an event taken over from a crashed instance finds its lease expired.
  sentLog: redisSentLog(redis, { leaseMs: config.CLAIM_IDLE_MS / 2 }),
};
// Counts of the subscriptions, HTTP timings, and the streams' state read from Redis at scrape time.
const metrics = createMetrics({ redis, logger: logger.child({ component: 'metrics' }) });
const consumerOptions = {
  connection: redis,
  logger: logger.child({ component: 'consumer' }),
  claimIdleMs: config.CLAIM_IDLE_MS,
  count: config.READ_COUNT,
  concurrency: config.CONCURRENCY,
  // sendOnce resolves only after a script that acked the entry (see notify.ts): no second XACK.
  handlerAcks: true,
  metrics,
  tracer,
};
const subscriptions = [
  subscribe(GROUP, config.CONSUMER_NAME, OrderEvents, orderMailHandler(deps), consumerOptions),
  subscribe(GROUP, config.CONSUMER_NAME, PaymentEvents, paymentSmsHandler(deps), consumerOptions),
];
const auth = authenticate(config, 'notification-service');
if (auth === undefined)
  logger.warn(
    'AUTH_JWKS_URL and AUTH_SECRET are unset: GET /notifications is open, anyone may read any user (development only; NODE_ENV=production refuses to start so)',
  );
const app = createApp({
  authenticate: auth,
  sentLog: deps.sentLog,
  redis,
  logger: logger.child({ component: 'http' }),
  instance: config.INSTANCE_ID,
  metrics,
  tracer,
  serveInternal: config.INTERNAL_PORT === undefined,
});
const server = await listen(app, {
  port: config.PORT,
  host: config.HOST,
  maxConnections: config.MAX_CONNECTIONS,
  logger: logger.child({ component: 'http' }),
}).catch((err: unknown) => {
  logger.fatal({ err, host: config.HOST, port: config.PORT }, 'cannot listen');
  return drained(logs).then(() => process.exit(1));
});
// With INTERNAL_PORT, /healthz, /readyz and /metrics are served there alone.
const internal = await listenInternal(config, {
  service: 'notification-service',
  instance: config.INSTANCE_ID,
  redis,
  metrics,
  logger: logger.child({ component: 'http' }),
}).catch((err: unknown) => {
  logger.fatal({ err, host: config.INTERNAL_HOST, port: config.INTERNAL_PORT }, 'cannot listen');
  return drained(logs).then(() => process.exit(1));
});
logger.info(
  { host: config.HOST, port: config.PORT, consumer: config.CONSUMER_NAME },
  'notification-service listening',
);

// The subscriptions before the connection their handlers record notifications with.
const shutdown = gracefulShutdown(
  logger,
  [
    () => Promise.all([closeServer(server), internal && closeServer(internal)]),
    () => Promise.all(subscriptions.map((subscription) => subscription.close())),
    () => redis.quit().catch(() => redis.disconnect()),
    // The spans still buffered, last: the shutdown's own come too.
    () => tracing.close(),
  ],
  { output: logs },
);
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => void shutdown(signal).then((code) => process.exit(code)));
}
