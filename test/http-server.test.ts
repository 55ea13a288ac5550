import type { ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { canConnect, freePort } from '../harness/net.ts';
import { exitOf, spawnService, type ServiceName } from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';
import { services } from '../services.ts';

/*
 * The services' HTTP servers, as real processes: the time limits that keep a slow client from
 * holding a connection, the cap on open connections, and the listen address. The values are the
 * ones the README documents. No Redis is needed: the services start without it, and nothing here
 * reaches it.
 */

const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 15_000;
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
/**
 * Node 20 closes an idle keep-alive connection 1 s after the time its Keep-Alive header announces,
 * so a client that trusts the header never sends on a connection being closed.
 */
const KEEP_ALIVE_GRACE_MS = 1_000;
/** How often Node checks the two limits above: a 408 comes at most this much after its limit. */
const CHECKING_INTERVAL_MS = 1_000;
/** What a loaded test machine may add to a deadline. */
const SLACK_MS = 1_500;

const SERVICES: readonly ServiceName[] = services.map((service) => service.name);

interface Started {
  name: ServiceName;
  port: number;
  child: ChildProcess;
  output(): string;
  /** SIGTERM; resolves to the exit code. */
  stop(): Promise<number | null>;
}

const started: Started[] = [];
afterAll(async () => {
  await Promise.all(started.map((service) => service.stop()));
});
afterEach(({ onTestFailed }) => {
  onTestFailed(() => {
    for (const service of started) console.error(`--- ${service.name} output ---\n${service.output()}`);
  });
});

/**
 * Starts `name` and waits for its "listening" line, not for an answer to /healthz: a probe's
 * keep-alive connection would count against the connection cap under test.
 */
async function start(name: ServiceName, env: Record<string, string> = {}): Promise<Started> {
  const port = await freePort();
  const child = spawnService(name, {
    PORT: String(port),
    REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
    ...env,
  });
  let output = '';
  child.stdout!.on('data', (chunk) => (output += chunk));
  child.stderr!.on('data', (chunk) => (output += chunk));
  const service: Started = {
    name,
    port,
    child,
    output: () => output,
    stop() {
      child.kill('SIGTERM');
      return exitOf(child);
    },
  };
  started.push(service);
  await waitFor(
    () => {
      if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}:\n${output}`);
      return output.includes(`"msg":"${name} listening"`);
    },
    { timeoutMs: 20_000, what: `${name} to listen` },
  );
  return service;
}

/** A raw TCP connection, to send requests as slowly or as oddly as a test needs. */
interface Raw {
  socket: Socket;
  /** What the server sent so far. */
  received(): string;
  /** Settles when the connection closes (by the server, or reset), with the milliseconds it was open. */
  closed: Promise<number>;
  /** Settles with what the server sent, once it sent something or closed the connection. */
  answer: Promise<string>;
}

async function openRaw(port: number): Promise<Raw> {
  const socket = connect(port, '127.0.0.1');
  const openedAt = Date.now();
  let data = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => (data += chunk));
  socket.on('error', () => {}); // a reset is one more way of being closed
  const closed = new Promise<number>((resolve) => socket.once('close', () => resolve(Date.now() - openedAt)));
  const answer = Promise.race([
    new Promise<void>((resolve) => socket.once('data', () => resolve())),
    closed,
  ]).then(() => data);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  return { socket, received: () => data, closed, answer };
}

/** Writes `text` one character every `everyMs`, until it is all sent or the connection closes. */
function trickle(socket: Socket, text: string, everyMs: number) {
  let at = 0;
  const timer = setInterval(() => {
    if (socket.destroyed || at >= text.length) return clearInterval(timer);
    socket.write(text[at++]!);
  }, everyMs);
  socket.once('close', () => clearInterval(timer));
}

const GET_HEALTHZ = 'GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n';

describe('the HTTP server of a service, with the default settings', () => {
  let order: Started;

  beforeAll(async () => {
    order = await start('order-service');
  });

  describe.concurrent('under slow clients', () => {
    it(`answers 408 to a request whose body trickles in, within ${(REQUEST_TIMEOUT_MS + CHECKING_INTERVAL_MS) / 1000} s`, async () => {
      const raw = await openRaw(order.port);
      const body = JSON.stringify({ userId: 'slow', productId: 'p', price: 1000 });
      raw.socket.write(
        `POST /orders HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`,
      );

      // One byte a second: the whole body would take longer than the limit.
      trickle(raw.socket, body, 1_000);
      const ms = await raw.closed;

      expect(raw.received()).toMatch(/^HTTP\/1\.1 408 /);
      expect(ms).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS - SLACK_MS);
      expect(ms).toBeLessThan(REQUEST_TIMEOUT_MS + CHECKING_INTERVAL_MS + SLACK_MS);
    });

    it(`answers 408 to a request whose headers trickle in, within ${(HEADERS_TIMEOUT_MS + CHECKING_INTERVAL_MS) / 1000} s`, async () => {
      const raw = await openRaw(order.port);

      trickle(raw.socket, `GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ${'x'.repeat(100)}\r\n\r\n`, 500);
      const ms = await raw.closed;

      expect(raw.received()).toMatch(/^HTTP\/1\.1 408 /);
      expect(ms).toBeGreaterThanOrEqual(HEADERS_TIMEOUT_MS - SLACK_MS);
      expect(ms).toBeLessThan(HEADERS_TIMEOUT_MS + CHECKING_INTERVAL_MS + SLACK_MS);
    });

    it(`closes a keep-alive connection left idle for ${KEEP_ALIVE_TIMEOUT_MS / 1000} s`, async () => {
      const raw = await openRaw(order.port);
      raw.socket.write(GET_HEALTHZ);
      await raw.answer;
      const answeredAt = Date.now();

      await raw.closed;
      const idleMs = Date.now() - answeredAt;

      expect(raw.received()).toMatch(/^HTTP\/1\.1 200 .*keep-alive: timeout=5\r\n/is);
      expect(idleMs).toBeGreaterThanOrEqual(KEEP_ALIVE_TIMEOUT_MS);
      expect(idleMs).toBeLessThan(KEEP_ALIVE_TIMEOUT_MS + KEEP_ALIVE_GRACE_MS + SLACK_MS);
    });
  });

  it('listens on every address by default (127.0.0.2 as well as 127.0.0.1)', async () => {
    expect(await canConnect(order.port, '127.0.0.1')).toBe(true);
    expect(await canConnect(order.port, '127.0.0.2')).toBe(true);
  });

  it('stops with exit code 0 on SIGTERM', async () => {
    expect(await order.stop()).toBe(0);
  });
});

describe('with MAX_CONNECTIONS=3', () => {
  it('closes a fourth connection without an answer, and takes one again once a connection goes', async () => {
    const payment = await start('payment-service', { MAX_CONNECTIONS: '3' });
    const open: Raw[] = [];
    for (let i = 0; i < 3; i += 1) {
      const raw = await openRaw(payment.port);
      raw.socket.write(GET_HEALTHZ);
      // Answered, so the server counts it; keep-alive keeps it open.
      expect(await raw.answer).toMatch(/^HTTP\/1\.1 200 /);
      open.push(raw);
    }

    const fourth = await openRaw(payment.port);
    fourth.socket.write(GET_HEALTHZ);
    const refused = await fourth.answer;
    open[0]!.socket.destroy();
    // The server hears of the closed connection a moment later.
    const again = await waitFor(
      async () => {
        const raw = await openRaw(payment.port);
        raw.socket.write(GET_HEALTHZ);
        const answer = await raw.answer;
        raw.socket.destroy();
        return answer !== '' && answer;
      },
      { timeoutMs: 3_000, what: 'a connection to be taken again' },
    );

    expect(refused).toBe('');
    expect(again).toMatch(/^HTTP\/1\.1 200 /);
    for (const raw of open) raw.socket.destroy();
    expect(await payment.stop()).toBe(0);
  });
});

describe('with HOST=127.0.0.1', () => {
  it.each(SERVICES)('%s listens on that address only', async (name) => {
    const service = await start(name, { HOST: '127.0.0.1' });

    expect(await canConnect(service.port, '127.0.0.1')).toBe(true);
    expect(await canConnect(service.port, '127.0.0.2')).toBe(false);
    expect(await service.stop()).toBe(0);
  });
});

describe('with a bad HOST or MAX_CONNECTIONS', () => {
  it.each([
    ['HOST', 'not a host'],
    ['MAX_CONNECTIONS', '0'],
    ['MAX_CONNECTIONS', 'many'],
  ])('exits 1 naming %s=%s', async (variable, value) => {
    const child = spawnService('order-service', { REDIS_URL: 'redis://127.0.0.1:1', [variable]: value });
    let stderr = '';
    child.stderr!.on('data', (chunk) => (stderr += chunk));

    expect(await exitOf(child)).toBe(1);
    expect(stderr).toContain(`invalid environment: ${variable}: `);
  });
});
