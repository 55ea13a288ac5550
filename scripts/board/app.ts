import { BoardError, createBoard, type Board, type Lookup } from '@msa/stream-kit/board';
import type { Logger } from '@msa/stream-kit';
import { streams } from '@msa/stream-kit/events';
import { READ_ALL_SCOPE, signToken } from '@msa/stream-kit/service';
import express, { type Express } from 'express';
import type { RedisClient } from '@msa/stream-kit';
import type { BoardConfig } from './config.ts';

/*
 * The board as this system runs it: stream-kit's board over the catalogue's streams, with orders as
 * the entity it follows, looked up and placed through order-service's HTTP API (the board never
 * reads order-service's keys: they are its own).
 */

/** The stream each event type is published on, from the catalogue. */
const STREAM_OF = new Map<string, string>(
  streams.flatMap((stream) => stream.schema.options.map((option) => [option.shape.type.value, stream.name])),
);

/** A loopback address, as BOARD_HOST or a Host header names it (with or without a port). */
const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|\[?::1\]?)(:\d+)?$/i;

/** How long the board waits for order-service. */
const ORDER_SERVICE_TIMEOUT_MS = 3_000;

interface OrderAnswer {
  orderId: string;
  userId: string;
  productId: string;
  price: number;
  status: string;
  reason?: string;
  version: number;
  history: { status: string; event: string; entryId: string; at: string }[];
}

export interface BoardAppDeps {
  readonly redis: RedisClient;
  readonly config: Pick<
    BoardConfig,
    | 'BOARD_HOST'
    | 'BOARD_TOKEN'
    | 'ORDER_SERVICE_URL'
    | 'BOARD_METRICS'
    | 'BOARD_INTERVAL_MS'
    | 'INSTANCE_ID'
    | 'AUTH_SECRET'
    | 'AUTH_ISSUER'
    | 'AUTH_AUDIENCE'
    | 'ORDER_SERVICE_TOKEN'
  >;
  readonly logger: Logger;
}

/** The board's Express app: the board at `/`, and `/healthz`. Never listens; `board.close()` ends its ticking. */
export function createBoardApp({ redis, config, logger }: BoardAppDeps): { app: Express; board: Board } {
  const orderService = config.ORDER_SERVICE_URL.replace(/\/$/, '');
  const unreachable = () =>
    new BoardError(503, `order-service cannot be reached at ${orderService}: is it running?`);
  /**
   * The Authorization header of a call, if order-service wants one: to place an order of `userId`,
   * or (`'support'`) to look any order up.
   */
  async function authorization(as: { userId: unknown } | 'support'): Promise<Record<string, string>> {
    const { AUTH_SECRET: secret, ORDER_SERVICE_TOKEN: token } = config;
    if (secret === undefined) return token === undefined ? {} : { authorization: `Bearer ${token}` };
    // An order without a user goes without a token: order-service answers 401, which the form shows.
    if (as !== 'support' && typeof as.userId !== 'string') return {};
    const claims =
      as === 'support' ? { userId: 'board', scopes: [READ_ALL_SCOPE] } : { userId: as.userId as string };
    const signed = await signToken(secret, {
      ...claims,
      ttlS: 60,
      issuer: config.AUTH_ISSUER,
      audience: config.AUTH_AUDIENCE,
    });
    return { authorization: `Bearer ${signed}` };
  }
  const board = createBoard({
    redis,
    streams,
    token: config.BOARD_TOKEN,
    metrics: config.BOARD_METRICS,
    intervalMs: config.BOARD_INTERVAL_MS,
    logger,
    entity: {
      name: 'order',
      field: 'orderId',
      async lookup(id): Promise<Lookup | undefined> {
        const res = await fetch(`${orderService}/orders/${encodeURIComponent(id)}`, {
          headers: await authorization('support'),
          signal: AbortSignal.timeout(ORDER_SERVICE_TIMEOUT_MS),
        }).catch(() => {
          throw unreachable();
        });
        if (res.status === 404) return undefined;
        if (res.status === 400) {
          const { error } = (await res.json()) as { error?: string };
          throw new BoardError(400, error ?? 'not an order id', 'id');
        }
        if (res.status === 401 || res.status === 403)
          throw new BoardError(
            502,
            "order-service refused the board's token: give the board the services' AUTH_SECRET, or an ORDER_SERVICE_TOKEN with the orders:read-all scope",
          );
        if (!res.ok) throw unreachable();
        const { history, ...order } = (await res.json()) as OrderAnswer;
        return {
          summary: order,
          steps: history.flatMap(({ event, entryId, status }) => {
            const stream = STREAM_OF.get(event);
            return stream ? [{ stream, entryId, event, status }] : [];
          }),
        };
      },
      async place(body) {
        const res = await fetch(`${orderService}/orders`, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            ...(await authorization(body as { userId: unknown })),
          },
          body: JSON.stringify(body),
          signal: AbortSignal.timeout(ORDER_SERVICE_TIMEOUT_MS),
        }).catch(() => {
          throw unreachable();
        });
        return { status: res.status, body: await res.json().catch(() => ({ error: res.statusText })) };
      },
    },
  });
  const app = express();
  app.disable('x-powered-by');
  if (LOOPBACK.test(config.BOARD_HOST))
    // Bound to this machine, it answers only requests made to this machine: a web page whose
    // domain an attacker points at 127.0.0.1 (DNS rebinding) gets nothing.
    app.use((req, res, next) => {
      if (LOOPBACK.test(req.headers.host ?? '')) return next();
      res.status(421).json({ error: 'this board answers only requests to localhost (see BOARD_HOST)' });
    });
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok', instance: config.INSTANCE_ID });
  });
  app.use('/', board.router);
  return { app, board };
}
