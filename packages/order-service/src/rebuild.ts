import { compareIds, replay, type Handler, type RedisClient, type ReplayReport } from '@msa/stream-kit';
import { slotTag } from '@msa/stream-kit/lua';
import { OrderEvents, PaymentEvents, type OrderEvent } from '@msa/stream-kit/events';
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
  redis: RedisClient;
  logger: Logger;
  /** `PAYMENT_TIMEOUT_MS`: the one the orders were placed under, or their due times differ. */
  paymentTimeoutMs: number;
  /** The consumer name of the replay in the new generation's group. */
  consumer: string;
  /** Handlers run side by side while replaying. @defaultValue 16 */
  concurrency?: number;
  /** Make the new generation the live one if no order differs from the live one's. @defaultValue true */
  switchTo?: boolean;
  /** Make it the live one even if orders differ (after a change to the projection, say). @defaultValue false */
  force?: boolean;
}

export interface Rebuilt {
  /** The generation that was live when the rebuild began. */
  previous: ReadModel;
  /** The generation rebuilt. */
  model: ReadModel;
  /** Whether `model` is live now. */
  switched: boolean;
  /** Orders placed before this (ms) were left out: their payments may have been trimmed away. */
  since: number;
  replayed: ReplayReport;
  /** The orders the replay placed in the new generation. */
  orderIds: Set<string>;
  /** Those that differ between the two generations, though neither has a step from after the replay's end. */
  differing: string[];
  /** Those that differ because one generation has applied an event from after the replay's end. */
  changedSince: string[];
  /** Entries the replay dead-lettered (to `deadLetterStream`), the live projection's own dead letters among them. */
  deadLetters: number;
  /** Where the replay's dead letters are, apart from the live ones. */
  deadLetterStream: string;
}

/**
 * Rebuilds the order read model from the streams into a new generation (fresh keys, a group of its
 * own), replaying order-events, then payment-events, from their first entry up to where they ended
 * when it began; compares each rebuilt order with the live generation's; then, unless told not to,
 * makes it the live one, but only if no order differs (or `force`). The live generation keeps
 * serving and projecting meanwhile. Nothing is written outside the new generation's keys: nothing
 * is published (the streams hold every cancellation already), and the replay's dead letters go to
 * a stream of its own. order-service instances read the live generation when they start: until
 * they restart they go on with the previous one, and an order's cancellation is published once
 * whichever cancels it.
 *
 * Only what the streams still hold is rebuilt (their retention, 7 days by default): once
 * payment-events has been trimmed, orders older than its oldest entry are left out, since their
 * payments may be gone.
 */
export async function rebuildReadModel({
  redis,
  logger,
  paymentTimeoutMs,
  consumer,
  concurrency = 16,
  switchTo = true,
  force = false,
}: RebuildOptions): Promise<Rebuilt> {
  const previous = await liveReadModel(redis);
  // A number never used before: a rebuild that failed keeps its own, keys and group.
  await redis.set(LAST_GENERATION_KEY, previous.generation, 'NX');
  const model = readModel(await redis.incr(LAST_GENERATION_KEY), slotTag(redis, OrderEvents.name));
  const since = await oldestPaymentMs(redis);
  logger.info(
    { generation: model.generation, previous: previous.generation, since },
    'rebuilding the read model',
  );

  const replaying: { since: number; until?: Record<string, string | undefined> } = { since };
  const orders = redisOrders({ redis, logger, paymentTimeoutMs, model, replay: replaying });
  const orderIds = new Set<string>();
  const placing: Handler<OrderEvent> = async (event, context) => {
    await orders.orderEventsHandler(event, context);
    if (event.type === 'order-created' && msOfId(context.id) >= since) orderIds.add(event.orderId);
  };
  const deadLetterStream = `${model.order('').slice(0, -':order:'.length)}:dead-letters`;
  // prettier-ignore
  const replayed = await replay(redis, model.group, consumer, [
    { stream: OrderEvents, handler: placing },
    { stream: PaymentEvents, handler: orders.paymentEventsHandler },
  ], { logger, concurrency, count: 100, deadLetterStream, onEnds: (ends) => (replaying.until = ends) });

  const ends = Object.fromEntries(Object.entries(replayed).map(([stream, { until }]) => [stream, until]));
  const { differing, changedSince } = await compareGenerations(redis, previous, model, orderIds, ends);
  const deadLetters = await redis.xlen(deadLetterStream);
  const switched = switchTo && (differing.length === 0 || force);
  if (switched) {
    await redis.set(LIVE_GENERATION_KEY, model.generation);
    logger.info(
      { generation: model.generation, previous: previous.generation },
      'read model generation switched',
    );
  }
  // prettier-ignore
  return { previous, model, switched, since, replayed, orderIds, differing, changedSince, deadLetters, deadLetterStream };
}

