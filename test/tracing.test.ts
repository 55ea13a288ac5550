import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../harness/otlp.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { startService, type RunningService } from '../harness/services.ts';
import { entryFields } from '../harness/streams.ts';
import { waitFor } from '../harness/wait.ts';
import { services } from '../services.ts';

/*
 * One trace from the HTTP request to the SMS: the three services as real processes, exporting
 * their spans over OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT, at the SDK's default batching) to a
 * receiver of the test's own.
 */

const SERVER = 2;
const PRODUCER = 4;
const CONSUMER = 5;

let redisServer: RedisServer;
let redis: Redis;
let receiver: OtlpReceiver;
const running = new Map<string, RunningService>();

beforeAll(async () => {
  redisServer = await startRedisServer();
  redis = new Redis(redisServer.url);
  receiver = await startOtlpReceiver();
  for (const { name } of services)
    running.set(
      name,
      await startService(name, {
        REDIS_URL: redisServer.url,
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
      }),
    );
}, 60_000);

afterAll(async () => {
  await Promise.all([...running.values()].map((service) => service.stop()));
  redis?.disconnect();
  await receiver?.close();
  await redisServer?.stop();
});

afterEach(() => {
  onTestFailed(() => {
    console.error(JSON.stringify(receiver.spans, null, 1));
    for (const service of running.values()) console.error(`--- ${service.name} ---\n${service.output()}`);
  });
});

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

async function placeOrder(headers: Record<string, string> = {}) {
  const response = await fetch(`${running.get('order-service')!.url}/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ userId: `trace-${hex(4)}`, productId: 'p1', price: 1000 }),
  });
  expect(response.status).toBe(202);
  return ((await response.json()) as { orderId: string }).orderId;
}

/** The one span of `trace` that `match` picks, once it has been exported. */
function spanOf(
  traceId: string,
  what: string,
  match: (span: ReceivedSpan) => boolean,
): Promise<ReceivedSpan> {
  return waitFor(
    () => {
      const found = receiver.spans.filter((span) => span.traceId === traceId && match(span));
      if (found.length > 1) throw new Error(`${found.length} spans for ${what}`);
      return found[0];
    },
    // The SDK sends its batches every 5 s by default.
    { timeoutMs: 20_000, intervalMs: 100, what },
  );
}

describe('with OTEL_EXPORTER_OTLP_ENDPOINT set', () => {
  it("links POST /orders → send → payment → send → the mail and the SMS in one trace, continuing the caller's traceparent", async () => {
    const traceId = hex(16);
    const callerSpan = hex(8);
    const orderId = await placeOrder({ traceparent: `00-${traceId}-${callerSpan}-01` });

    const request = await spanOf(
      traceId,
      'the request',
      (s) => s.service === 'order-service' && s.kind === SERVER,
    );
    expect(request).toMatchObject({ name: 'POST /orders', parentSpanId: callerSpan });
    expect(request.attributes).toMatchObject({ 'http.route': '/orders', 'http.response.status_code': 202 });

    const sendOrder = await spanOf(traceId, 'order-events send', (s) => s.name === 'send order-events');
    expect(sendOrder).toMatchObject({
      service: 'order-service',
      kind: PRODUCER,
      parentSpanId: request.spanId,
    });

    const payment = await spanOf(
      traceId,
      'the payment',
      (s) => s.service === 'payment-service' && s.name === 'process order-events',
    );
    expect(payment).toMatchObject({ kind: CONSUMER, parentSpanId: sendOrder.spanId });
    expect(payment.attributes).toMatchObject({
      'messaging.system': 'redis',
      'messaging.destination.name': 'order-events',
      'messaging.consumer.group.name': 'payment-service-group',
      'messaging.operation.type': 'process',
      'stream_kit.outcome': 'acked',
    });
    expect(payment.attributes['messaging.message.id']).toMatch(/^\d+-\d+$/);

    const sendPayment = await spanOf(traceId, 'payment-events send', (s) => s.name === 'send payment-events');
    expect(sendPayment).toMatchObject({
      service: 'payment-service',
      kind: PRODUCER,
      parentSpanId: payment.spanId,
    });

    const mail = await spanOf(
      traceId,
      'the mail',
      (s) => s.service === 'notification-service' && s.name === 'process order-events',
    );
    expect(mail).toMatchObject({ kind: CONSUMER, parentSpanId: sendOrder.spanId });
    const sms = await spanOf(
      traceId,
      'the SMS',
      (s) => s.service === 'notification-service' && s.name === 'process payment-events',
    );
    expect(sms).toMatchObject({ kind: CONSUMER, parentSpanId: sendPayment.spanId });
    expect(sms.attributes['messaging.consumer.group.name']).toBe('notification-service-group');

    // The entries carry the trace on, as fields beside the event's own.
    const [order] = (await entryFields(redis, 'order-events')).filter((entry) => entry.orderId === orderId);
    expect(order!.traceparent).toBe(`00-${traceId}-${sendOrder.spanId}-01`);
    // The lines written while handling them name the trace.
    const logged = (name: string) =>
      running
        .get(name)!
        .output()
        .split('\n')
        .filter((line) => line.includes(orderId))
        .map((line) => JSON.parse(line) as { traceId?: string; msg: string });
    await waitFor(() => logged('notification-service').some((line) => line.msg === 'sms sent'));
    for (const name of ['order-service', 'payment-service', 'notification-service']) {
      const lines = logged(name);
      expect(lines.length, name).toBeGreaterThan(0);
      expect(
        lines.filter((line) => line.traceId !== traceId).map((line) => line.msg),
        name,
      ).toEqual([]);
    }
  });

  it('starts a trace for a request that brings none', async () => {
    const orderId = await placeOrder();

    const order = await waitFor(async () =>
      (await entryFields(redis, 'order-events')).find((entry) => entry.orderId === orderId),
    );
    const [, traceId, sendSpan] = /^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/.exec(order.traceparent!)!;
    const request = await spanOf(traceId!, 'the request', (s) => s.kind === SERVER);
    expect(request.parentSpanId).toBeUndefined();
    const send = await spanOf(traceId!, 'the send', (s) => s.spanId === sendSpan);
    expect(send.parentSpanId).toBe(request.spanId);
  });
});
