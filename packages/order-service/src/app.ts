import express, { type Request, type Response } from 'express';
import type { Durability, Publisher } from '@msa/stream-kit';
import { waitForReplicas } from '@msa/stream-kit/lua';
import {
  accessLog,
  type AccessLogLocals,
  callerOf,
  type Caller,
  errorMiddleware,
  ForbiddenError,
  internalRoutes,
  jsonBody,
  malformedQueryParameter,
  mayRead,
  methodNotAllowed,
  UnavailableError,
  ValidationError,
  traceRequests,
  type ServiceMetrics,
  type Tracing,
} from '@msa/stream-kit/service';
import type { RedisClient } from '@msa/stream-kit';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { Orders } from './orders.ts';
import asyncapi from '../../../docs/contracts/asyncapi.json' with { type: 'json' };
import openapi from '../../../docs/contracts/openapi.json' with { type: 'json' };
import { IDEMPOTENCY_KEY, OrderBody, OrderIdParams, OrderQuery, OrdersQuery } from './contract.ts';
import { docsPage } from './docs-page.ts';
import { IDEMPOTENCY_HEADER, placeOrder, type OrderInput } from './place-order.ts';
import type { OrderRateLimits } from './rate-limit.ts';

export interface AppDeps {
  /** Publishes orders placed without an idempotency key. */
  publisher: Publisher;
  /** A request connection (`openRequestConnection`): `/readyz`, and idempotent orders unless `writes`. */
  redis: RedisClient;
  /**
   * Where idempotent orders are written, with `durability` a connection of their own (the
   * publisher's): a `WAIT` holds it until the replicas answer. @defaultValue `redis`
   */
  writes?: RedisClient | undefined;
  /** Answer 202 only once the order is on this many replicas (`DURABLE_REPLICAS`). @defaultValue none */
  durability?: Durability | undefined;
  logger: Logger;
  /** This process's `INSTANCE_ID`, which `/healthz` answers with. */
  instance: string;
  /**
   * Its metrics (`createMetrics`): every request is timed, `GET /metrics` serves them, and the
   * orders placed with an idempotency key are counted as sent (the publisher counts the others).
   */
  metrics?: Pick<ServiceMetrics, 'http' | 'handler' | 'sent'>;
  /** Its tracer (`startTracing`): a span per request, continuing the client's `traceparent`. */
  tracer?: Tracing['tracer'];
  /** The order read model, which `GET /orders` reads. */
  orders: Pick<Orders, 'get' | 'ofUser'>;
  /**
   * Verifies the caller of the customer-facing routes (`authenticate` of stream-kit's service
   * API). @defaultValue none: auth off, every caller acts as the user it names (development only)
   */
  authenticate?: Middleware | undefined;
  /** Counts the orders placed per user and per client address (`orderRateLimits`). @defaultValue none */
  limits?: OrderRateLimits | undefined;
  /** Serve the tutorial's open `GET /order` (`TUTORIAL_ENDPOINT`). @defaultValue true */
  tutorialEndpoint?: boolean | undefined;
  /** Express's `trust proxy` (`TRUST_PROXY`): whose `X-Forwarded-For` names the client. @defaultValue none */
  trustProxy?: number | string | undefined;
  /**
   * Serve `/healthz`, `/readyz` and `/metrics` here; false when INTERNAL_PORT serves them
   * (`internalApp`). @defaultValue true
   */
  serveInternal?: boolean | undefined;
}

type Middleware = (req: Request, res: Response, next: (err?: unknown) => void) => void;

