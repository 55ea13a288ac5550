import { createServer, type Server } from 'node:http';
import { connect, type AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { createPublisher, type Publisher } from '@msa/stream-kit';
import { accessLog, errorMiddleware, LOG_REDACT, openRequestConnection } from '@msa/stream-kit/service';
import express from 'express';
import type { Redis } from 'ioredis';
import { pino } from 'pino';
import request from 'supertest';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { freePort } from '../../../harness/net.ts';
import { deferred, waitFor } from '../../../harness/wait.ts';
import { createApp } from '../src/app.ts';
import { ordersOn } from './read-model.ts';

it('keeps passwords, Redis URLs, AUTH arguments and auth headers out of log lines, at the top level or one level down', () => {
  let output = '';
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      output += chunk.toString();
      done();
    },
  });
  const logger = pino({ redact: LOG_REDACT }, sink);

  logger.info({ password: 's3cret-1' }, 'top level');
  logger.info({ config: { REDIS_URL: 'redis://u:s3cret-2@h:6379', password: 's3cret-3' } }, 'nested');
  logger.warn({ req: { headers: { authorization: 'Bearer s3cret-4', cookie: 'sid=s3cret-5' } } }, 'request');
  logger.error(
    { err: { options: { password: 's3cret-6' }, command: { name: 'auth', args: ['s3cret-7'] } } },
    'client error',
  );

  expect(output.split('\n').filter(Boolean)).toHaveLength(4);
  expect(output).not.toMatch(/s3cret/);
  expect(output).toContain('[Redacted]');
});

/** A pino logger whose lines land in `lines`, parsed. */
function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { lines, logger: pino({ redact: LOG_REDACT }, sink) };
}

describe('when an order cannot be published', () => {
  it('answers 503 and logs the failure as an err object, with its cause, the stream and the requestId of its access line', async () => {
    const { lines, logger } = capturingLogger();
    const nowhere = openRequestConnection(`redis://127.0.0.1:${await freePort()}`, pino({ level: 'silent' }));
    try {
      const app = createApp({
        publisher: createPublisher({ connection: nowhere }),
        redis: nowhere,
        logger,
        instance: 'test',
        orders: ordersOn(nowhere),
      });

      const response = await request(app).post('/orders').send({ userId: 'u1', productId: 'p1', price: 1 });

      expect([response.status, response.body]).toEqual([
        503,
        { error: 'orders cannot be accepted right now, try again later' },
      ]);
      const requestId = response.headers['x-request-id'];
      expect(lines).toEqual([
        expect.objectContaining({
          level: 40,
          stream: 'order-events',
          requestId,
          err: expect.objectContaining({
            type: 'UnavailableError',
            message: expect.stringMatching(/^orders cannot be accepted right now, try again later: ./),
            stack: expect.any(String),
          }),
        }),
        expect.objectContaining({ level: 30, msg: 'request', route: '/orders', status: 503, requestId }),
      ]);
    } finally {
      nowhere.disconnect();
    }
  });
});

describe('the error middleware, on an error no route named', () => {
  it('logs it as an err object and answers a generic 500 without its message or stack', async () => {
    const { lines, logger } = capturingLogger();
    const app = express()
      .get('/boom', () => {
        throw new TypeError('secret detail');
      })
      .use(errorMiddleware(logger));

    const response = await request(app).get('/boom');

    expect([response.status, response.body]).toEqual([500, { error: 'internal error' }]);
    expect(response.text).not.toMatch(/secret detail|TypeError|\.ts:/);
    expect(lines).toEqual([
      expect.objectContaining({
        level: 50,
        msg: 'unexpected error',
        err: expect.objectContaining({
          type: 'TypeError',
          message: 'secret detail',
          stack: expect.any(String),
        }),
      }),
    ]);
  });

  it('writes the requestId on its line, and the request still gets its access line, status 500', async () => {
    const { lines, logger } = capturingLogger();
    const app = express()
      .use(accessLog(logger))
      .get('/boom/:id', () => {
        throw new TypeError('secret detail');
      })
      .use(errorMiddleware(logger));

    const response = await request(app).get('/boom/7').set('X-Request-Id', 'boom-1');
    await waitFor(() => lines.length === 2);

    expect([response.status, response.headers['x-request-id']]).toEqual([500, 'boom-1']);
    expect(lines).toEqual([
      expect.objectContaining({ level: 50, msg: 'unexpected error', requestId: 'boom-1' }),
      expect.objectContaining({
        level: 30,
        msg: 'request',
        method: 'GET',
        route: '/boom/:id',
        status: 500,
        requestId: 'boom-1',
      }),
    ]);
  });
});

