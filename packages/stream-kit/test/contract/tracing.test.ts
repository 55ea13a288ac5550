import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-node';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { entryFields } from '../../../../harness/streams.ts';
import { waitFor } from '../../../../harness/wait.ts';
import { createPublisher } from '../../src/index.ts';
import { xaddArguments } from '../../src/lua.ts';
import { contractSuite, testStream } from './setup.ts';

/*
 * Trace context through the streams (tracing.ts): what a publisher and a subscription given a
 * tracer add to the entries and around the handler, with the SDK registered as `startTracing`
 * registers it and its spans kept in memory; and that without one nothing is added.
 */

const suite = contractSuite();
const { start } = suite;

const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
const tracer = provider.getTracer('test');

beforeAll(() => provider.register());
afterAll(async () => {
  await provider.shutdown();
  trace.disable();
  context.disable();
  propagation.disable();
});
afterEach(() => exporter.reset());

const spansNamed = (name: string) => exporter.getFinishedSpans().filter((span) => span.name === name);
const parentOf = (span: { parentSpanContext?: { spanId: string } }) => span.parentSpanContext?.spanId;

describe('without a tracer', () => {
  it('publishes entries with the event fields alone, and makes no span', async () => {
    const stream = testStream();
    const publisher = createPublisher({ connection: suite.url });
    try {
      await tracer.startActiveSpan('caller', async (caller) => {
        await publisher.publish(stream, { n: 1 });
        caller.end();
      });
    } finally {
      await publisher.close();
    }

    expect(await entryFields(suite.redis, stream.name)).toEqual([{ n: '1' }]);
    expect(exporter.getFinishedSpans().map((span) => span.name)).toEqual(['caller']);
  });
});

describe('with a tracer', () => {
  it('sends each entry under a span of its own, and runs its handler in a span continuing it; what the handler writes carries the trace on', async () => {
    const stream = testStream();
    const onward = testStream();
    const publisher = createPublisher({ connection: suite.url, tracer });
    let written: string[] = [];
    const handled: { traceId: string; spanId: string }[] = [];
    start(
      stream,
      () => {
        handled.push(trace.getActiveSpan()!.spanContext());
        written = xaddArguments(onward, { n: 2 });
      },
      { tracer },
    );
    await suite.groupCreated(stream);

    try {
      await tracer.startActiveSpan('caller', async (caller) => {
        await publisher.publish(stream, { n: 1 });
        caller.end();
      });
    } finally {
      await publisher.close();
    }

    await waitFor(() => spansNamed(`process ${stream.name}`).length === 1, { what: 'the process span' });
    const [caller] = spansNamed('caller');
    const [send] = spansNamed(`send ${stream.name}`);
    const [process] = spansNamed(`process ${stream.name}`);
    const [onwardSend] = spansNamed(`send ${onward.name}`);
    expect(send!.kind).toBe(SpanKind.PRODUCER);
    expect(parentOf(send!)).toBe(caller!.spanContext().spanId);
    const [entry] = await entryFields(suite.redis, stream.name);
    expect(entry).toEqual({
      n: '1',
      traceparent: `00-${caller!.spanContext().traceId}-${send!.spanContext().spanId}-01`,
    });
    expect(send!.attributes).toMatchObject({
      'messaging.system': 'redis',
      'messaging.destination.name': stream.name,
      'messaging.operation.type': 'send',
    });
    expect(String(send!.attributes['messaging.message.id'])).toMatch(/^\d+-\d+$/);

    expect(process!.kind).toBe(SpanKind.CONSUMER);
    expect(process!.spanContext().traceId).toBe(caller!.spanContext().traceId);
    expect(parentOf(process!)).toBe(send!.spanContext().spanId);
    expect(handled).toEqual(
      [process!.spanContext()].map(({ traceId, spanId }) => expect.objectContaining({ traceId, spanId })),
    );
    expect(process!.attributes).toMatchObject({
      'messaging.consumer.group.name': 'g',
      'messaging.client.id': 'c1',
      'messaging.message.delivery_count': 1,
      'stream_kit.outcome': 'acked',
    });

    expect(parentOf(onwardSend!)).toBe(process!.spanContext().spanId);
    expect(written.slice(-2)).toEqual([
      'traceparent',
      `00-${caller!.spanContext().traceId}-${onwardSend!.spanContext().spanId}-01`,
    ]);
  });

  it('ends the span of a run that failed with an error, and gives the next run a span of its own in the same trace', async () => {
    const stream = testStream();
    let runs = 0;
    start(
      stream,
      () => {
        runs += 1;
        if (runs === 1) throw new Error('first run fails');
      },
      { tracer },
    );
    await suite.groupCreated(stream);
    const publisher = createPublisher({ connection: suite.url, tracer });
    try {
      await publisher.publish(stream, { n: 1 });
    } finally {
      await publisher.close();
    }

    await waitFor(() => spansNamed(`process ${stream.name}`).length === 2, { what: 'two runs' });
    const [first, second] = spansNamed(`process ${stream.name}`);
    expect(first!.status).toMatchObject({ code: SpanStatusCode.ERROR });
    expect(first!.attributes).toMatchObject({
      'stream_kit.outcome': 'retried',
      'messaging.message.delivery_count': 1,
    });
    expect(second!.attributes).toMatchObject({
      'stream_kit.outcome': 'acked',
      'messaging.message.delivery_count': 2,
    });
    expect(second!.spanContext().traceId).toBe(first!.spanContext().traceId);
  });
});