/**
 * The order-service HTTP API:
 *
 * With `authenticate`, the customer-facing routes (`/orders...`) want `Authorization: Bearer
 * <JWT>` (401 without a valid one): the user is the token's subject, and reads of another user's
 * orders answer 404 unless the token has the `orders:read-all` scope.
 *
 * - `POST /orders` (JSON `productId`, `price`, and `userId`: the token's user if left out, 403 if
 *   another) → 202 `{orderId}`; 429 with `Retry-After` over a rate limit (`limits`). With an
 *   `Idempotency-Key` header (1 to 255 printable ASCII characters, else 400), the order is placed
 *   once per key: the same key with the same order (after validation) answers 202 with the same
 *   `orderId` and publishes nothing more, for 24 h after the first request; the same key with
 *   another order answers 409 `{error, field: 'Idempotency-Key'}`.
 * - `GET /order?userId=&productId=&price=` → 200 `ok` (the tutorial's endpoint, open to anyone,
 *   unless `tutorialEndpoint` is false).
 * - `GET /orders?userId=` (the token's user if left out) and `GET /orders/<orderId>`: the read model.
 *
 * `userId` and `productId` are the catalogue's IDs: 1 to 128 characters after trimming, valid
 * Unicode (a lone surrogate, or a query's percent-escape that is not UTF-8, is a 400 naming the
 * field: Redis would store it as U+FFFD, and two users would become one).
 * - `GET /healthz` → 200 `{status: 'ok', instance}` while the process runs; `GET /readyz` → 200
 *   `{status: 'ready'}` when Redis takes a write (`order-service:readyz`) within a second, else 503
 *   `{status: 'not ready', reason}`.
 * - `GET /metrics` (when given `metrics`): the service's metrics in Prometheus's text format.
 *
 * Bad input gets 4xx `{error, field}`; Redis unreachable or too slow gets 503 `{error}`
 * (`errorMiddleware`, the one place that turns errors into answers). Every request gets one access
 * line (`accessLog`); an order's is `order accepted` (or `order replayed for its idempotency key`)
 * with its `orderId` and `entryId`.
 */
export function createApp({
  publisher,
  redis,
  writes = redis,
  logger,
  instance,
  orders,
  metrics,
  tracer,
  durability,
  authenticate,
  limits,
  tutorialEndpoint = true,
  trustProxy,
  serveInternal = true,
}: AppDeps) {
  const replicated = durability ? waitForReplicas(writes, durability) : undefined;
  // For the access lines, one per request, which carry the request's method, route, status and
  // IDs and nothing else: the redaction's wildcard paths would cost 7 µs a line, 4% of a request.
  // Everything else keeps them.
  const accessLogger = logger.child({}, { redact: [] });
  const app = express();
  app.disable('x-powered-by');
  if (trustProxy !== undefined) app.set('trust proxy', trustProxy);
  if (tracer) app.use(traceRequests(tracer));
  if (metrics) app.use(metrics.http);
  app.use(accessLog(accessLogger));

  if (serveInternal) app.use(internalRoutes({ service: 'order-service', instance, redis, metrics }));

  // The contracts, as `pnpm contracts` wrote them (docs/contracts/): the bundle carries them.
  const page = docsPage(openapi, asyncapi);
  app.get('/openapi.json', (_req, res) => void res.json(openapi));
  app.get('/asyncapi.json', (_req, res) => void res.json(asyncapi));
  app.get('/docs', (_req, res) => void res.type('html').send(page));

  /**
   * Places the order. Its IDs go on the request's access line, so that an order is one line; a
   * client that left before the answer has had its line already, and the order gets its own.
   */
  async function accept(
    req: Request,
    res: Response,
    input: OrderInput,
    { idempotencyKey, open = false }: { idempotencyKey?: string | undefined; open?: boolean } = {},
  ) {
    // An open route's user is whoever the query names: its orders count for the address only, or
    // anyone could spend another user's limit.
    await limits?.check(open ? undefined : input.userId, req.ip);
    const { orderId, entryId, replayed } = await placeOrder(
      input,
      { publisher, redis: writes, metrics, replicated },
      idempotencyKey,
    );
    const message = replayed ? 'order replayed for its idempotency key' : 'order accepted';
    if (res.closed)
      accessLogger.info({ orderId, entryId, requestId: res.getHeader('x-request-id') }, message);
    else {
      const locals: AccessLogLocals = res.locals;
      locals.logFields = { orderId, entryId };
      locals.logMessage = message;
    }
    return orderId;
  }

  if (tutorialEndpoint)
    app.get('/order', async (req, res) => {
      await accept(req, res, parseQuery(OrderQuery, req), { open: true });
      res.type('text/plain').send('ok');
    });

  // The customer-facing routes: after the caller is known, when auth is on.
  const customer = authenticate ? [authenticate] : [];

  app.post('/orders', ...customer, express.json({ limit: '16kb' }), async (req: Request, res) => {
    const idempotencyKey = idempotencyKeyOf(req);
    const { userId, ...order } = parse(OrderBody, jsonBody(req), 'body');
    const input = { ...order, userId: orderingUser(callerOf(res), userId) };
    const orderId = await accept(req, res, input, { idempotencyKey });
    res
      .status(202)
      .location(`/orders/${encodeURIComponent(orderId)}`)
      .json({ orderId });
  });

  // Reads fail only when Redis cannot answer (or order-service has not yet been able to ask it
  // which generation of the read model is live): a 503, not a 500.
  const read = <T>(work: () => Promise<T>) =>
    work().catch((err: unknown) => {
      throw new UnavailableError('the order read model cannot be read now', { cause: err });
    });

  app.get('/orders', ...customer, async (req, res) => {
    const query = parseQuery(OrdersQuery, req);
    const caller = callerOf(res);
    const userId = query.userId ?? caller?.userId;
    if (userId === undefined) throw new ValidationError('userId is required', { field: 'userId' });
    // Another user's orders are not found, rather than forbidden: whether a user has any stays theirs.
    if (!mayRead(caller, userId))
      res.status(404).json({ error: `no orders of user ${userId} to show`, field: 'userId' });
    else res.json(await read(() => orders.ofUser(userId, query.limit, query.cursor)));
  });

  app.get('/orders/:orderId', ...customer, async (req, res) => {
    const { orderId } = parse(OrderIdParams, req.params, 'query');
    const order = await read(() => orders.get(orderId));
    // Another user's order is not found, as an order that does not exist: IDs cannot be probed.
    if (order === undefined || !mayRead(callerOf(res), order.userId))
      res.status(404).json({ error: `no order ${orderId}`, field: 'orderId' });
    else res.json(order);
  });

  app.all('/orders', methodNotAllowed('GET, HEAD, POST'));
  app.all('/orders/:orderId', methodNotAllowed('GET, HEAD'));
  for (const path of [...(tutorialEndpoint ? ['/order'] : []), '/openapi.json', '/asyncapi.json', '/docs'])
    app.all(path, methodNotAllowed('GET, HEAD'));
  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use(errorMiddleware(logger));
  return app;
}

