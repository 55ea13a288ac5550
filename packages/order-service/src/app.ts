import express, { type ErrorRequestHandler, type Request } from 'express';
import { EventValidationError, OrderCreated, type Publisher } from '@msa/stream-kit';
import type { Logger } from 'pino';
import { z } from 'zod';
import { placeOrder, type OrderInput, type PlacedOrder } from './place-order.ts';

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

export interface AppDeps {
  publisher: Publisher;
  logger: Logger;
}

export function createApp({ publisher, logger }: AppDeps) {
  const app = express();
  app.disable('x-powered-by');

  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });

  async function accept(input: OrderInput) {
    let order: PlacedOrder;
    try {
      order = await placeOrder(input, { publisher });
    } catch (err) {
      // The catalogue may be stricter than the route's schema in some corner: still bad input.
      if (err instanceof EventValidationError) throw new RequestError(400, err.message);
      logger.warn({ err }, 'cannot publish the order');
      throw new RequestError(503, 'orders cannot be accepted right now, try again later');
    }
    logger.info({ orderId: order.orderId, entryId: order.entryId }, 'order accepted');
    return order;
  }

  app.get('/order', async (req, res) => {
    await accept(parse(OrderQuery, req.query, 'query'));
    res.type('text/plain').send('ok');
  });

  app.post('/orders', express.json({ limit: '16kb' }), async (req: Request, res) => {
    const { orderId } = await accept(parse(OrderBody, req.body, 'body'));
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

/** Express's body parser marks its own errors with a `type` and the status to answer. */
const BODY_PARSER_ERRORS: Record<string, string> = {
  'entity.parse.failed': 'body: malformed JSON',
  'entity.too.large': 'body: too large (16 kB at most)',
  'encoding.unsupported': 'body: unsupported content encoding',
  'charset.unsupported': 'body: unsupported charset',
  'request.aborted': 'body: request aborted',
};

function errorHandler(logger: Logger): ErrorRequestHandler {
  return (err, _req, res, _next) => {
    if (err instanceof RequestError) {
      res.status(err.status).json({ error: err.message, field: err.field });
    } else if (typeof err?.type === 'string' && err.type in BODY_PARSER_ERRORS) {
      res.status(err.status ?? 400).json({ error: BODY_PARSER_ERRORS[err.type], field: 'body' });
    } else {
      logger.error({ err }, 'unexpected error');
      res.status(500).json({ error: 'internal error' });
    }
  };
}
