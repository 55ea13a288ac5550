/**
 * Section 4, B and C: the three services as real processes, loaded over HTTP at an offered rate
 * (an open loop), with the moment each order is accepted, paid and notified read from Redis.
 */
import { Agent, request as httpRequest } from 'node:http';
import { Redis } from 'ioredis';
import { sentLogKey } from '@msa/notification-service';
import { paymentKey } from '@msa/payment-service';
import { signToken } from '@msa/stream-kit/service';
import { startService, type RunningService } from '../../harness/services.ts';
import { now, offer, percentiles, sleep } from './support.ts';

const SENT_KEY = sentLogKey('');
const PAYMENT_KEY = paymentKey('');

/**
 * Auth for the services a bench starts with NODE_ENV=production, as deployed: without a secret
 * (or a JWKS URL) order-service and notification-service refuse to start, and with one every
 * `POST /orders` needs a bearer token (`bearerOf`). A fixed HS256 secret of the bench's own; the
 * JWKS URL, issuer and audience set empty (unset, to the services), so that none from the shell
 * changes what is measured.
 */
export const BENCH_AUTH_ENV = {
  AUTH_SECRET: 'pnpm-bench-hs256-secret-not-for-production',
  AUTH_JWKS_URL: '',
  AUTH_ISSUER: '',
  AUTH_AUDIENCE: '',
};

/** `Bearer <token>` for `userId`, signed with the bench's secret: valid for an hour, longer than a full run. */
export const bearerOf = async (userId: string) =>
  `Bearer ${await signToken(BENCH_AUTH_ENV.AUTH_SECRET, { userId })}`;

/**
 * One run of orders at a rate. Each order has a user of its own, `<tag>:<n>`, so that a write to
 * the user's sent log tells which order it was for.
 */
class Load {
  readonly sentAt: Float64Array;
  readonly acceptedAt: Float64Array;
  readonly orderIds: (string | undefined)[];
  /** When each of the order's two notifications was recorded, in the order they were. */
  readonly recordedAt: number[][];
  responses = 0;
  /** Orders with both notifications recorded. */
  completed = 0;
  readonly errors: string[] = [];

  constructor(
    readonly tag: string,
    readonly total: number,
  ) {
    this.sentAt = new Float64Array(total);
    this.acceptedAt = new Float64Array(total).fill(NaN);
    this.orderIds = new Array<string | undefined>(total);
    this.recordedAt = Array.from({ length: total }, () => []);
  }

  recorded(n: number, at: number) {
    const stamps = this.recordedAt[n];
    if (!stamps) return;
    stamps.push(at);
    if (stamps.length === 2) this.completed += 1;
  }
}

/**
 * The moment each payment record and each sent-log entry is written, as Redis announces it to a
 * connection subscribed to their keyspace notifications (hash and list commands only, so Redis
 * publishes nothing else). Keyspace events fire inside the services' Lua scripts, as each
 * command runs: the payment record is written in the same script that publishes the payment.
 */
export class Probe {
  readonly paidAt = new Map<string, number>();
  private readonly loads = new Map<string, Load>();

  private constructor(private readonly redis: Redis) {
    redis.on('pmessage', (_pattern: string, channel: string) => {
      const at = now();
      const key = channel.slice(channel.indexOf(':') + 1);
      if (key.startsWith(PAYMENT_KEY)) {
        this.paidAt.set(key.slice(PAYMENT_KEY.length), at);
      } else if (key.startsWith(SENT_KEY)) {
        const user = key.slice(SENT_KEY.length);
        const colon = user.lastIndexOf(':');
        this.loads.get(user.slice(0, colon))?.recorded(Number(user.slice(colon + 1)), at);
      }
    });
  }

  static async open(admin: Redis, url: string): Promise<Probe> {
    await admin.config('SET', 'notify-keyspace-events', 'Khl');
    const redis = new Redis(url);
    await redis.psubscribe(`__keyspace@0__:${PAYMENT_KEY}*`, `__keyspace@0__:${SENT_KEY}*`);
    return new Probe(redis);
  }

  watch(load: Load) {
    this.loads.set(load.tag, load);
  }

