import express, { type ErrorRequestHandler, type Request } from 'express';
import { EventValidationError, type Publisher } from '@msa/stream-kit';
import { OrderCreated, OrderEvents } from '@msa/stream-kit/events';
import { isStreamIdError, malformedQueryParameter, readinessHandler } from '@msa/stream-kit/service';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { z } from 'zod';
import { IdempotencyConflictError, placeOrder, type OrderInput, type PlacedOrder } from './place-order.ts';

/** Amounts in plain digits with at most two decimals, so they cross the wire exactly as sent. */
const DECIMAL = /^\d+(\.\d{1,2})?$/;
const PRICE_MESSAGE = 'must be a positive number with at most 2 decimals';

const OrderBody = z.object({
  userId: OrderCreated.shape.userId,
  productId: OrderCreated.shape.productId,
  price: z
    .number(PRICE_MESSAGE)
    .positive(PRICE_MESSAGE)
    .max(1e12)
    .refine((price) => DECIMAL.test(String(price)), PRICE_MESSAGE),
});

/** The tutorial's `GET /order`: every value arrives as a string. */
const OrderQuery = OrderBody.extend({
  price: z
    .string(PRICE_MESSAGE)
    .trim()
    .regex(DECIMAL, PRICE_MESSAGE)
    .transform(Number)
    .pipe(z.number().positive(PRICE_MESSAGE).max(1e12)),
});

/** Printable ASCII, as the header may carry it: a UUID or any other client-chosen token. */
const IDEMPOTENCY_KEY = /^[\x20-\x7e]{1,255}$/;
const IDEMPOTENCY_FIELD = 'Idempotency-Key';

export interface AppDeps {
  /** Publishes orders placed without an idempotency key. */
  publisher: Publisher;
  /** A request connection (`openRequestConnection`): idempotent orders and `/readyz`. */
  redis: Redis;
  logger: Logger;
}

/**
 * The order-service HTTP API:
 *
 * - `POST /orders` (JSON `userId`, `productId`, `price`) → 202 `{orderId}`. With an
 *   `Idempotency-Key` header (1 to 255 printable ASCII characters, else 400), the order is placed
 *   once per key: the same key with the same order (after validation) answers 202 with the same
 *   `orderId` and publishes nothing more, for 24 h after the first request; the same key with
 *   another order answers 409 `{error, field: 'Idempotency-Key'}`.
 * - `GET /order?userId=&productId=&price=` → 200 `ok` (the tutorial's endpoint).
 *
 * `userId` and `productId` are the catalogue's IDs: 1 to 128 characters after trimming, valid
 * Unicode (a lone surrogate, or a query's percent-escape that is not UTF-8, is a 400 naming the
 * field: Redis would store it as U+FFFD, and two users would become one).
 * - `GET /healthz` → 200 while the process runs; `GET /readyz` → 200 `{status: 'ready'}` when
 *   Redis takes a write (`order-service:readyz`) within a second, else 503
 *   `{status: 'not ready', reason}`.
 *
 * Bad input gets 4xx `{error, field}`; Redis unreachable or too slow gets 503.
 */
export function createApp({ publisher, redis, logger }: AppDeps) {
  // For the two lines logged per order, which carry two IDs and nothing else: the redaction's
  // wildcard paths would cost 7 µs a line, 4% of a request. Everything else keeps them.
  const orderLog = logger.child({}, { redact: [] });
  const app = express();
  app.disable('x-powered-by');

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  app.get('/readyz', readinessHandler(redis, 'order-service'));

  async function accept(input: OrderInput, idempotencyKey?: string) {
    let order: PlacedOrder;
    try {
      order = await placeOrder(input, { publisher, redis }, idempotencyKey);
    } catch (err) {
      if (err instanceof IdempotencyConflictError)
        throw new RequestError(409, err.message, IDEMPOTENCY_FIELD);
      // The catalogue may be stricter than the route's schema in some corner: still bad input.
      if (err instanceof EventValidationError) throw new RequestError(400, err.message);
      if (isStreamIdError(err))
        logger.error(
          { err, stream: OrderEvents.name },
          'order-events cannot take new entries (its IDs run ahead of the clock or are used up); orders are refused until an operator repairs it (README: Entry IDs)',
        );
      else logger.warn({ err }, 'cannot publish the order');
      throw new RequestError(503, 'orders cannot be accepted right now, try again later');
    }
    const { orderId, entryId } = order;
    if (order.replayed) orderLog.info({ orderId, entryId }, 'order replayed for its idempotency key');
    else orderLog.info({ orderId, entryId }, 'order accepted');
    return order;
  }

  app.get('/order', async (req, res) => {
    await accept(parseQuery(OrderQuery, req));
    res.type('text/plain').send('ok');
  });

  app.post('/orders', express.json({ limit: '16kb' }), async (req: Request, res) => {
    const idempotencyKey = idempotencyKeyOf(req);
    const { orderId } = await accept(parse(OrderBody, req.body, 'body'), idempotencyKey);
    res.status(202).json({ orderId });
  });

  app.use((_req, res) => {
    res.status(404).json({ error: 'not found' });
  });
  app.use(errorHandler(logger));
  return app;
}

