import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
  type Tracer,
} from '@opentelemetry/api';

/*
 * W3C trace context through the streams, on OpenTelemetry's API (the SDK, and whether there is
 * one, is the service's business: `startTracing` in `@msa/stream-kit/service`). An entry carries
 * its trace context as fields named like the HTTP headers, `traceparent` and `tracestate`, after
 * its event's fields; schemas ignore them, and the Java tutorial reads fields by name. A
 * subscription given a tracer continues the entry's trace in a `process <stream>` span around the
 * handler, and whatever the handler publishes inside it carries the trace on.
 *
 * Nothing here runs without a tracer (or, for `traceFields`, an active span that records): with
 * tracing off, a delivery and a publish cost one check.
 */

/** OpenTelemetry's messaging attributes of a stream, as every span here carries them. */
function messaging(stream: string, operation: 'send' | 'process', more: Attributes = {}): Attributes {
  return {
    'messaging.system': 'redis',
    'messaging.destination.name': stream,
    'messaging.operation.type': operation,
    'messaging.operation.name': operation,
    ...more,
  };
}

/**
 * A `send <stream>` span (kind PRODUCER) under the active context, and the fields that carry it
 * into the entries it writes (`traceparent`, and `tracestate` when there is one), as XADD takes
 * them: name, value.
 */
export function startSend(tracer: Tracer, stream: string): { span: Span; fields: string[] } {
  const span = tracer.startSpan(`send ${stream}`, {
    kind: SpanKind.PRODUCER,
    attributes: messaging(stream, 'send'),
  });
  return { span, fields: carrierFields(trace.setSpan(context.active(), span)) };
}

/** Ends a `send` span, with the entry IDs written or the error that stopped them. */
export function endSend(span: Span, outcome: { ids: readonly string[] } | { error: unknown }): void {
  if ('error' in outcome) {
    span.recordException(outcome.error as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: (outcome.error as Error)?.message });
  } else if (outcome.ids.length === 1) span.setAttribute('messaging.message.id', outcome.ids[0]!);
  else span.setAttribute('messaging.batch.message_count', outcome.ids.length);
  span.end();
}

/**
 * The trace fields for an entry a handler writes in its own script (`xaddArguments`): under the
 * span running now, if one records, a `send <stream>` span, ended at once (the script's XADD is
 * its handler's to make); none otherwise.
 */
export function traceFields(stream: string): string[] {
  const active = trace.getActiveSpan();
  if (!active?.isRecording()) return [];
  const span = trace.getTracer('@msa/stream-kit').startSpan(`send ${stream}`, {
    kind: SpanKind.PRODUCER,
    attributes: messaging(stream, 'send'),
  });
  const fields = carrierFields(trace.setSpan(context.active(), span));
  span.end();
  return fields;
}

function carrierFields(ctx: Context): string[] {
  const carrier: Record<string, string> = {};
  propagation.inject(ctx, carrier);
  const fields: string[] = [];
  for (const name of ['traceparent', 'tracestate']) {
    const value = carrier[name];
    if (value !== undefined && value !== '') fields.push(name, value);
  }
  return fields;
}

/** Where a delivery is, for its span. */
export interface ProcessTarget {
  readonly stream: string;
  readonly group: string;
  readonly consumer: string;
  readonly id: string;
  readonly run: number;
}

/**
 * A `process <stream>` span (kind CONSUMER) for one run of a handler, the child of the span that
 * sent the entry (its `traceparent` field), or a new trace's root if it has none; and the context
 * to run the handler in.
 */
export function startProcess(
  tracer: Tracer,
  fields: Readonly<Record<string, string>>,
  { stream, group, consumer, id, run }: ProcessTarget,
): { span: Span; context: Context } {
  const parent = propagation.extract(ROOT_CONTEXT, fields);
  const span = tracer.startSpan(
    `process ${stream}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: messaging(stream, 'process', {
        'messaging.consumer.group.name': group,
        'messaging.client.id': consumer,
        'messaging.message.id': id,
        'messaging.message.delivery_count': run,
      }),
    },
    parent,
  );
  return { span, context: trace.setSpan(parent, span) };
}

/** Ends a `process` span with its run's outcome: an error unless the entry was acked. */
export function endProcess(
  span: Span,
  outcome: 'acked' | 'retried' | 'dead-lettered',
  reason?: string,
): void {
  span.setAttribute('stream_kit.outcome', outcome);
  if (outcome !== 'acked') span.setStatus({ code: SpanStatusCode.ERROR, message: reason ?? outcome });
  span.end();
}

/** Runs `fn` in `ctx` (the handler in its span's context). */
export function runIn<T>(ctx: Context, fn: () => T): T {
  return context.with(ctx, fn);
}
