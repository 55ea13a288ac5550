import { describe, expect, it } from 'vitest';

/*
 * The public surface, entry point by entry point (the runtime names; types go with them). A name
 * added here is a promise to every service: add one on purpose, with its contract comment.
 */

describe('the entry points of @msa/stream-kit', () => {
  it.each([
    [
      '@msa/stream-kit: the messaging API',
      '../src/index.ts',
      [
        'DEFAULT_RETRY_POLICY',
        'EventValidationError',
        'NonRetryableError',
        'NotReplicatedError',
        'PublisherClosedError',
        'RetryLaterError',
        'byType',
        'compareIds',
        'createPublisher',
        'defineStream',
        'dropDeadLetters',
        'handledBefore',
        'handledThrough',
        'handledUntilMs',
        'horizonOf',
        'listDeadLetters',
        'replay',
        'replayDeadLetters',
        'subscribe',
      ],
    ],
    [
      '@msa/stream-kit/events: the catalogue',
      '../src/events.ts',
      [
        'OrderCancelled',
        'OrderCreated',
        'OrderEvents',
        'PaymentCompleted',
        'PaymentEvents',
        'PaymentFailed',
        'PaymentRefunded',
        'streams',
      ],
    ],
    [
      '@msa/stream-kit/lua: scripting for handlers that ack in their own script',
      '../src/lua.ts',
      [
        'CONSUMER_DEAD',
        'LIVENESS_TTL_MS',
        'XADD_CHECKED',
        'batchCalls',
        'defineScript',
        'livenessKey',
        'partitionNames',
        'slotName',
        'streamKeyOf',
        'slotTag',
        'waitForReplicas',
        'maxIdAheadMs',
        'xaddArguments',
      ],
    ],
    [
      '@msa/stream-kit/service: the service chassis',
      '../src/service.ts',
      [
        'ConflictError',
        'ErrorBody',
        'ForbiddenError',
        'LOG_REDACT',
        'READ_ALL_SCOPE',
        'TooManyRequestsError',
        'UnauthorizedError',
        'UnavailableError',
        'ValidationError',
        'accessLog',
        // Who the caller of a customer-facing route is (service/auth.ts).
        'authAnswers',
        'authEnv',
        'authenticate',
        'callerOf',
        'chassisRoutes',
        'checkAuthEnv',
        'closeServer',
        'consumerEnv',
        'createMetrics',
        'drained',
        'errorMiddleware',
        'gracefulShutdown',
        'healthzHandler',
        // The internal endpoints, here or on INTERNAL_PORT (service/internal.ts).
        'internalEnv',
        'internalRoutes',
        'jsonBody',
        'listen',
        'listenInternal',
        'logDestination',
        'logOptions',
        'malformedQueryParameter',
        'mayRead',
        'methodNotAllowed',
        'openRequestConnection',
        'parseEnv',
        'redisEnv',
        'readinessHandler',
        'serviceEnv',
        'signToken',
        'startTracing',
        'traceRequests',
      ],
    ],
    ['@msa/stream-kit/board: the stream board', '../src/board/index.ts', ['BoardError', 'createBoard']],
  ])('%s exports these names and no others', async (_, path, names) => {
    const module = (await import(path)) as Record<string, unknown>;

    expect(Object.keys(module).sort()).toEqual([...names].sort());
  });

  it('lists every stream of the catalogue in `streams`', async () => {
    const catalogue = await import('../src/events.ts');

    expect(catalogue.streams.map((stream) => stream.name)).toEqual(['order-events', 'payment-events']);
  });
});