/**
 * The ms before which payment-events may have lost entries: 0 while it has never lost one (or does
 * not exist), else its oldest entry's, or, when it is empty, just after the last ID it ever had.
 */
async function oldestPaymentMs(redis: RedisClient): Promise<number> {
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
 * The orders among `orderIds` that differ between generations `a` and `b` (or are missing from
 * one), apart: those where one generation has applied an event from after the replay's end
 * (`ends`, by stream) are `changedSince`, a difference that goes once both have applied it.
 */
async function compareGenerations(
  redis: RedisClient,
  a: ReadModel,
  b: ReadModel,
  orderIds: Iterable<string>,
  ends: Record<string, string | undefined>,
): Promise<{ differing: string[]; changedSince: string[] }> {
  const ids = [...orderIds];
  const differing: string[] = [];
  const changedSince: string[] = [];
  const afterEnd = (order: Record<string, string>) =>
    stepsOf(order).some(({ event, entryId }) => {
      const end = ends[String(event).startsWith('order-') ? OrderEvents.name : PaymentEvents.name];
      return end === undefined || compareIds(String(entryId), end) > 0;
    });
  for (let start = 0; start < ids.length; start += 500) {
    const page = ids.slice(start, start + 500);
    const pipeline = redis.pipeline();
    for (const orderId of page) pipeline.hgetall(a.order(orderId)).hgetall(b.order(orderId));
    const replies = ((await pipeline.exec()) ?? []).map(([, reply]) => reply as Record<string, string>);
    page.forEach((orderId, i) => {
      const [inA, inB] = [replies[2 * i]!, replies[2 * i + 1]!];
      if (sameOrder(inA, inB)) return;
      (afterEnd(inA) || afterEnd(inB) ? changedSince : differing).push(orderId);
    });
  }
  return { differing, changedSince };
}

const stepsOf = (order: Record<string, string>) =>
  JSON.parse(order.history ?? '[]') as { status: string; event: string; entryId: string; at: string }[];

/** Whether two generations show an order alike, as `GET /orders/<id>` would. */
function sameOrder(a: Record<string, string>, b: Record<string, string>): boolean {
  const fields = ['orderId', 'userId', 'productId', 'price', 'status', 'reason', 'version'];
  if (fields.some((field) => a[field] !== b[field])) return false;
  // The history is JSON that Lua's cjson writes with no key order: compared as data. A step written
  // before steps were dated by their entries holds an ISO time of its own: its `at` is not compared.
  const [x, y] = [stepsOf(a), stepsOf(b)];
  const entryDated = (at: string) => /^\d+$/.test(at);
  return (
    x.length === y.length &&
    x.every(
      (step, i) =>
        step.status === y[i]!.status &&
        step.event === y[i]!.event &&
        step.entryId === y[i]!.entryId &&
        (step.at === y[i]!.at || !entryDated(step.at) || !entryDated(y[i]!.at)),
    )
  );
}
