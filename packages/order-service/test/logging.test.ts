import { Writable } from 'node:stream';
import { createPublisher } from '@msa/stream-kit';
import { errorMiddleware, LOG_REDACT, openRequestConnection } from '@msa/stream-kit/service';
import express from 'express';
import { pino } from 'pino';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { freePort } from '../../../harness/net.ts';
import { createApp } from '../src/app.ts';

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
  it('answers 503 and logs the failure as an err object, with its cause and the stream', async () => {
    const { lines, logger } = capturingLogger();
    const nowhere = openRequestConnection(`redis://127.0.0.1:${await freePort()}`, pino({ level: 'silent' }));
    try {
      const app = createApp({ publisher: createPublisher({ connection: nowhere }), redis: nowhere, logger });

      const response = await request(app).post('/orders').send({ userId: 'u1', productId: 'p1', price: 1 });

      expect([response.status, response.body]).toEqual([
        503,
        { error: 'orders cannot be accepted right now, try again later' },
      ]);
      expect(lines).toEqual([
        expect.objectContaining({
          level: 40,
          stream: 'order-events',
          err: expect.objectContaining({
            type: 'UnavailableError',
            message: expect.stringMatching(/^orders cannot be accepted right now, try again later: ./),
            stack: expect.any(String),
          }),
        }),
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
});