  close() {
    this.redis.disconnect();
  }
}

export interface Services {
  /**
   * POST /orders, with an `Authorization` header when `authorization` is given; `at` is when the
   * answer's head arrived.
   */
  post(body: string, authorization?: string): Promise<{ status: number; at: number; text: string }>;
  all: RunningService[];
  /** Stops every service and drops the client's connections. */
  stop(): Promise<void>;
}

/**
 * POST `url` on keep-alive connections: node:http, not fetch. At 2,000 orders/s Node 20's fetch
 * (undici) took more than a core of this 2-core machine, starving the services it measures, and
 * failed some requests with "other side closed"; node:http took a quarter of a core. A request
 * sent on a kept-alive socket just as the server closed it for idleness fails with ECONNRESET
 * before the server read it: it is sent again once, on a new socket, as Node's docs advise
 * (`request.reusedSocket`).
 */
export function poster(url: string, agent: Agent): Services['post'] {
  const post = (
    body: string,
    authorization: string | undefined,
    retried: boolean,
  ): ReturnType<Services['post']> =>
    new Promise((resolve, reject) => {
      const headers = {
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        ...(authorization === undefined ? {} : { authorization }),
      };
      const request = httpRequest(url, { method: 'POST', agent, headers }, (response) => {
        const at = now();
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, at, text }));
        response.on('error', reject);
      });
      request.on('error', (err: NodeJS.ErrnoException) => {
        if (!retried && request.reusedSocket && err.code === 'ECONNRESET')
          resolve(post(body, authorization, true));
        else reject(err);
      });
      request.end(body);
    });
  return (body, authorization) => post(body, authorization, false);
}

export async function startServices(url: string): Promise<Services> {
  // LOG_LEVEL info, as startService sets it: the services' own default, so each order is logged
  // as it would be in production. Neither NODE_ENV=production nor AUTH_SECRET: auth is off, and
  // the orders go without a token.
  const started = await Promise.allSettled(
    (['order-service', 'payment-service', 'notification-service'] as const).map((name) =>
      startService(name, { REDIS_URL: url, LOG_LEVEL: 'info' }),
    ),
  );
  const all = started.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const failed = started.find((result) => result.status === 'rejected');
  if (failed) {
    await Promise.all(all.map((service) => service.stop(2_000)));
    throw failed.reason;
  }
  const agent = new Agent({ keepAlive: true });
  return {
    post: poster(`${all[0]!.url}/orders`, agent),
    all,
    async stop() {
      agent.destroy();
      await Promise.all(all.map((service) => service.stop(5_000)));
    },
  };
}

/** Throws if one of the services has exited: waiting on would only time out. */
function checkAlive(services: Services) {
  for (const service of services.all) {
    const { exitCode, signalCode } = service.process;
    if (exitCode !== null || signalCode !== null)
      throw new Error(
        `${service.name} exited (${exitCode ?? signalCode}):\n${service.output().slice(-3_000)}`,
      );
  }
}

/** Waits up to `ms` for every order of `load` to be answered and notified twice; resolves to whether they were. */
export async function settle(load: Load, services: Services, ms: number): Promise<boolean> {
  const deadline = now() + ms;
  for (;;) {
    if (load.responses === load.total && load.completed === load.total) return true;
    if (now() > deadline) return false;
    checkAlive(services);
    await sleep(10);
  }
}

export interface LoadResult {
  load: Load;
  achieved: number;
  /** Whether every order was answered, paid and notified twice within the drain time. */
  drained: boolean;
  /** Per order, ms from just before its request: NaN where it did not happen. */
  accepted: number[];
  paid: number[];
  sms: number[];
  /** What did not happen for some orders, if anything. */
  missing: string[];
}

/**
 * Places `rate × seconds` orders over HTTP, then waits up to `drainMs` after the last send for
 * every one of them to be answered, paid and notified by mail and SMS.
 */
