import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { exportJWK, exportSPKI, generateKeyPair, SignJWT, type JWK, type JWTPayload } from 'jose';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { authenticate, callerOf, errorMiddleware, signToken, type AuthEnv } from '../../src/service.ts';

/*
 * `authenticate` against real HTTP: an Express app on a free port, called with fetch, and for
 * AUTH_JWKS_URL a JWKS endpoint of this file's own whose keys a test rotates.
 */

const SECRET = 'a-development-secret-of-32-chars-or-more';
const now = () => Math.floor(Date.now() / 1000);
const servers: Server[] = [];

/** An app whose `/me` answers the verified caller; its base URL. */
async function serve(env: AuthEnv): Promise<string> {
  const app = express();
  app.get('/me', authenticate(env, 'test-service')!, (_req, res) => {
    const caller = callerOf(res)!;
    res.json({ userId: caller.userId, scopes: [...caller.scopes] });
  });
  app.use(errorMiddleware(pino({ level: 'silent' })));
  const server = app.listen(0, '127.0.0.1');
  servers.push(server);
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

afterAll(() => {
  for (const server of servers) server.close();
});

async function call(base: string, authorization?: string) {
  const res = await fetch(`${base}/me`, { headers: authorization === undefined ? {} : { authorization } });
  return {
    status: res.status,
    challenge: res.headers.get('www-authenticate'),
    body: (await res.json()) as unknown,
  };
}

/** A token signed with `key`, `alg`, carrying `claims` (exp an hour away and sub `alice` unless given). */
function token(
  key: Parameters<SignJWT['sign']>[0],
  claims: JWTPayload = {},
  header: { alg: string; kid?: string } = { alg: 'HS256' },
) {
  return new SignJWT({ sub: 'alice', exp: now() + 3_600, ...claims }).setProtectedHeader(header).sign(key);
}
const secretKey = new TextEncoder().encode(SECRET);

/** 401 with the reason in the body and, as RFC 6750 has it, in `WWW-Authenticate`; never the token. */
function expectRefused(answer: Awaited<ReturnType<typeof call>>, reason: string, sent?: string) {
  expect(answer.status).toBe(401);
  expect(answer.body).toEqual({ error: reason, field: 'Authorization' });
  expect(answer.challenge).toBe(
    `Bearer realm="test-service", error="invalid_token", error_description="${reason}"`,
  );
  if (sent !== undefined) {
    for (const part of sent.split('.').filter((p) => p.length > 8)) {
      expect(JSON.stringify(answer)).not.toContain(part);
    }
  }
}

describe('authenticate with a shared secret (AUTH_SECRET, HS256)', () => {
  let base: string;
  beforeAll(async () => {
    base = await serve({ AUTH_SECRET: SECRET, AUTH_ISSUER: 'https://issuer.test', AUTH_AUDIENCE: 'shop' });
  });
  const claims = { iss: 'https://issuer.test', aud: 'shop' };

  it('takes the user from sub and the scopes from scope (space-separated) and scp (an array)', async () => {
    const signed = await token(secretKey, { ...claims, scope: 'orders:read-all profile', scp: ['extra'] });
    expect(await call(base, `Bearer ${signed}`)).toMatchObject({
      status: 200,
      body: { userId: 'alice', scopes: ['orders:read-all', 'profile', 'extra'] },
    });
  });

  it('accepts what signToken signs (pnpm token), with the scheme in any case', async () => {
    const signed = await signToken(SECRET, { userId: 'bob', issuer: claims.iss, audience: claims.aud });
    expect((await call(base, `bearer ${signed}`)).body).toEqual({ userId: 'bob', scopes: [] });
  });

  it('answers 401 with a bare Bearer challenge when there is no Authorization header', async () => {
    const answer = await call(base);
    expect(answer).toEqual({
      status: 401,
      challenge: 'Bearer realm="test-service"',
      body: { error: 'an Authorization: Bearer <token> header is required', field: 'Authorization' },
    });
  });

  it('answers 401 invalid_request to an Authorization header that is not Bearer <token>', async () => {
    for (const header of ['Basic YWxpY2U6c2VjcmV0', 'Bearer', 'Bearer a b', 'Token abc']) {
      const answer = await call(base, header);
      expect(answer.status, header).toBe(401);
      expect(answer.challenge, header).toContain('error="invalid_request"');
    }
  });

  const refusals: [string, () => Promise<string>, string][] = [
    ['a malformed token', async () => 'not.a.jwt', 'the token is malformed'],
    ['a token of two parts', async () => 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0', 'the token is malformed'],
    ['an expired token', () => token(secretKey, { ...claims, exp: now() - 120 }), 'the token has expired'],
    [
      'a token not valid yet',
      () => token(secretKey, { ...claims, nbf: now() + 120 }),
      'the token is not valid yet',
    ],
    [
      'a token signed with another secret',
      () => token(new TextEncoder().encode(`${SECRET}!`), claims),
      "the token's signature does not verify",
    ],
    [
      'a token of another issuer',
      () => token(secretKey, { ...claims, iss: 'https://evil.test' }),
      "the token's issuer is not trusted",
    ],
    [
      'a token for another audience',
      () => token(secretKey, { ...claims, aud: 'other-app' }),
      "the token's audience is not this service",
    ],
    [
      'a token without expiry',
      () => token(secretKey, { ...claims, exp: undefined }),
      'the token has no expiry (exp)',
    ],
    [
      'a token without subject',
      () => token(secretKey, { ...claims, sub: undefined }),
      'the token has no subject (sub)',
    ],
    [
      'an expiry that is not a number',
      () => token(secretKey, { ...claims, exp: 'soon' as unknown as number }),
      'the token has an invalid claim',
    ],
    [
      'a subject that is no user id',
      () => token(secretKey, { ...claims, sub: ' alice ' }),
      "the token's subject (sub) is not a user id",
    ],
    [
      'a token signed with HS512',
      () => token(secretKey, claims, { alg: 'HS512' }),
      "the token's algorithm is not accepted",
    ],
    [
      'an unsigned token (alg none)',
      async () => {
        const part = (value: object) => Buffer.from(JSON.stringify(value)).toString('base64url');
        return `${part({ alg: 'none', typ: 'JWT' })}.${part({ sub: 'alice', exp: now() + 60, ...claims })}.`;
      },
      "the token's algorithm is not accepted",
    ],
  ];
  for (const [what, make, reason] of refusals) {
    it(`answers 401 "${reason}" to ${what}, without echoing it`, async () => {
      const sent = await make();
      expectRefused(await call(base, `Bearer ${sent}`), reason, sent);
    });
  }

  it('takes a token it verified again only until its expiry (with the 30 s of tolerance), however recently verified', async () => {
    // Expired 25 s ago: within the tolerance for 5 s more, then refused, remembered or not.
    const signed = await token(secretKey, { ...claims, sub: 'remembered', exp: now() - 25 });
    expect((await call(base, `Bearer ${signed}`)).status).toBe(200);

    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + 6_000 });
    try {
      expectRefused(await call(base, `Bearer ${signed}`), 'the token has expired', signed);
    } finally {
      vi.useRealTimers();
    }
  });

  it('forgives a clock 30 s apart: a token expired 10 s ago, or valid in 10 s, is taken', async () => {
    expect(
      (await call(base, `Bearer ${await token(secretKey, { ...claims, exp: now() - 10 })}`)).status,
    ).toBe(200);
    expect(
      (await call(base, `Bearer ${await token(secretKey, { ...claims, nbf: now() + 10 })}`)).status,
    ).toBe(200);
  });
});

