import { Writable } from 'node:stream';
import { LOG_REDACT } from '@msa/stream-kit/service';
import { pino } from 'pino';
import { expect, it } from 'vitest';

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