/** Bad input, as the client should see it: a status and the field at fault. */
class RequestError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

function parse<S extends z.ZodType>(schema: S, value: unknown, where: 'body' | 'query'): z.output<S> {
  const result = schema.safeParse(value ?? undefined);
  if (result.success) return result.data;
  const [issue] = result.error.issues;
  const field = issue?.path.join('.') || where;
  throw new RequestError(400, `${field}: ${issue?.message ?? 'invalid'}`, field);
}

/** `parse` for a query string, whose percent-escapes must be UTF-8 (see `malformedQueryParameter`). */
function parseQuery<S extends z.ZodType>(schema: S, req: Request): z.output<S> {
  const malformed = malformedQueryParameter(req.url);
  if (malformed !== undefined)
    throw new RequestError(
      400,
      `${malformed}: must be valid Unicode text (percent-encoded UTF-8)`,
      malformed,
    );
  return parse(schema, req.query, 'query');
}

/** The request's `Idempotency-Key`, if it has one; throws a 400 if it is not a valid key. */
function idempotencyKeyOf(req: Request): string | undefined {
  // Most orders come without one: `headersDistinct` builds an object of every header, so only then.
  if (req.headers['idempotency-key'] === undefined) return undefined;
  const values = req.headersDistinct['idempotency-key'];
  if (values === undefined) return undefined;
  if (values.length !== 1)
    throw new RequestError(400, `${IDEMPOTENCY_FIELD}: must be given once`, IDEMPOTENCY_FIELD);
  const [key] = values;
  if (!IDEMPOTENCY_KEY.test(key!))
    throw new RequestError(
      400,
      `${IDEMPOTENCY_FIELD}: must be 1 to 255 printable ASCII characters`,
      IDEMPOTENCY_FIELD,
    );
  return key;
}

/**
 * Express's body parser fails with the status to answer (4xx) and, mostly, a `type`. A body that
 * does not inflate as its Content-Encoding says has no `type`: zlib's error, with status 400.
 */
const BODY_PARSER_ERRORS: Record<string, string> = {
  'entity.parse.failed': 'body: malformed JSON',
  'entity.too.large': 'body: too large (16 kB at most)',
  'encoding.unsupported': 'body: unsupported content encoding',
  'charset.unsupported': 'body: unsupported charset',
  'request.aborted': 'body: request aborted',
  'request.size.invalid': 'body: size does not match Content-Length',
};

/** The client's fault, as the body parser saw it: its status and a message naming the body. */
function bodyParserError(err: unknown): { status: number; message: string } | undefined {
  const { status, type } = (err ?? {}) as { status?: unknown; type?: unknown };
  if (typeof status !== 'number' || status < 400 || status > 499) return undefined;
  const known = typeof type === 'string' && Object.hasOwn(BODY_PARSER_ERRORS, type);
  return { status, message: known ? BODY_PARSER_ERRORS[type]! : 'body: cannot be decoded' };
}

function errorHandler(logger: Logger): ErrorRequestHandler {
  return (err, _req, res, _next) => {
    const bodyError = bodyParserError(err);
    if (err instanceof RequestError) {
      res.status(err.status).json({ error: err.message, field: err.field });
    } else if (bodyError) {
      res.status(bodyError.status).json({ error: bodyError.message, field: 'body' });
    } else {
      logger.error({ err }, 'unexpected error');
      res.status(500).json({ error: 'internal error' });
    }
  };
}