describe('authenticate with a JWKS (AUTH_JWKS_URL)', () => {
  /** The key set the endpoint serves now, and how many times it was fetched. */
  const jwks = { keys: [] as JWK[], fetched: 0, down: false };
  let jwksUrl: string;
  let base: string;
  const rsa = async (kid: string) => {
    const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
    return {
      kid,
      privateKey,
      publicKey,
      jwk: { ...(await exportJWK(publicKey)), kid, alg: 'RS256', use: 'sig' },
    };
  };
  let first: Awaited<ReturnType<typeof rsa>>;

  beforeAll(async () => {
    const server = createServer((_req, res) => {
      jwks.fetched += 1;
      if (jwks.down) {
        res.writeHead(500).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: jwks.keys }));
    });
    servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;
    first = await rsa('key-1');
    jwks.keys = [first.jwk];
    base = await serve({ AUTH_JWKS_URL: jwksUrl });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('verifies a token signed by a key of the set, fetching the set once for many requests', async () => {
    const signed = await token(first.privateKey, {}, { alg: 'RS256', kid: first.kid });
    for (let i = 0; i < 5; i += 1) expect((await call(base, `Bearer ${signed}`)).status).toBe(200);
    expect(jwks.fetched).toBe(1);
  });

  it('takes the asymmetric algorithms providers sign with: ES512 and EdDSA as well as RS256', async () => {
    for (const alg of ['ES512', 'EdDSA']) {
      const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
      const kid = `key-${alg}`;
      jwks.keys = [first.jwk, { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' }];
      const other = await serve({ AUTH_JWKS_URL: jwksUrl });
      const signed = await token(privateKey, { sub: alg }, { alg, kid });
      expect(await call(other, `Bearer ${signed}`), alg).toMatchObject({
        status: 200,
        body: { userId: alg },
      });
    }
    jwks.keys = [first.jwk];
  });

  it('refuses an HMAC token signed with the public key as its secret (algorithm confusion)', async () => {
    const pem = new TextEncoder().encode(await exportSPKI(first.publicKey));
    const forged = await token(pem, {}, { alg: 'HS256', kid: first.kid });
    expectRefused(await call(base, `Bearer ${forged}`), "the token's algorithm is not accepted", forged);
  });

  it('refuses an HMAC token signed with the development secret: a JWKS configuration takes no secret', async () => {
    const signed = await signToken(SECRET, { userId: 'alice' });
    expectRefused(await call(base, `Bearer ${signed}`), "the token's algorithm is not accepted", signed);
  });

  it('after the provider rotates its keys, fetches the set again for the unknown kid (once 30 s passed since the last fetch) and refuses the retired key', async () => {
    const second = await rsa('key-2');
    // A token of its own: one verified in the last 10 s (real time) would be taken from memory.
    const oldToken = await token(first.privateKey, { jti: 'old' }, { alg: 'RS256', kid: first.kid });
    const newToken = await token(second.privateKey, {}, { alg: 'RS256', kid: second.kid });
    jwks.keys = [second.jwk];
    const fetchedBefore = jwks.fetched;

    // Within jose's 30 s cooldown of the last fetch, an unknown kid costs the provider nothing.
    expectRefused(await call(base, `Bearer ${newToken}`), "the token's key (kid) is not known", newToken);
    expect(jwks.fetched).toBe(fetchedBefore);

    vi.useFakeTimers({ toFake: ['Date'], now: Date.now() + 31_000 });
    expect(await call(base, `Bearer ${newToken}`)).toMatchObject({ status: 200, body: { userId: 'alice' } });
    expect(jwks.fetched).toBe(fetchedBefore + 1);
    // The retired key is gone from the set: its tokens no longer verify.
    expectRefused(await call(base, `Bearer ${oldToken}`), "the token's key (kid) is not known", oldToken);
  });

  it('verifies a token without kid against a set of two keys that could have signed it (mid-rotation), with the one that did', async () => {
    const second = await rsa('key-2b');
    jwks.keys = [first.jwk, second.jwk];
    try {
      const other = await serve({ AUTH_JWKS_URL: jwksUrl });
      for (const signer of [first, second]) {
        const signed = await token(signer.privateKey, { sub: signer.kid }, { alg: 'RS256' });
        expect(await call(other, `Bearer ${signed}`)).toMatchObject({
          status: 200,
          body: { userId: signer.kid },
        });
      }
      const stranger = await rsa('key-x');
      const unknown = await token(stranger.privateKey, {}, { alg: 'RS256' });
      expectRefused(await call(other, `Bearer ${unknown}`), "the token's signature does not verify", unknown);
    } finally {
      jwks.keys = [first.jwk];
    }
  });

  it("answers 503, not 401, when the key set's host refuses connections", async () => {
    const other = await serve({ AUTH_JWKS_URL: 'http://127.0.0.1:1/jwks.json' });
    const signed = await token(first.privateKey, {}, { alg: 'RS256', kid: first.kid });

    expect((await call(other, `Bearer ${signed}`)).status).toBe(503);
  });

  it('answers 503, not 401, when the key set cannot be fetched: the caller is not at fault', async () => {
    jwks.down = true;
    try {
      const other = await serve({ AUTH_JWKS_URL: jwksUrl });
      const signed = await token(first.privateKey, {}, { alg: 'RS256', kid: first.kid });
      const answer = await call(other, `Bearer ${signed}`);
      expect(answer.status).toBe(503);
      expect(answer.body).toEqual({
        error: 'the keys that verify tokens cannot be fetched now, try again later',
      });
    } finally {
      jwks.down = false;
    }
  });
});

describe('authenticate without AUTH_SECRET or AUTH_JWKS_URL', () => {
  it('is off: no middleware', () => {
    expect(authenticate({}, 'test-service')).toBeUndefined();
  });

  it('refuses to be off under NODE_ENV=production, even in a service that did not check its config', () => {
    expect(() => authenticate({ NODE_ENV: 'production' }, 'test-service')).toThrow(
      /AUTH_JWKS_URL or AUTH_SECRET/,
    );
  });
});
