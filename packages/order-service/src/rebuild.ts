import { replay, type Handler, type ReplayReport } from '@msa/stream-kit';
import { OrderEvents, PaymentEvents, type OrderEvent } from '@msa/stream-kit/events';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { redisOrders } from './orders.ts';
import {
  LAST_GENERATION_KEY,
  LIVE_GENERATION_KEY,
  liveReadModel,
  readModel,
  type ReadModel,
} from './read-model.ts';

export interface RebuildOptions {
  redis: Redis;
  logger: Logger;
  /** `PAYMENT_TIMEOUT_MS`: the one the orders were placed under, or their due times differ. */
  paymentTimeoutMs: number;
  /** The consumer name of the replay in the new generation's group. */
  consumer: string;
  /** Handlers run side by side while replaying. @defaultValue 16 */
  concurrency?: number;
  /** Make the new generation the live one once it has caught up. @defaultValue true */
  switchTo?: boolean;
}

export interface Rebuilt {
  /** The generation that was live when the rebuild began. */
  previous: ReadModel;
  /** The generation rebuilt (live now, if switched to). */
  model: ReadModel;
  /** Orders placed before this (ms) were left out: their payments may have been trimmed away. */
  since: number;
  replayed: ReplayReport;
  /** The orders the replay placed in the new generation. */
  orderIds: Set<string>;
}

/**
 * Rebuilds the order read model from the streams into a new generation (fresh keys, a group of its
 * own), replaying order-events, then payment-events, from their first entry up to where they ended
 * when it began; then, unless told not to, makes it the live one. The live generation keeps serving
 * and projecting meanwhile. Nothing is published: the streams hold every cancellation already.
 * order-service instances read the live generation when they start: until they restart they go on
 * with the previous one, and an order's cancellation is published once whichever cancels it.
 *
 * Only what the streams still hold is rebuilt (their retention, 7 days by default): orders older
 * than the oldest payment entry are left out, since their payments may be gone.
 */
export async function rebuildReadModel({
  redis,
  logger,
  paymentTimeoutMs,
  consumer,
  concurrency = 16,
  switchTo = true,
}: RebuildOptions): Promise<Rebuilt> {
  const previous = await liveReadModel(redis);
  // A number never used before: a rebuild that failed keeps its own, keys and group.
  await redis.set(LAST_GENERATION_KEY, previous.generation, 'NX');
  const model = readModel(await redis.incr(LAST_GENERATION_KEY));
  const since = await oldestPaymentMs(redis);
  logger.info(
    { generation: model.generation, previous: previous.generation, since },
    'rebuilding the read model',
  );

  const orders = redisOrders({ redis, logger, paymentTimeoutMs, model, replay: { since } });
  const orderIds = new Set<string>();
  const placing: Handler<OrderEvent> = async (event, context) => {
    await orders.orderEventsHandler(event, context);
    if (event.type === 'order-created' && msOfId(context.id) >= since) orderIds.add(event.orderId);
  };
  // prettier-ignore
  const replayed = await replay(redis, model.group, consumer, [
    { stream: OrderEvents, handler: placing },
    { stream: PaymentEvents, handler: orders.paymentEventsHandler },
  ], { logger, concurrency, count: 100 });

  if (switchTo) {
    await redis.set(LIVE_GENERATION_KEY, model.generation);
    logger.info(
      { generation: model.generation, previous: previous.generation },
      'read model generation switched',
    );
  }
  return { previous, model, since, replayed, orderIds };
}

/**
 * The ms before which payment-events may have lost entries: 0 while it has never lost one (or does
 * not exist), else its oldest entry's, or, when it is empty, just after the last ID it ever had.
 */
async function oldestPaymentMs(redis: Redis): Promise<number> {
  const info = (await redis.xinfo('STREAM', PaymentEvents.name).catch(() => undefined)) as
    unknown[] | undefined;
  if (!info) return 0;
  const field = (name: string) => info[info.indexOf(name) + 1];
  // Every entry ever added is still there: nothing lost (trimming leaves max-deleted-entry-id be).
  if (Number(field('entries-added')) === Number(field('length'))) return 0;
  const first = field('first-entry') as [string, string[]] | null;
  return first ? msOfId(first[0]) : msOfId(String(field('last-generated-id'))) + 1;
}

const msOfId = (id: string) => Number(id.slice(0, id.indexOf('-')));

/**
 * The orders among `orderIds` that differ between generations `a` and `b` (or are missing from one):
 * for `pnpm orders:rebuild` to say how the rebuilt read model compares with the live one.
 */
export async function differingOrders(
  redis: Redis,
  a: ReadModel,
  b: ReadModel,
  orderIds: Iterable<string>,
): Promise<string[]> {
  const ids = [...orderIds];
  const differing: string[] = [];
  for (let start = 0; start < ids.length; start += 500) {
    const page = ids.slice(start, start + 500);
    const pipeline = redis.pipeline();
    for (const orderId of page) pipeline.hgetall(a.order(orderId)).hgetall(b.order(orderId));
    const replies = ((await pipeline.exec()) ?? []).map(([, reply]) => reply as Record<string, string>);
    page.forEach((orderId, i) => {
      if (!sameOrder(replies[2 * i]!, replies[2 * i + 1]!)) differing.push(orderId);
    });
  }
  return differing;
}

function sameOrder(a: Record<string, string>, b: Record<string, string>): boolean {
  // The history is JSON that Lua's cjson writes with no key order: compared as data.
  const { history: ha = '[]', ...restA } = a;
  const { history: hb = '[]', ...restB } = b;
  const steps = (json: string) =>
    (JSON.parse(json) as Record<string, unknown>[]).map((s) =>
      [s.status, s.event, s.entryId, s.at].join(' '),
    );
  return (
    JSON.stringify(Object.entries(restA).sort()) === JSON.stringify(Object.entries(restB).sort()) &&
    steps(ha).join('\n') === steps(hb).join('\n')
  );
}
