import { OrderCreated } from '@msa/stream-kit/events';
import { authAnswers, chassisRoutes, ErrorBody, type HttpRoute } from '@msa/stream-kit/service';
import { z } from 'zod';

/*
 * order-service's HTTP contract: the schemas its routes parse their input with (app.ts), the
 * shapes of its answers, and its routes as the OpenAPI document describes them (`pnpm contracts`
 * writes docs/contracts/openapi.json from `routes`).
 */

/** Amounts in plain digits with at most two decimals, so they cross the wire exactly as sent. */
const DECIMAL = /^\d+(\.\d{1,2})?$/;
const PRICE_MESSAGE = 'must be a positive number with at most 2 decimals';
const PRICE_LIMIT = 'must be at most 1000000000000';

/**
 * An order as `POST /orders` takes it: these three fields, and no other. `userId` may be left out
 * when the caller has a token: the order is its user's.
 */
export const OrderBody = z.strictObject({
  userId: OrderCreated.shape.userId.optional(),
  productId: OrderCreated.shape.productId,
  price: z
    .number(PRICE_MESSAGE)
    .positive(PRICE_MESSAGE)
    .max(1e12, PRICE_LIMIT)
    .refine((price) => DECIMAL.test(String(price)), PRICE_MESSAGE),
});

/** The tutorial's `GET /order`: every value arrives as a string; other parameters are ignored. */
export const OrderQuery = z.object({
  ...OrderBody.shape,
  userId: OrderCreated.shape.userId,
  price: z
    .string(PRICE_MESSAGE)
    .trim()
    .regex(DECIMAL, PRICE_MESSAGE)
    .transform(Number)
    .pipe(z.number().positive(PRICE_MESSAGE).max(1e12, PRICE_LIMIT)),
});

/** Printable ASCII, as the header may carry it: a UUID or any other client-chosen token. */
export const IDEMPOTENCY_KEY = /^[\x20-\x7e]{1,255}$/;

/** `GET /orders?userId=`: a user's orders (the token's user's, if left out), a page at a time. */
export const OrdersQuery = z.object({
  userId: OrderCreated.shape.userId.optional(),
  limit: z.coerce
    .number('must be a whole number from 1 to 100')
    .int('must be a whole number from 1 to 100')
    .min(1, 'must be a whole number from 1 to 100')
    .max(100, 'must be a whole number from 1 to 100')
    .default(20),
  cursor: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,400}$/, "must be a page's nextCursor")
    .optional(),
});

/** `GET /orders/{orderId}`'s path. */
export const OrderIdParams = z.object({ orderId: OrderCreated.shape.orderId });

const OrderStatus = z.enum(['PENDING', 'PAID', 'CANCELLED']);

/** An order as `GET /orders/{orderId}` answers it (orders.ts's `Order`). */
export const OrderView = z.object({
  orderId: z.string(),
  userId: z.string(),
  productId: z.string(),
  price: z.number(),
  status: OrderStatus,
  reason: z.string().optional().meta({ description: 'Why it was cancelled.' }),
  version: z.number().int().meta({ description: '1 when placed, one more for each step applied.' }),
  history: z.array(
    z.object({
      status: OrderStatus,
      event: z.string().meta({ description: 'The event that made the step, e.g. `payment-completed`.' }),
      entryId: z.string(),
      at: z.string().meta({ description: "ISO 8601: the time of its entry ID, on Redis's clock." }),
    }),
  ),
});

const refused = (description: string) => ({ description, body: ErrorBody });
const unavailable = refused('Redis cannot be reached or answers too slowly: try again later.');

export const routes: readonly HttpRoute[] = [
  {
    method: 'post',
    path: '/orders',
    summary: 'Place an order: published as order-created on order-events.',
    description:
      'With an Idempotency-Key, the same key and order within 24 h answer the same orderId and publish nothing more.',
    headers: z.object({
      'Idempotency-Key': z.string().regex(IDEMPOTENCY_KEY).optional(),
    }),
    body: OrderBody,
    auth: true,
    answers: {
      202: {
        description: 'Accepted: published; `Location` is `/orders/{orderId}`.',
        body: z.object({ orderId: z.string() }),
      },
      400: refused('A field, the body or the Idempotency-Key is invalid; `field` names it.'),
      ...authAnswers,
      403: refused("The body's userId is not the token's user."),
      409: refused('The Idempotency-Key was used for another order.'),
      413: refused('The body is over 16 kB.'),
      415: refused('The body is not JSON.'),
      429: refused(
        'Over a rate limit (RATE_LIMIT_PER_USER, RATE_LIMIT_PER_ADDRESS): `Retry-After` says in how many seconds to try again.',
      ),
      503: unavailable,
    },
  },
  {
    method: 'get',
    path: '/order',
    summary: "The tutorial's way to place an order: its fields as query parameters.",
    description:
      'Open to anyone, for wire compatibility with the Java tutorial: it places orders for any user. Off with TUTORIAL_ENDPOINT=false.',
    query: OrderQuery,
    answers: {
      200: { description: 'Accepted: published.', contentType: 'text/plain' },
      400: refused('A parameter is invalid; `field` names it.'),
      429: refused('Over a rate limit: `Retry-After` says in how many seconds to try again.'),
      503: unavailable,
    },
  },
  {
    method: 'get',
    path: '/orders',
    summary: "A user's orders, newest first, a page at a time.",
    description:
      "`userId` left out: the token's user. Another user's orders need the `orders:read-all` scope.",
    query: OrdersQuery,
    auth: true,
    answers: {
      200: {
        description: 'A page; pass `nextCursor` as `cursor` for the next one.',
        body: z.object({ orders: z.array(OrderView), nextCursor: z.string().optional() }),
      },
      400: refused('A parameter is invalid; `field` names it.'),
      ...authAnswers,
      404: refused("Another user's, without the `orders:read-all` scope."),
      503: unavailable,
    },
  },
  {
    method: 'get',
    path: '/orders/{orderId}',
    summary: 'An order: its status and the history of its steps.',
    params: OrderIdParams,
    auth: true,
    answers: {
      200: { description: 'The order.', body: OrderView },
      400: refused('The orderId is invalid.'),
      ...authAnswers,
      404: refused(
        "No such order (yet: the read model follows order-events within milliseconds), or another user's without the `orders:read-all` scope.",
      ),
      503: unavailable,
    },
  },
  {
    method: 'get',
    path: '/openapi.json',
    summary: 'This document: the HTTP routes, as OpenAPI 3.1.',
    answers: { 200: { description: 'The document.', contentType: 'application/json' } },
  },
  {
    method: 'get',
    path: '/asyncapi.json',
    summary:
      'The event streams, as AsyncAPI 3.0: channels, messages, consumer groups, dead letters, retries.',
    answers: { 200: { description: 'The document.', contentType: 'application/json' } },
  },
  {
    method: 'get',
    path: '/docs',
    summary: 'Both documents as one page to read.',
    answers: { 200: { description: 'The page.', contentType: 'text/html' } },
  },
  ...chassisRoutes,
];
