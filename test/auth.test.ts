import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { exportJWK, generateKeyPair, SignJWT, type JWK } from 'jose';
import { signToken } from '@msa/stream-kit/service';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { freePort } from '../harness/net.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { exitOf, spawnService, startService, type RunningService } from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';

/*
 * Who may do what, with the services as real processes on free ports against a redis-server of
 * this file's own, at the shipped settings unless a test says otherwise: tokens from `pnpm token`
 * through the whole flow, the rate limits shared by two order-service instances, a JWKS that
 * rotates its keys, start-up refused in production without auth, and the internal endpoints on a
 * port of their own. Every process is stopped in afterAll, whatever failed.
 */

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SECRET = 'the-auth-test-secret-of-more-than-32-characters';
let redisServer: RedisServer;
const running: RunningService[] = [];
const servers: Server[] = [];

beforeAll(async () => {
  redisServer = await startRedisServer();
});
afterAll(async () => {
  await Promise.allSettled(running.map((service) => service.stop()));
  for (const server of servers) server.close();
  await redisServer?.stop();
});
afterEach(() => {
  onTestFailed(() => {
    for (const service of running) console.error(`--- ${service.name} output ---\n${service.output()}`);
  });
});

async function start(...args: Parameters<typeof startService>): Promise<RunningService> {
  const service = await startService(...args);
  running.push(service);
  return service;
}

/** `pnpm token <args>` as a user runs it (the script itself, without pnpm's banner). */
async function pnpmToken(
  args: string[],
  env: Record<string, string> = { AUTH_SECRET: SECRET },
): Promise<string> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--import', 'tsx', 'scripts/token.ts', ...args],
    {
      cwd: ROOT,
      env: { ...process.env, ...env },
    },
  );
  return stdout.trim();
}

const call = (url: string, token?: string, init: RequestInit = {}) =>
  fetch(url, {
    ...init,
    headers: { ...(token === undefined ? {} : { authorization: `Bearer ${token}` }), ...init.headers },
  });
const post = (url: string, token: string | undefined, body: object) =>
  call(`${url}/orders`, token, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });

describe('the whole flow with tokens from pnpm token (AUTH_SECRET)', () => {
  let order: RunningService;
  let notification: RunningService;
  let alice: string;
  let orderId: string;

  beforeAll(async () => {
    const env = { REDIS_URL: redisServer.url, AUTH_SECRET: SECRET };
    [order, , notification] = await Promise.all([
      start('order-service', env),
      start('payment-service', env),
      start('notification-service', env),
    ]);
    alice = await pnpmToken(['alice']);
  });

  it("places alice's order with her token, and shows her its mail and SMS", async () => {
    const placed = await post(order.url, alice, { productId: 'book-1', price: 1000 });
    expect(placed.status).toBe(202);
    ({ orderId } = (await placed.json()) as { orderId: string });

    const mine = await waitFor(
      async () => {
        const res = await call(`${notification.url}/notifications`, alice);
        const { notifications } = (await res.json()) as { notifications: { orderId: string }[] };
        return notifications.length === 2 && notifications;
      },
      { timeoutMs: 15_000, what: "alice's mail and SMS" },
    );
    expect(mine.map((n) => n.orderId)).toEqual([orderId, orderId]);
    const own = await waitFor(
      async () => {
        const res = await call(`${order.url}/orders/${orderId}`, alice);
        return res.status === 200 && ((await res.json()) as { userId: string; status: string });
      },
      { timeoutMs: 15_000, what: "alice's order in the read model" },
    );
    expect(own).toMatchObject({ userId: 'alice', status: 'PAID' });
  });

  it("answers bob 404 for alice's order and notifications, and a support token 200", async () => {
    const bob = await pnpmToken(['bob']);
    const support = await pnpmToken(['support-1', '--scope', 'orders:read-all']);

    for (const [url, what] of [
      [`${order.url}/orders/${orderId}`, 'her order'],
      [`${order.url}/orders?userId=alice`, 'her orders'],
      [`${notification.url}/notifications?userId=alice`, 'her notifications'],
    ] as const) {
      expect((await call(url, bob)).status, `bob, ${what}`).toBe(404);
      expect((await call(url, support)).status, `support, ${what}`).toBe(200);
      expect((await call(url)).status, `no token, ${what}`).toBe(401);
    }
  });

  it('answers 403 to an order whose body names another user than the token, and 401 to a forged one', async () => {
    const forged = `${alice.split('.').slice(0, 2).join('.')}.${'A'.repeat(43)}`;

    expect((await post(order.url, alice, { userId: 'bob', productId: 'p', price: 1 })).status).toBe(403);
    const refused = await post(order.url, forged, { productId: 'p', price: 1 });
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toBe(
      `Bearer realm="order-service", error="invalid_token", error_description="the token's signature does not verify"`,
    );
  });

  it('writes no token into any log line of any service', () => {
    for (const service of running) {
      for (const part of alice.split('.')) expect(service.output(), service.name).not.toContain(part);
    }
  });
});