/**
 * Whose order it is: the token's user (`caller`), which a body's `userId` may repeat but not
 * change (403); with auth off, the body's, which it must then name.
 */
function orderingUser(caller: Caller | undefined, userId: string | undefined): string {
  if (caller === undefined) {
    if (userId === undefined) throw new ValidationError('userId is required', { field: 'userId' });
    return userId;
  }
  if (userId !== undefined && userId !== caller.userId)
    throw new ForbiddenError("userId must be the token's own user: orders are placed for the caller only", {
      field: 'userId',
    });
  return caller.userId;
}

function parse<S extends z.ZodType>(schema: S, value: unknown, where: 'body' | 'query'): z.output<S> {
  // reportInput: to tell a missing field (`is required`) from one of the wrong type.
  const result = schema.safeParse(value ?? undefined, { reportInput: true });
  if (result.success) return result.data;
  const [issue] = result.error.issues;
  if (issue?.code === 'unrecognized_keys') {
    const [key] = issue.keys;
    throw new ValidationError(`${key} is not a field of an order (userId, productId, price)`, { field: key });
  }
  const field = issue?.path.join('.') || where;
  throw new ValidationError(`${field} ${plainly(issue, where)}`, { field });
}

/** What is wrong, in words a person can act on: `is required`, `must be a string`, or the schema's own `must ...`. */
function plainly(issue: z.core.$ZodIssue | undefined, where: 'body' | 'query'): string {
  if (issue?.code === 'invalid_type') {
    if (issue.path.length === 0) return where === 'body' ? 'must be a JSON object' : 'is invalid';
    if (issue.input === undefined) return 'is required';
    return `must be a ${issue.expected}`;
  }
  return issue?.message ?? 'is invalid';
}

/** `parse` for a query string, whose percent-escapes must be UTF-8 (see `malformedQueryParameter`). */
function parseQuery<S extends z.ZodType>(schema: S, req: Request): z.output<S> {
  const malformed = malformedQueryParameter(req.url);
  if (malformed !== undefined)
    throw new ValidationError(`${malformed} must be valid Unicode text (percent-encoded UTF-8)`, {
      field: malformed,
    });
  return parse(schema, req.query, 'query');
}

/** The request's `Idempotency-Key`, if it has one; throws `ValidationError` if it is not a valid key. */
function idempotencyKeyOf(req: Request): string | undefined {
  // Most orders come without one: `headersDistinct` builds an object of every header, so only then.
  if (req.headers['idempotency-key'] === undefined) return undefined;
  const values = req.headersDistinct['idempotency-key'];
  if (values === undefined) return undefined;
  if (values.length !== 1)
    throw new ValidationError(`${IDEMPOTENCY_HEADER} must be given once`, { field: IDEMPOTENCY_HEADER });
  const [key] = values;
  if (!IDEMPOTENCY_KEY.test(key!))
    throw new ValidationError(`${IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters`, {
      field: IDEMPOTENCY_HEADER,
    });
  return key;
}
