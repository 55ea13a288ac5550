import { OrderCreated } from '@msa/stream-kit/events';
import { authAnswers, chassisRoutes, ErrorBody, type HttpRoute } from '@msa/stream-kit/service';
import { z } from 'zod';

/*
 * notification-service's HTTP contract: the schema `GET /notifications` parses its query with
 * (app.ts), the shape of its answer, and its routes as the OpenAPI document describes them
 * (`pnpm contracts` writes docs/contracts/openapi.json from `routes`).
 */

/** The most notifications one page of `GET /notifications` holds. */
export const MAX_PAGE_SIZE = 1_000;

const LIMIT_MESSAGE = `must be a whole number from 1 to ${MAX_PAGE_SIZE}`;
const CURSOR_MESSAGE = 'must be a nextCursor from an earlier answer';

/**
 * A cursor is where the next page starts in each of the user's logs (append-only, oldest first,
 * so the index of an entry never changes; one log on one Redis, one per stream on a cluster),
 * written so that clients take it as it is: `i<index>[.<index>]` in base64url.
 */
export const encodeCursor = (indexes: readonly number[]) =>
  Buffer.from(`i${indexes.join('.')}`).toString('base64url');

const Cursor = z
  .string(CURSOR_MESSAGE)
  .transform((cursor, ctx) => {
    const text = Buffer.from(cursor, 'base64url').toString('latin1');
    const match = /^i((0|[1-9]\d{0,14})(\.(0|[1-9]\d{0,14})){0,7})$/.exec(text);
    const indexes = match ? match[1]!.split('.').map(Number) : [];
    // Buffer ignores what is not base64url: only the cursor's own spelling counts.
    if (!match || encodeCursor(indexes) !== cursor) {
      ctx.addIssue({ code: 'custom', message: CURSOR_MESSAGE });
      return z.NEVER;
    }
    return indexes;
  })
  .optional();

export const Query = z.object({
  // The token's user, if left out (with auth on).
  userId: OrderCreated.shape.userId.optional(),
  limit: z
    .string(LIMIT_MESSAGE)
    .regex(/^\d{1,7}$/, LIMIT_MESSAGE)
    .transform(Number)
    .pipe(z.number().int().min(1, LIMIT_MESSAGE).max(MAX_PAGE_SIZE, LIMIT_MESSAGE))
    .optional(),
  cursor: Cursor,
});

/** A notification as `GET /notifications` lists it (sent-log.ts's `SentNotification`). */
export const SentNotificationView = z.object({
  channel: z.enum(['mail', 'sms']),
  event: z.string().meta({ description: 'The event type that caused it, e.g. `order-created`.' }),
  orderId: z
    .string()
    .optional()
    .meta({ description: "Absent for payments of the tutorial's Java payment-service, which has none." }),
  entryId: z.string().meta({ description: 'The stream entry that caused it.' }),
  time: z.string().meta({ description: 'When it was sent, ISO 8601.' }),
});

export const routes: readonly HttpRoute[] = [
  {
    method: 'get',
    path: '/notifications',
    summary: 'What was sent to a user, oldest first, a page at a time.',
    description: "`userId` left out: the token's user. Another user's need the `orders:read-all` scope.",
    query: Query,
    auth: true,
    answers: {
      200: {
        description: 'A page; while `nextCursor` is not null, pass it as `cursor` for the next one.',
        body: z.object({ notifications: z.array(SentNotificationView), nextCursor: z.string().nullable() }),
      },
      400: { description: 'A parameter is invalid; `field` names it.', body: ErrorBody },
      ...authAnswers,
      404: { description: "Another user's, without the `orders:read-all` scope.", body: ErrorBody },
      503: {
        description: 'Redis cannot be reached or answers too slowly: try again later.',
        body: ErrorBody,
      },
    },
  },
  ...chassisRoutes,
];