describe('the rate limits of orders, as shipped, shared by two order-service instances', () => {
  let one: RunningService;
  let two: RunningService;
  beforeAll(async () => {
    // undefined: the shipped defaults, 30 per user and 300 per client address a minute.
    const env = {
      REDIS_URL: redisServer.url,
      AUTH_SECRET: SECRET,
      RATE_LIMIT_PER_USER: undefined,
      RATE_LIMIT_PER_ADDRESS: undefined,
    };
    [one, two] = await Promise.all([start('order-service', env), start('order-service', env)]);
  });

  it("refuses a user's 31st order of the minute with 429 and Retry-After, whichever instance it reaches, and then the address's 301st", async () => {
    const token = await pnpmToken(['limited-user']);
    let sent = 0;
    const place = async (instance: RunningService, as: string) => {
      sent += 1;
      return post(instance.url, as, { productId: 'p', price: 1 });
    };
    for (let i = 0; i < 30; i += 1) {
      expect((await place(i % 2 === 0 ? one : two, token)).status, `order ${i + 1}`).toBe(202);
    }
    for (const instance of [one, two]) {
      const over = await place(instance, token);
      expect(over.status).toBe(429);
      expect(await over.json()).toEqual({ error: 'too many orders: at most 30 orders every 60 s per user' });
      const retryAfter = Number(over.headers.get('retry-after'));
      expect(retryAfter).toBeGreaterThanOrEqual(1);
      expect(retryAfter).toBeLessThanOrEqual(60);
    }

    // Other users from the same address, each under its own limit, until the address's is spent:
    // every request counts for the address, the refused ones too.
    let refused: Response | undefined;
    for (let user = 0; refused === undefined && sent < 400; user += 1) {
      const other = await signToken(SECRET, { userId: `user-${user}` });
      for (let i = 0; i < 20 && refused === undefined; i += 1) {
        const res = await place(sent % 2 === 0 ? one : two, other);
        if (res.status === 429) refused = res;
        else expect(res.status).toBe(202);
      }
    }
    expect(sent).toBe(301);
    expect(await refused!.json()).toEqual({
      error: 'too many orders: at most 300 orders every 60 s per client address',
    });
    expect(Number(refused!.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  }, 60_000);
});

describe('a JWKS that rotates its keys (AUTH_JWKS_URL), at the shipped settings', () => {
  const keySet = { keys: [] as JWK[] };
  let jwksUrl: string;
  const provider = async (kid: string) => {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
    const sign = (sub: string, { issuer = 'https://id.test', audience = 'shop' } = {}) =>
      new SignJWT({ sub })
        .setProtectedHeader({ alg: 'ES256', kid })
        .setIssuer(issuer)
        .setAudience(audience)
        .setExpirationTime('1h')
        .sign(privateKey);
    return { jwk, sign };
  };

  beforeAll(async () => {
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(keySet));
    });
    servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/jwks.json`;
  });

  it('takes a token of a new key within about 30 s of the rotation, refuses the retired key, and checks issuer and audience', async () => {
    const first = await provider('2026-11-a');
    keySet.keys = [first.jwk];
    const notification = await start('notification-service', {
      REDIS_URL: redisServer.url,
      AUTH_JWKS_URL: jwksUrl,
      AUTH_ISSUER: 'https://id.test',
      AUTH_AUDIENCE: 'shop',
    });
    const list = (token: string) => call(`${notification.url}/notifications`, token);
    const oldToken = await first.sign('carol');
    expect((await list(oldToken)).status).toBe(200);
    // The provider's own keys, but a token it issued for another application, or another issuer's.
    for (const [claims, reason] of [
      [{ audience: 'blog' }, "the token's audience is not this service"],
      [{ issuer: 'https://other.test' }, "the token's issuer is not trusted"],
    ] as const) {
      const refused = await list(await first.sign('carol', claims));
      expect(refused.status).toBe(401);
      expect(refused.headers.get('www-authenticate')).toContain(`error_description="${reason}"`);
    }
    // An HMAC token, whatever its secret: the key set's algorithms only.
    const hmac = await signToken(SECRET, { userId: 'carol', issuer: 'https://id.test', audience: 'shop' });
    expect((await list(hmac)).headers.get('www-authenticate')).toContain(
      "the token's algorithm is not accepted",
    );

    const second = await provider('2026-11-b');
    keySet.keys = [second.jwk];
    const newToken = await second.sign('carol');
    const rotatedAt = Date.now();
    const refused = await list(newToken);
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toContain(
      `error_description="the token's key (kid) is not known"`,
    );

    await waitFor(async () => (await list(newToken)).status === 200, {
      timeoutMs: 40_000,
      intervalMs: 1_000,
      what: 'the new key to be fetched',
    });
    expect(Date.now() - rotatedAt).toBeLessThan(35_000);
    expect((await list(oldToken)).status).toBe(401);
  }, 60_000);
});

describe('start-up without auth', () => {
  it('refuses to start with NODE_ENV=production and neither AUTH_JWKS_URL nor AUTH_SECRET, naming the variable', async () => {
    for (const name of ['order-service', 'notification-service'] as const) {
      const child = spawnService(name, {
        REDIS_URL: redisServer.url,
        PORT: String(await freePort()),
        NODE_ENV: 'production',
        AUTH_SECRET: undefined,
        AUTH_JWKS_URL: undefined,
      });
      let output = '';
      child.stderr!.on('data', (chunk) => (output += chunk));
      expect(await exitOf(child), name).toBe(1);
      expect(output, name).toContain('AUTH_JWKS_URL: required with NODE_ENV=production');
    }
  });

  it('refuses both AUTH_SECRET and AUTH_JWKS_URL, and a secret under 32 characters', async () => {
    for (const [env, message] of [
      [
        { AUTH_SECRET: SECRET, AUTH_JWKS_URL: 'https://id.test/jwks.json' },
        'set AUTH_JWKS_URL or AUTH_SECRET, not both',
      ],
      [{ AUTH_SECRET: 'short' }, 'AUTH_SECRET: must be at least 32 characters'],
    ] as const) {
      const child = spawnService('order-service', {
        REDIS_URL: redisServer.url,
        PORT: String(await freePort()),
        ...env,
      });
      let output = '';
      child.stderr!.on('data', (chunk) => (output += chunk));
      expect(await exitOf(child)).toBe(1);
      expect(output).toContain(message);
    }
  });

  it('starts outside production with the customer-facing routes open, and says so in its log', async () => {
    const order = await start('order-service', { REDIS_URL: redisServer.url, AUTH_SECRET: undefined });

    expect((await post(order.url, undefined, { userId: 'u1', productId: 'p', price: 1 })).status).toBe(202);
    expect(order.output()).toContain('the customer-facing routes are open');
  });
});

describe('the internal endpoints on INTERNAL_PORT', () => {
  it('serves /healthz, /readyz and /metrics there alone, without a token, and the public port no longer answers them', async () => {
    const internalPort = await freePort();
    const order = await start(
      'order-service',
      {
        REDIS_URL: redisServer.url,
        AUTH_SECRET: SECRET,
        INTERNAL_PORT: String(internalPort),
        INTERNAL_HOST: '127.0.0.1',
      },
      { healthPort: internalPort },
    );
    const internal = `http://127.0.0.1:${internalPort}`;

    for (const path of ['/healthz', '/readyz', '/metrics']) {
      expect((await fetch(`${internal}${path}`)).status, `internal ${path}`).toBe(200);
      expect((await fetch(`${order.url}${path}`)).status, `public ${path}`).toBe(404);
    }
    expect((await fetch(`${internal}/orders`, { method: 'POST' })).status).toBe(404);
    expect((await post(order.url, await pnpmToken(['dave']), { productId: 'p', price: 1 })).status).toBe(202);
  });
});
