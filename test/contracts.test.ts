import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { Parser } from '@asyncapi/parser';
import { Validator } from '@seriousme/openapi-schema-validator';
import { routes as notificationRoutes } from '@msa/notification-service';
import { routes as orderRoutes } from '@msa/order-service';
import { DEFAULT_RETRY_POLICY, defineStream } from '@msa/stream-kit';
import { OrderCreated, OrderEvents, PaymentEvents } from '@msa/stream-kit/events';
import type { HttpRoute } from '@msa/stream-kit/service';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { startService, type RunningService } from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';
import { compatibilityProblems } from '../scripts/contracts/compatibility.ts';
import { contractDocuments, corpusProblems, readCorpus } from '../scripts/contracts.ts';
import { consumersOf, streams } from '../services.ts';

/*
 * The contracts (docs/contracts/): the OpenAPI and AsyncAPI documents `pnpm contracts` writes from
 * the zod schemas, valid by the specs' own validators and committed as written; the corpus of
 * entries earlier schemas accepted, which the current ones must still accept; and order-service
 * serving the documents, with answers that match what they say.
 */

const read = (name: string) => readFileSync(new URL(`../docs/contracts/${name}`, import.meta.url), 'utf8');

describe('docs/contracts/asyncapi.json', () => {
  const document = JSON.parse(read('asyncapi.json')) as {
    channels: Record<string, Record<string, unknown>>;
    operations: Record<string, Record<string, unknown>>;
  };

  it('is a valid AsyncAPI 3.0 document: no error or warning from @asyncapi/parser', async () => {
    const { diagnostics } = await new Parser().parse(read('asyncapi.json'));

    // Severity 0 is an error, 1 a warning; 2 and 3 are hints (e.g. that AsyncAPI 3.1 exists).
    expect(diagnostics.filter((d) => d.severity <= 1).map((d) => `${d.code}: ${d.message}`)).toEqual([]);
  });

  it("names each stream's consumer groups (the registry's), its dead-letter stream and the retry policy", () => {
    for (const stream of streams) {
      const channel = document.channels[stream.name]!;
      expect(channel['x-consumer-groups']).toEqual(
        consumersOf(stream.name).map(({ service, group }) => ({ group, service })),
      );
      expect(channel['x-dead-letter-stream']).toBe(`${stream.name}:dlq`);
      expect(document.channels[`${stream.name}:dlq`]).toBeDefined();
      for (const { group } of consumersOf(stream.name)) {
        expect(document.operations[`${group}.receive.${stream.name}`]).toMatchObject({
          action: 'receive',
          'x-retry-policy': DEFAULT_RETRY_POLICY,
        });
      }
    }
  });

  it("describes an entry's fields as the schema reads them: flat strings, limits included", () => {
    const messages = (
      JSON.parse(read('asyncapi.json')) as { components: { messages: Record<string, { payload: unknown }> } }
    ).components.messages;

    expect(messages['order-created']!.payload).toMatchObject({
      type: 'object',
      properties: {
        orderId: { type: 'string', minLength: 1, maxLength: 128 },
        price: { type: 'string', pattern: '^\\d+(\\.\\d+)?$' },
      },
      required: expect.arrayContaining(['type', 'orderId', 'userId', 'productId', 'price']),
    });
  });
});

describe('docs/contracts/openapi.json', () => {
  it('is a valid OpenAPI 3.1 document', async () => {
    const validator = new Validator();
    const result = await validator.validate(JSON.parse(read('openapi.json')));

    expect(validator.version).toBe('3.1');
    expect(result).toEqual({ valid: true });
  });

  it('has every route of every service, on the services that serve it', () => {
    const paths = (
      JSON.parse(read('openapi.json')) as { paths: Record<string, { servers: { description: string }[] }> }
    ).paths;

    expect(paths['/orders']!.servers.map((s) => s.description)).toEqual(['order-service']);
    expect(paths['/notifications']!.servers.map((s) => s.description)).toEqual(['notification-service']);
    expect(paths['/healthz']!.servers.map((s) => s.description)).toEqual([
      'order-service',
      'payment-service',
      'notification-service',
    ]);
    for (const route of [...orderRoutes, ...notificationRoutes])
      expect(paths[route.path], route.path).toHaveProperty(route.method);
  });
});

