import { z } from 'zod';

/*
 * The HTTP contract: each service lists its routes with the zod schemas they validate with and the
 * shapes of their answers, and `pnpm contracts` writes the OpenAPI document from them
 * (docs/contracts/openapi.json). The routes every service has are here.
 */

/** One answer of a route. */
export interface HttpAnswer {
  readonly description: string;
  /** Its JSON body; none for an empty or plain-text one. */
  readonly body?: z.ZodType;
  /** @defaultValue `application/json` when there is a body */
  readonly contentType?: string;
}

/** A route, as the OpenAPI document describes it. */
export interface HttpRoute {
  readonly method: 'get' | 'post';
  /** In OpenAPI's form: `/orders/{orderId}`. */
  readonly path: string;
  readonly summary: string;
  readonly description?: string;
  /** The query parameters: the schema the route parses `req.query` with. */
  readonly query?: z.ZodObject;
  /** The path parameters. */
  readonly params?: z.ZodObject;
  /** The request headers it reads, by name. */
  readonly headers?: z.ZodObject;
  /** The JSON body: the schema the route parses it with. */
  readonly body?: z.ZodType;
  readonly answers: Readonly<Record<number, HttpAnswer>>;
  /** It wants `Authorization: Bearer <JWT>` when auth is on (`authenticate`). */
  readonly auth?: boolean;
}

/** What `errorMiddleware` and the routes answer a request they refuse with. */
export const ErrorBody = z.object({
  error: z.string().meta({ description: 'What is wrong, for a person to read.' }),
  field: z.string().optional().meta({ description: 'The field, parameter or header at fault.' }),
});

/** The answers of a route that wants a token (`auth: true`), besides its own. */
export const authAnswers = {
  401: {
    description:
      'No valid token: missing, malformed, expired, not yet valid, badly signed, or for another issuer or audience. `WWW-Authenticate: Bearer` says why.',
    body: ErrorBody,
  },
} as const satisfies Record<number, HttpAnswer>;

const Readiness = z.discriminatedUnion('status', [
  z.object({ status: z.literal('ready') }),
  z.object({ status: z.literal('not ready'), reason: z.string() }),
]);

/** The routes of every service: liveness, readiness and metrics. */
export const chassisRoutes: readonly HttpRoute[] = [
  {
    method: 'get',
    path: '/healthz',
    summary: 'Liveness: the process runs.',
    answers: {
      200: {
        description: 'Alive, whatever state Redis is in.',
        body: z.object({ status: z.literal('ok'), instance: z.string() }),
      },
    },
  },
  {
    method: 'get',
    path: '/readyz',
    summary: "Readiness: Redis takes the service's writes within a second.",
    answers: {
      200: { description: 'Ready for traffic.', body: Readiness },
      503: { description: 'Not ready: Redis is away, too slow or refusing writes.', body: Readiness },
    },
  },
  {
    method: 'get',
    path: '/metrics',
    summary: "The service's metrics (README, Observability).",
    answers: {
      200: { description: "Prometheus's text format.", contentType: 'text/plain; version=0.0.4' },
    },
  },
];
