import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from '../harness/net.ts';
import {
  exitOf,
  spawnService,
  startService,
  type RunningService,
  type ServiceName,
} from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';
import { services } from '../services.ts';

/*
 * Each service says which process it is, as a real process: `INSTANCE_ID` (else a random UUID
 * made at start) on `/healthz` and on every log line, so that a supervisor can tell its own child
 * from another process on the port; a bad `INSTANCE_ID` stops it at start. Its answers carry
 * `X-Request-Id`, and each request gets its access line. No Redis is needed: the services start
 * without it, and nothing here reaches it.
 */

const SERVICES: readonly ServiceName[] = services.map((service) => service.name);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const started: RunningService[] = [];
afterAll(async () => {
  await Promise.all(started.map((service) => service.stop()));
});

async function start(name: ServiceName, env: Record<string, string> = {}) {
  const service = await startService(name, { REDIS_URL: `redis://127.0.0.1:${await freePort()}`, ...env });
  started.push(service);
  return service;
}

/** The JSON lines the service wrote so far. */
const linesOf = (service: RunningService) =>
  service
    .output()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);

describe.each(SERVICES)('%s', (name) => {
  it('answers /healthz with its INSTANCE_ID, writes it on every log line, and logs the request with its X-Request-Id', async () => {
    const instance = `test-${name}-1`;
    const service = await start(name, { INSTANCE_ID: instance });

    const response = await fetch(`${service.url}/healthz`, { headers: { 'X-Request-Id': `probe-${name}` } });
    const line = await waitFor(() => linesOf(service).find((line) => line.requestId === `probe-${name}`), {
      what: 'the access line of the probe',
    });

    expect(response.headers.get('x-request-id')).toBe(`probe-${name}`);
    expect(await response.json()).toEqual({ status: 'ok', instance });
    expect(line).toMatchObject({ instance, msg: 'request', method: 'GET', route: '/healthz', status: 200 });
    expect(line.durationMs).toEqual(expect.any(Number));
    expect(linesOf(service).filter((line) => line.instance !== instance)).toEqual([]);
    expect(await service.stop()).toBe(0);
  });
});

describe('without INSTANCE_ID', () => {
  it('answers /healthz with a random UUID made at start, a new one at each start', async () => {
    const first = await start('order-service');
    const second = await start('order-service');

    const [a, b] = await Promise.all(
      [first, second].map(async (service) => {
        const body = (await (await fetch(`${service.url}/healthz`)).json()) as { instance: string };
        return body.instance;
      }),
    );

    expect([a, b]).toEqual([expect.stringMatching(UUID), expect.stringMatching(UUID)]);
    expect(a).not.toBe(b);
    expect(linesOf(first).every((line) => line.instance === a)).toBe(true);
    expect(await first.stop()).toBe(0);
    expect(await second.stop()).toBe(0);
  });
});

describe('with a bad INSTANCE_ID', () => {
  it.each([
    ['order-service', 'empty', ''],
    ['order-service', 'with a space', 'order 1'],
    ['order-service', 'longer than 64 characters', 'x'.repeat(65)],
    ['order-service', 'not ASCII', 'café'],
    ['payment-service', 'with a space', 'payment 1'],
    ['notification-service', 'with a space', 'notification 1'],
  ] as const)('%s exits 1 at start naming INSTANCE_ID (%s)', async (name, _, value) => {
    const child = spawnService(name, { REDIS_URL: 'redis://127.0.0.1:1', INSTANCE_ID: value });
    let stderr = '';
    child.stderr!.on('data', (chunk) => (stderr += chunk));

    expect(await exitOf(child)).toBe(1);
    expect(stderr).toContain(
      `${name}: invalid environment: INSTANCE_ID: must be 1 to 64 printable ASCII characters, without spaces`,
    );
  });
});