describe('the access log: one line per request', () => {
  const { lines, logger } = capturingLogger();
  let redis: Redis;
  let publisher: Publisher;
  let app: ReturnType<typeof createApp>;

  beforeAll(() => {
    redis = openRequestConnection(inject('redisUrl'), pino({ level: 'silent' }));
    publisher = createPublisher({ connection: redis });
    app = createApp({ publisher, redis, logger, instance: 'test', orders: ordersOn(redis) });
  });
  afterAll(async () => {
    await publisher?.close();
    await redis?.quit();
  });

  /** The lines of the request that got `response`, once its access line (the one with a status) is out. */
  async function linesOf(response: { headers: Record<string, string> }) {
    const requestId = response.headers['x-request-id'];
    expect(requestId).toEqual(expect.any(String));
    await waitFor(() => lines.some((line) => line.requestId === requestId && 'status' in line), {
      what: `the access line of ${requestId}`,
    });
    return lines.filter((line) => line.requestId === requestId);
  }

  const anOrder = () => ({ userId: `user-${Math.random()}`, productId: 'p1', price: 1000 });

  it('is the one line of an accepted order: order accepted, with its orderId and entryId', async () => {
    const response = await request(app).post('/orders').send(anOrder());

    const orderLines = await linesOf(response);

    expect(response.status).toBe(202);
    expect(orderLines).toEqual([
      expect.objectContaining({
        level: 30,
        msg: 'order accepted',
        method: 'POST',
        route: '/orders',
        status: 202,
        durationMs: expect.any(Number),
        requestId: response.headers['x-request-id'],
        orderId: response.body.orderId,
        entryId: expect.stringMatching(/^\d+-\d+$/),
      }),
    ]);
    const entryId = String(orderLines[0]!.entryId);
    const [[, fields] = []] = await redis.xrange('order-events', entryId, entryId);
    expect(fields).toContain(response.body.orderId);
  });

  it('is the one line of an order replayed for its idempotency key, with the first orderId', async () => {
    const key = `key-${Math.random()}`;
    const order = anOrder();
    const first = await request(app).post('/orders').set('Idempotency-Key', key).send(order);
    const again = await request(app).post('/orders').set('Idempotency-Key', key).send(order);

    const [firstLine] = await linesOf(first);

    expect(await linesOf(again)).toEqual([
      expect.objectContaining({
        msg: 'order replayed for its idempotency key',
        route: '/orders',
        status: 202,
        orderId: first.body.orderId,
        entryId: firstLine!.entryId,
      }),
    ]);
  });

  it("is the one line of an order placed through the tutorial's GET /order", async () => {
    const response = await request(app).get('/order').query(anOrder());

    expect(await linesOf(response)).toEqual([
      expect.objectContaining({
        msg: 'order accepted',
        method: 'GET',
        route: '/order',
        status: 200,
        orderId: expect.any(String),
      }),
    ]);
  });

  it.each([
    [
      'a 400 for bad input',
      () =>
        request(app)
          .post('/orders')
          .send({ ...anOrder(), price: 0 }),
      'POST',
      '/orders',
      400,
    ],
    [
      'a 400 for malformed JSON',
      () => request(app).post('/orders').set('content-type', 'application/json').send('{"userId":'),
      'POST',
      '/orders',
      400,
    ],
    ['a 404 for an unknown path', () => request(app).get('/nope?userId=u1'), 'GET', '/nope', 404],
    [
      'a 405 for a method the path does not serve',
      () => request(app).delete('/orders'),
      'DELETE',
      '/orders',
      405,
    ],
    [
      'a 415 for a body that is not JSON',
      () => request(app).post('/orders').set('content-type', 'text/plain').send('u1 p1 1000'),
      'POST',
      '/orders',
      415,
    ],
    [
      'a 413 for a body over 16 kB',
      () =>
        request(app)
          .post('/orders')
          .send({ ...anOrder(), padding: 'x'.repeat(17_000) }),
      'POST',
      '/orders',
      413,
    ],
    ['a 200 on /healthz', () => request(app).get('/healthz'), 'GET', '/healthz', 200],
  ])(
    'comes for %s, with method, route, status, duration and requestId',
    async (_, send, method, route, status) => {
      const response = await send();

      expect(response.status).toBe(status);
      expect(await linesOf(response)).toEqual([
        expect.objectContaining({
          level: 30,
          msg: 'request',
          method,
          route,
          status,
          durationMs: expect.any(Number),
          requestId: response.headers['x-request-id'],
        }),
      ]);
    },
  );

  it("takes the client's X-Request-Id, sends it back and logs it", async () => {
    const given = `checkout 42 ${Math.random()}`.padEnd(128, '~');

    const response = await request(app).get('/healthz').set('X-Request-Id', given);

    expect(response.headers['x-request-id']).toBe(given);
    expect(await linesOf(response)).toEqual([
      expect.objectContaining({ requestId: given, route: '/healthz' }),
    ]);
  });

  it.each([
    ['longer than 128 characters', 'x'.repeat(129)],
    ['not ASCII', 'café'],
    ['holding a tab', 'a\tb'],
    ['empty', ''],
  ])('replaces an X-Request-Id %s with an id of its own, sent back and logged', async (_, given) => {
    const response = await request(app).get('/healthz').set('X-Request-Id', given);

    const requestId = response.headers['x-request-id'];
    expect(requestId).toMatch(/^[0-9a-f]{10}-[0-9a-z]+$/);
    expect(await linesOf(response)).toEqual([expect.objectContaining({ requestId, status: 200 })]);
  });

  it('gives every request an id of its own when the client sends none', async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 5; i += 1) ids.add((await request(app).get('/nope')).headers['x-request-id']!);

    expect(ids.size).toBe(5);
  });

  it('cuts an unknown path to 100 characters on the line', async () => {
    const response = await request(app).get(`/${'a'.repeat(5_000)}`);

    const [line] = await linesOf(response);
    expect([line!.status, line!.route]).toEqual([404, `/${'a'.repeat(99)}…`]);
  });

  describe('when the client leaves before the answer', () => {
    /** `app` on a port; resolves with its server, and the requests it received as they come. */
    async function listening(app: ReturnType<typeof createApp>) {
      const server = createServer(app);
      const received = deferred();
      server.on('request', () => received.resolve());
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      return { server, port: (server.address() as AddressInfo).port, received: received.promise };
    }
    const closeServer = (server: Server) => new Promise((resolve) => server.close(resolve));

    it('logs a body cut short as request aborted, with the 400 the body parser gave it', async () => {
      const { server, port, received } = await listening(app);
      try {
        const socket = connect(port, '127.0.0.1');
        socket.on('error', () => {});
        socket.write(
          'POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n' +
            'X-Request-Id: left-early\r\n\r\n{"userId":',
        );
        await received;

        socket.destroy();
        const line = await waitFor(() => lines.find((line) => line.requestId === 'left-early'));
        await new Promise((resolve) => setTimeout(resolve, 100));

        // The body parser fails first (`request.aborted`), and errorMiddleware answers 400 into
        // the closed connection; then the line comes, once.
        expect(line).toEqual(
          expect.objectContaining({ msg: 'request aborted', method: 'POST', route: '/orders', status: 400 }),
        );
        expect(lines.filter((line) => line.requestId === 'left-early')).toHaveLength(1);
      } finally {
        await closeServer(server);
      }
    });

    it('logs the request as request aborted, 499 as nothing was sent, and an order placed after that on a line of its own', async () => {
      const publishing = deferred();
      const gone = deferred();
      // The real publisher, held back until the client has left.
      const held: Publisher = {
        async publish(stream, event) {
          publishing.resolve();
          await gone.promise;
          return publisher.publish(stream, event);
        },
        publishMany: (stream, events) => publisher.publishMany(stream, events),
        close: async () => {},
      };
      const { server, port } = await listening(
        createApp({ publisher: held, redis, logger, instance: 'test', orders: ordersOn(redis) }),
      );
      try {
        const body = JSON.stringify(anOrder());
        const socket = connect(port, '127.0.0.1');
        socket.on('error', () => {});
        socket.write(
          `POST /orders HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n` +
            `X-Request-Id: left-before-202\r\n\r\n${body}`,
        );
        await publishing.promise;

        socket.destroy();
        await waitFor(() => lines.some((line) => line.requestId === 'left-before-202'));
        gone.resolve();
        await waitFor(() => lines.filter((line) => line.requestId === 'left-before-202').length === 2);

        expect(lines.filter((line) => line.requestId === 'left-before-202')).toEqual([
          expect.objectContaining({ msg: 'request aborted', route: '/orders', status: 499 }),
          expect.objectContaining({
            msg: 'order accepted',
            orderId: expect.any(String),
            entryId: expect.stringMatching(/^\d+-\d+$/),
          }),
        ]);
      } finally {
        await closeServer(server);
      }
    });
  });
});
