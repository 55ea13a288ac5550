import { createPublisher, subscribe } from '@msa/stream-kit';
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
import { orderMetrics } from './metrics.ts';
import { redisOrders, type Orders } from './orders.ts';
import { orderRateLimits } from './rate-limit.ts';
import { liveReadModel, type ReadModel } from './read-model.ts';
import { startPaymentTimeouts } from './timeouts.ts';

let config: Config;
try {
  config = loadConfig(process.env);
} catch (err) {
  console.error(`order-service: ${(err as Error).message}`);
  process.exit(1);
}

// Spans over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; off (and free) otherwise.
const tracing = startTracing('order-service');
const { tracer } = tracing;
// Straight to stdout, a tick's lines in one write, without pino's thread-pool hand-off (see README, Logs).
const logs = logDestination(process.stdout);
const logger = pino(logOptions('order-service', config, { traced: tracer !== undefined }), logs);
// The lines of the last tick, when the process ends in it (an uncaught exception).
process.on('exit', () => logs.flush());
// One request connection for everything: the publisher, the idempotent-order script and /readyz.
// Nothing waits for it here, so the service starts (and answers /healthz) while Redis is away.
// A cluster client with REDIS_CLUSTER=true; the subscriptions' connections copy its settings.
const redis = openRequestConnection(config.REDIS_URL, logger.child({ component: 'redis' }), 'order-service', {
  cluster: config.REDIS_CLUSTER,
});
// Counts of the publisher, the projection and the saga, HTTP timings, and the streams' state read
// from Redis at scrape time.
const metrics = createMetrics({ redis, logger: logger.child({ component: 'metrics' }) });
// With DURABLE_REPLICAS, a 202 waits for the replicas (WAIT), which holds its connection until they
// answer: orders are written on a connection of their own, so reads and /readyz never queue behind
// a WAIT.
const durability =
  config.DURABLE_REPLICAS > 0
    ? { replicas: config.DURABLE_REPLICAS, timeoutMs: config.DURABLE_TIMEOUT_MS }
    : undefined;
const writes = durability
  ? openRequestConnection(config.REDIS_URL, logger.child({ component: 'redis' }), 'order-service:writes', {
      cluster: config.REDIS_CLUSTER,
    })
  : redis;
const publisher = createPublisher({
  connection: writes,
  logger: logger.child({ component: 'publisher' }),
  metrics,
  tracer,
  durability,
});
// The read model comes in generations (a rebuild makes a new one live): which one is live is read
// once Redis answers, and only then do its projection and timeouts start. Until then a read of
// GET /orders answers 503, as it would with Redis away.
let readModel: { model: ReadModel; orders: Orders; close(): Promise<void> } | undefined;
const counts = orderMetrics(metrics, redis, () => readModel?.model);
let stopping = false;
const readModelStarted = (async () => {
  for (let attempt = 1; !stopping; attempt += 1) {
    try {
      return startReadModel(await liveReadModel(redis));
    } catch (err) {
      if (attempt === 1) logger.warn({ err }, 'cannot read which read model generation is live; retrying');
      await new Promise((resolve) => setTimeout(resolve, 1_000));
    }
  }
  return undefined;
})().then((started) => (readModel = started));

function startReadModel(model: ReadModel) {
  const orders = redisOrders({
    redis,
    logger: logger.child({ component: 'orders' }),
    paymentTimeoutMs: config.PAYMENT_TIMEOUT_MS,
    model,
    metrics: counts,
  });
  // The projection of both streams, in the generation's own group. Its steps are idempotent (an
  // entry applied twice finds its step), so the subscription acks after each.
  const projections = [
    subscribe(model.group, config.CONSUMER_NAME, OrderEvents, orders.orderEventsHandler, consumerOptions()),
    subscribe(
      model.group,
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
    model,
  });
  logger.info({ generation: model.generation, group: model.group }, 'order read model started');
  return {
    model,
    orders,
    // The timeouts first: they write with the shared connection, as the projections do.
    async close() {
      await timeouts.close();
      await Promise.all(projections.map((projection) => projection.close()));
    },
  };
}

const auth = authenticate(config, 'order-service');
if (auth === undefined)
  logger.warn(
    'AUTH_JWKS_URL and AUTH_SECRET are unset: the customer-facing routes are open, anyone may act as any user (development only; NODE_ENV=production refuses to start so)',
  );
const unavailable = () => Promise.reject(new Error('the live read model generation is not known yet'));
const app = createApp({
  publisher,
  redis,
  writes,
  durability,
  logger: logger.child({ component: 'http' }),
  instance: config.INSTANCE_ID,
  metrics,
  tracer,
  orders: {
    get: (orderId) => readModel?.orders.get(orderId) ?? unavailable(),
    ofUser: (...args) => readModel?.orders.ofUser(...args) ?? unavailable(),
  },
  authenticate: auth,
  limits: orderRateLimits(redis, config, logger.child({ component: 'rate-limit' })),
  tutorialEndpoint: config.TUTORIAL_ENDPOINT,
  trustProxy: config.TRUST_PROXY,
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
  service: 'order-service',
  instance: config.INSTANCE_ID,
  redis,
  metrics,
  logger: logger.child({ component: 'http' }),
}).catch((err: unknown) => {
  logger.fatal({ err, host: config.INTERNAL_HOST, port: config.INTERNAL_PORT }, 'cannot listen');
  return drained(logs).then(() => process.exit(1));
});
logger.info({ host: config.HOST, port: config.PORT }, 'order-service listening');

// HTTP first, so no request arrives to find the publisher closed; then the read model (timeouts
// and projections), which writes with the shared connection; the publisher waits for its publishes
// under way, then the connection it shares goes.
const shutdown = gracefulShutdown(
  logger,
  [
    () => Promise.all([closeServer(server), internal && closeServer(internal)]),
    async () => {
      stopping = true;
      await (await readModelStarted)?.close();
    },
    () => publisher.close(),
    () => redis.quit().catch(() => redis.disconnect()),
    () => (writes === redis ? Promise.resolve() : writes.quit().catch(() => writes.disconnect())),
    // The spans still buffered, last: the shutdown's own come too.
    () => tracing.close(),
  ],
  { output: logs },
);
for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.on(signal, () => void shutdown(signal).then((code) => process.exit(code)));
}

function consumerOptions() {
  return {
    connection: redis,
    logger: logger.child({ component: 'consumer' }),
    claimIdleMs: config.CLAIM_IDLE_MS,
    count: config.READ_COUNT,
    concurrency: config.CONCURRENCY,
    metrics,
    tracer,
  };
}
