import type { EventEmitter } from 'node:events';
import {
  context,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Tracer,
} from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, NodeTracerProvider } from '@opentelemetry/sdk-trace-node';

/** What `startTracing` gives a service. */
export interface Tracing {
  /** For `subscribe()`, `createPublisher()` and `traceRequests`; undefined when tracing is off. */
  readonly tracer: Tracer | undefined;
  /** Sends the spans still buffered, then stops. Safe to call twice. */
  close(): Promise<void>;
}

/**
 * OpenTelemetry for a service, on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans go there over OTLP/HTTP (JSON), in batches
 * (the standard `OTEL_BSP_*` variables tune them), named after `OTEL_SERVICE_NAME` or `service`.
 * It registers the SDK globally: the W3C trace context propagator and an AsyncLocalStorage context,
 * so that the span of a request or an entry is the active one in whatever its handler awaits.
 * Off, it registers nothing and its tracer is undefined: no span is made anywhere, and a delivery
 * or a publish costs one check.
 */
export function startTracing(service: string, env: NodeJS.ProcessEnv = process.env): Tracing {
  if (!env.OTEL_EXPORTER_OTLP_ENDPOINT && !env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
    return { tracer: undefined, close: () => Promise.resolve() };
  // From `env`, which the exporter would otherwise read from process.env itself.
  const url =
    env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ||
    `${env.OTEL_EXPORTER_OTLP_ENDPOINT!.replace(/\/+$/, '')}/v1/traces`;
  const provider = new NodeTracerProvider({
    resource: resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME || service }),
    spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url }))],
  });
  provider.register();
  let closing: Promise<void> | undefined;
  return {
    tracer: provider.getTracer('@msa/stream-kit'),
    // Undoes what register() did, the AsyncLocalStorage context included: its hooks cost every
    // promise of the process something.
    close: () =>
      // A collector that is away loses the last spans; it never fails the shutdown.
      (closing ??= provider
        .shutdown()
        .catch(() => {})
        .finally(() => {
          trace.disable();
          context.disable();
          propagation.disable();
        })),
  };
}

/** pino's `mixin`: the trace of the request or entry being handled, on each line written meanwhile. */
export function traceIdMixin(): { traceId?: string } {
  const span = trace.getActiveSpan();
  return span ? { traceId: span.spanContext().traceId } : {};
}

/** What `traceRequests` reads of Express's request. */
interface TracedRequest extends EventEmitter {
  readonly method: string;
  readonly path: string;
  readonly baseUrl: string;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly route?: { readonly path?: unknown } | undefined;
}

interface TracedResponse extends EventEmitter {
  readonly statusCode: number;
}

/**
 * Express middleware, to `app.use()` first: a span (kind SERVER) per request, named after its
 * route pattern (`POST /orders`), continuing the client's `traceparent` header or starting a
 * trace; the route runs in its context, so what it publishes joins the trace.
 */
export function traceRequests(tracer: Tracer) {
  return (req: TracedRequest, res: TracedResponse, next: () => void): void => {
    const parent = propagation.extract(ROOT_CONTEXT, req.headers);
    const span = tracer.startSpan(
      req.method,
      { kind: SpanKind.SERVER, attributes: { 'http.request.method': req.method, 'url.path': req.path } },
      parent,
    );
    const ctx = trace.setSpan(parent, span);
    // Express reads the body in the request's own events, which would run outside this context.
    context.bind(ctx, req);
    context.bind(ctx, res);
    res.once('close', () => {
      if (typeof req.route?.path === 'string') {
        const route = req.baseUrl + req.route.path;
        span.updateName(`${req.method} ${route}`);
        span.setAttribute('http.route', route);
      }
      span.setAttribute('http.response.status_code', res.statusCode);
      if (res.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    });
    context.with(ctx, next);
  };
}
