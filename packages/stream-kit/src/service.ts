/*
 * What the three services share besides streams: environment parsing, the access log, the HTTP
 * errors and their one middleware, health and readiness, metrics, listening and graceful shutdown. A
 * separate entry point (`@msa/stream-kit/service`): the stream API does not depend on it. Nothing
 * here handles signals or exits: signals and exit codes stay in each service's main.ts.
 */

export { openRequestConnection } from './connection.ts';
export { accessLog } from './service/access-log.ts';
export type { AccessLogLocals } from './service/access-log.ts';
export {
  consumerEnv,
  LOG_REDACT,
  logDestination,
  logOptions,
  parseEnv,
  redisEnv,
  serviceEnv,
} from './service/env.ts';
export type { LogDestination } from './service/env.ts';
export {
  authenticate,
  authEnv,
  callerOf,
  checkAuthEnv,
  mayRead,
  READ_ALL_SCOPE,
  signToken,
} from './service/auth.ts';
export type { AuthEnv, Caller, TokenClaims } from './service/auth.ts';
export {
  ConflictError,
  errorMiddleware,
  ForbiddenError,
  TooManyRequestsError,
  UnauthorizedError,
  jsonBody,
  methodNotAllowed,
  UnavailableError,
  ValidationError,
} from './service/http-errors.ts';
export { closeServer, listen, malformedQueryParameter } from './service/http.ts';
export type { ListenOptions } from './service/http.ts';
export { healthzHandler, readinessHandler } from './service/readiness.ts';
export { internalEnv, internalRoutes, listenInternal } from './service/internal.ts';
export type { InternalDeps } from './service/internal.ts';
export { drained, gracefulShutdown } from './service/shutdown.ts';
export { createMetrics } from './service/metrics.ts';
export { authAnswers, chassisRoutes, ErrorBody } from './service/contract.ts';
export { startTracing, traceRequests } from './service/tracing.ts';
export type { Tracing } from './service/tracing.ts';
export type { HttpAnswer, HttpRoute } from './service/contract.ts';
export type { MetricsOptions, ServiceMetrics } from './service/metrics.ts';
export type { Drainable, ShutdownOptions } from './service/shutdown.ts';