export async function runLoad(
  admin: Redis,
  probe: Probe,
  services: Services,
  { tag, rate, seconds, drainMs }: { tag: string; rate: number; seconds: number; drainMs: number },
): Promise<LoadResult> {
  const load = new Load(tag, Math.round(rate * seconds));
  probe.watch(load);
  const fail = (n: number, why: string) => {
    load.responses += 1;
    if (load.errors.length < 3) load.errors.push(`order ${n}: ${why}`);
  };
  const achieved = await offer(rate, seconds, (n) => {
    const body = JSON.stringify({ userId: `${tag}:${n}`, productId: 'product-1', price: 1000 });
    load.sentAt[n] = now();
    services.post(body).then(
      ({ status, at, text }) => {
        if (status !== 202) return fail(n, `HTTP ${status} ${text}`);
        load.orderIds[n] = (JSON.parse(text) as { orderId: string }).orderId;
        load.acceptedAt[n] = at;
        load.responses += 1;
      },
      (err: unknown) => fail(n, (err as Error).message),
    );
  });
  await settle(load, services, drainMs);
  return { ...(await outcome(admin, probe, load)), achieved };
}

/** Reads the sent logs to tell the SMS from the mail, and joins the stamps per order. */
async function outcome(admin: Redis, probe: Probe, load: Load): Promise<Omit<LoadResult, 'achieved'>> {
  const lists: string[][] = [];
  for (let start = 0; start < load.total; start += 1_000) {
    const pipeline = admin.pipeline();
    for (let n = start; n < Math.min(start + 1_000, load.total); n += 1)
      pipeline.lrange(`${SENT_KEY}${load.tag}:${n}`, 0, -1);
    for (const [err, items] of (await pipeline.exec())!) {
      if (err) throw err;
      lists.push(items as string[]);
    }
  }
  const accepted: number[] = [];
  const paid: number[] = [];
  const sms: number[] = [];
  const counts = {
    unanswered: 0,
    unpaid: 0,
    'without mail': 0,
    'without SMS': 0,
    'notified more than twice': 0,
  };
  for (let n = 0; n < load.total; n += 1) {
    const t0 = load.sentAt[n]!;
    const orderId = load.orderIds[n];
    const paidAt = orderId === undefined ? undefined : probe.paidAt.get(orderId);
    const channels = lists[n]!.map((item) => (JSON.parse(item) as { channel: string }).channel);
    const smsAt = load.recordedAt[n]![channels.indexOf('sms')];
    accepted.push(load.acceptedAt[n]! - t0);
    paid.push(paidAt === undefined ? NaN : paidAt - t0);
    sms.push(smsAt === undefined ? NaN : smsAt - t0);
    if (orderId === undefined) counts.unanswered += 1;
    if (paidAt === undefined) counts.unpaid += 1;
    if (!channels.includes('mail')) counts['without mail'] += 1;
    if (smsAt === undefined) counts['without SMS'] += 1;
    if (channels.length > 2) counts['notified more than twice'] += 1;
  }
  const missing = Object.entries(counts)
    .filter(([, count]) => count > 0)
    .map(([what, count]) => `${count} of ${load.total} orders ${what}`);
  const drained = missing.length === 0 && load.errors.length === 0;
  return { load, drained, accepted, paid, sms, missing: [...missing, ...load.errors] };
}

const valid = (samples: number[]) => samples.filter((value) => !Number.isNaN(value));

/** Whether a step of the rate ladder held, and if not, why. */
export function judge(step: LoadResult, rate: number, drainMs: number): string | undefined {
  if (step.load.errors.length > 0) return `requests failed (${step.load.errors[0]})`;
  if (step.achieved < 0.95 * rate)
    return `the load generator achieved only ${Math.round(step.achieved)}/s of the ${rate}/s offered`;
  const quarter = Math.floor(step.sms.length / 4);
  const first = percentiles(valid(step.sms.slice(0, quarter))).p50;
  const lastQuarter = valid(step.sms.slice(-quarter));
  const last = percentiles(lastQuarter).p50;
  if (lastQuarter.length >= quarter / 2 && !(last <= 2 * first + 10))
    return `lag grew (order → SMS p50 ${first.toFixed(0)} ms in the first quarter, ${last.toFixed(0)} ms in the last)`;
  if (!step.drained)
    return `not drained ${drainMs / 1_000} s after the last send: ${step.missing.join(', ')}`;
  return undefined;
}
