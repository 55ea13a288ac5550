import { DEFAULT_RETRY_POLICY, type StreamDefinition } from '@msa/stream-kit';
import type { z } from 'zod';
import { jsonSchema } from './openapi.ts';

/*
 * The AsyncAPI 3.0 document of the streams: each stream a channel, each event type a message whose
 * payload is the JSON Schema of its entry's fields (flat strings, as XADD writes them), from the
 * catalogue's zod schemas; who sends to it and which consumer groups receive it; and, as `x-`
 * extensions where the spec has no field, its dead-letter stream, retention and retry policy.
 */

/** A service as the registry (services.ts) lists it. */
export interface StreamService {
  readonly name: string;
  readonly publishes: readonly string[];
  readonly consumes: readonly string[];
}

type Json = Record<string, unknown>;

/** The event types of a stream: the options of its discriminated union on `type`. */
export function eventTypes(stream: StreamDefinition): { type: string; schema: z.ZodObject }[] {
  const union = stream.schema as unknown as { options?: z.ZodObject[] };
  return (union.options ?? []).map((schema) => {
    const type = (schema.shape.type as unknown as { value: string }).value;
    return { type, schema };
  });
}

const DEAD_LETTER = {
  name: 'dead-letter',
  title: 'A dead letter',
  summary:
    "An entry a consumer group gave up on: the entry's own fields, byte for byte, then where it came from and why.",
  payload: {
    type: 'object',
    properties: {
      'dlq:id': { type: 'string', description: 'The entry ID on its stream.' },
      'dlq:stream': { type: 'string' },
      'dlq:group': { type: 'string', description: 'The consumer group that gave up on it.' },
      'dlq:consumer': { type: 'string' },
      'dlq:deliveries': { type: 'string', pattern: '^\\d+$', description: 'Runs of its handler.' },
      'dlq:reason': {
        type: 'string',
        description: 'e.g. `invalid entry: price: must be a positive decimal number`.',
      },
    },
    required: ['dlq:id', 'dlq:stream', 'dlq:group', 'dlq:consumer', 'dlq:deliveries', 'dlq:reason'],
    additionalProperties: { type: 'string' },
  },
};

export function asyncApiDocument(
  streams: readonly StreamDefinition[],
  services: readonly StreamService[],
  groupOf: (service: string) => string,
): Json {
  const channels: Json = {};
  const operations: Json = {};
  const messages: Json = { 'dead-letter': DEAD_LETTER };
  const ref = (path: string) => ({ $ref: `#/${path}` });
  for (const stream of streams) {
    const types = eventTypes(stream);
    for (const { type, schema } of types) {
      messages[type] = {
        name: type,
        title: type,
        ...(schema.description ? { summary: schema.description } : {}),
        payload: jsonSchema(schema, 'draft-7'),
      };
    }
    const consumers = services.filter((service) => service.consumes.includes(stream.name));
    const deadLetters = `${stream.name}:dlq`;
    channels[stream.name] = {
      address: stream.name,
      title: stream.name,
      description: `A Redis stream. Each entry's fields are flat strings (XADD field value ...). An entry that lacks fields reads with these first: ${JSON.stringify(stream.defaults?.('<entry ID>') ?? {})}.`,
      messages: Object.fromEntries(types.map(({ type }) => [type, ref(`components/messages/${type}`)])),
      'x-consumer-groups': consumers.map((service) => ({
        group: groupOf(service.name),
        service: service.name,
      })),
      'x-dead-letter-stream': deadLetters,
      'x-retention': stream.retention,
      'x-max-id-ahead-ms': stream.maxIdAheadMs,
    };
    channels[deadLetters] = {
      address: deadLetters,
      title: deadLetters,
      description: `Where the groups of ${stream.name} put the entries they give up on (pnpm dlq lists, replays and drops them).`,
      messages: { 'dead-letter': ref('components/messages/dead-letter') },
    };
    const all = types.map(({ type }) => ref(`channels/${stream.name}/messages/${type}`));
    for (const service of services.filter((s) => s.publishes.includes(stream.name))) {
      operations[`${service.name}.send.${stream.name}`] = {
        action: 'send',
        channel: ref(`channels/${stream.name}`),
        summary: `${service.name} appends to ${stream.name}.`,
        messages: all,
      };
    }
    for (const service of consumers) {
      const group = groupOf(service.name);
      operations[`${group}.receive.${stream.name}`] = {
        action: 'receive',
        channel: ref(`channels/${stream.name}`),
        summary: `${service.name} reads ${stream.name} as consumer group ${group}: each entry is handled by one of its instances, and acked once handled.`,
        messages: all,
        'x-consumer-group': group,
        'x-retry-policy': {
          ...DEFAULT_RETRY_POLICY,
          description:
            'A failed entry runs again after retryDelayMs, doubling up to maxRetryDelayMs; after maxDeliveries runs it is dead-lettered. An entry held by a consumer whose liveness mark lapsed is taken over within seconds, one idle claimIdleMs otherwise. An entry that does not match its schema is dead-lettered at once.',
        },
      };
      operations[`${group}.dead-letters.${stream.name}`] = {
        action: 'send',
        channel: ref(`channels/${deadLetters}`),
        summary: `${group} dead-letters the entries of ${stream.name} it gives up on.`,
        messages: [ref(`channels/${deadLetters}/messages/dead-letter`)],
      };
    }
  }
  return {
    asyncapi: '3.0.0',
    info: {
      title: 'redis-streams-msa event streams',
      version: '1.0.0',
      description:
        'The streams order-service, payment-service and notification-service talk through, and what each entry holds. Wire compatible with the Spring Boot tutorial the system began as (the same stream, group and field names). Generated by `pnpm contracts` from the event catalogue (@msa/stream-kit/events): do not edit by hand.',
    },
    defaultContentType: 'application/json',
    servers: {
      redis: {
        host: 'localhost:6379',
        protocol: 'redis',
        description: 'Redis 7: streams with consumer groups (XADD, XREADGROUP, XACK, XAUTOCLAIM).',
      },
    },
    channels,
    operations,
    components: { messages },
  };
}