describe('pnpm contracts', () => {
  it('wrote the committed documents: they are what the schemas give today', () => {
    for (const [name, text] of Object.entries(contractDocuments())) expect(read(name), name).toBe(text);
  });

  it('--check exits 0 on the repository as committed', async () => {
    await expect(promisify(execFile)('pnpm', ['-s', 'contracts', '--check'])).resolves.toMatchObject({
      stderr: '',
    });
  });
});

describe('the compatibility check', () => {
  it('finds every entry of the corpus accepted by the current schemas, and an entry for every event type', () => {
    expect(corpusProblems()).toEqual([]);
  });

  it('fails when a schema change would refuse entries an earlier schema accepted', () => {
    const stricter = defineStream({
      ...OrderEvents,
      // A price limit below what orders carried, and a field earlier producers never wrote.
      schema: z.discriminatedUnion('type', [
        OrderCreated.extend({
          price: z.string().regex(/^\d{1,3}$/, 'must be at most 999'),
          currency: z.string(),
        }),
        ...OrderEvents.schema.options.slice(1),
      ]),
    });

    const problems = compatibilityProblems([stricter, PaymentEvents], readCorpus());

    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(
          /^order-events \(order-created as order-service writes it\): refused now: .*currency/,
        ),
        expect.stringMatching(/^order-events \(the tutorial's three fields.*\): refused now: .*currency/),
        expect.stringMatching(/^order-events \(a price with decimals.*price: must be at most 999/),
      ]),
    );
  });

  it('passes a change that only accepts more: a new optional field', () => {
    const looser = defineStream({
      ...OrderEvents,
      schema: z.discriminatedUnion('type', [
        OrderCreated.extend({ currency: z.string().optional() }),
        ...OrderEvents.schema.options.slice(1),
      ]),
    });

    expect(compatibilityProblems([looser, PaymentEvents], readCorpus())).toEqual([]);
  });
});

describe('order-service serving the contracts, as a real process', () => {
  let redisServer: RedisServer;
  let services: RunningService[] = [];

  beforeAll(async () => {
    redisServer = await startRedisServer();
    services = await Promise.all(
      (['order-service', 'payment-service'] as const).map((name) =>
        startService(name, { REDIS_URL: redisServer.url }),
      ),
    );
  });

  afterAll(async () => {
    await Promise.all(services.map((service) => service.stop()));
    await redisServer?.stop();
  });

  const order = () => services[0]!;

  it('answers GET /openapi.json and GET /asyncapi.json with the committed documents, and GET /docs with a page of both', async () => {
    const openapi = await fetch(`${order().url}/openapi.json`);
    const asyncapi = await fetch(`${order().url}/asyncapi.json`);
    const page = await fetch(`${order().url}/docs`);

    expect(await openapi.json()).toEqual(JSON.parse(read('openapi.json')));
    expect(await asyncapi.json()).toEqual(JSON.parse(read('asyncapi.json')));
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    const html = await page.text();
    for (const text of [
      'POST /orders',
      'GET /orders/{orderId}',
      'GET /notifications',
      'payment-service-group',
      'order-events:dlq',
    ])
      expect(html).toContain(text);
  });

  it('answers as the OpenAPI document says: the schemas of its answers parse what it sends', async () => {
    const answer = (path: string, method: HttpRoute['method'], status: number) =>
      orderRoutes.find((route) => route.path === path && route.method === method)!.answers[status]!.body!;

    const placed = await fetch(`${order().url}/orders`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ userId: 'contract-u1', productId: 'p1', price: 12.5 }),
    });
    expect(placed.status).toBe(202);
    const { orderId } = answer('/orders', 'post', 202).parse(await placed.json()) as { orderId: string };
    const paid = await waitFor(
      async () => {
        const response = await fetch(`${order().url}/orders/${orderId}`);
        const body = (await response.json()) as { status?: string };
        return response.status === 200 && body.status === 'PAID' && body;
      },
      { what: 'the order paid' },
    );
    expect(() => answer('/orders/{orderId}', 'get', 200).parse(paid)).not.toThrow();
    const page = await (await fetch(`${order().url}/orders?userId=contract-u1`)).json();
    expect(() => answer('/orders', 'get', 200).parse(page)).not.toThrow();
    const refused = await fetch(`${order().url}/orders`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ userId: 'contract-u1', productId: 'p1', price: -1 }),
    });
    expect(refused.status).toBe(400);
    expect(answer('/orders', 'post', 400).parse(await refused.json())).toMatchObject({ field: 'price' });
  });
});
