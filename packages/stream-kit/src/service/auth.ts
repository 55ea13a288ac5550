import { webcrypto } from 'node:crypto';
import { createRemoteJWKSet, errors, jwtVerify, SignJWT, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { z } from 'zod';
import { unsetIfEmpty } from './env.ts';
import { UnauthorizedError, UnavailableError } from './http-errors.ts';

/*
 * Who the caller of a customer-facing route is: a bearer JWT, verified with jose against a JWKS
 * URL (an identity provider's keys) or, for development, a shared HS256 secret. The user is the
 * token's `sub`; its scopes (`scope`, space-separated, or `scp`) say what more it may do.
 */

/** The scope that lets support staff read any user's orders and notifications. */
export const READ_ALL_SCOPE = 'orders:read-all';

/** How far the clocks of the token's issuer and of this service may disagree, in seconds. */
export const CLOCK_TOLERANCE_S = 30;

/**
 * The algorithms a JWKS's keys may sign with: asymmetric only, so that a token signed with HMAC
 * under a public key taken for a secret (the classic confusion) is refused, as is `none`.
 */
const JWKS_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'PS256',
  'PS384',
  'PS512',
  'ES256',
  'ES384',
  'ES512',
  'EdDSA',
  'Ed25519',
];

/** The variables of a service with customer-facing routes; check them with `checkAuthEnv`. */
export const authEnv = {
  /** A shared HS256 secret (development): at least 32 characters, 256 bits as HS256 wants. */
  AUTH_SECRET: unsetIfEmpty(z.string().min(32, 'must be at least 32 characters (HS256 wants 256 bits)')),
  /** The identity provider's JSON Web Key Set: keys cached, fetched again for a `kid` not in it. */
  AUTH_JWKS_URL: unsetIfEmpty(z.url({ protocol: /^https?$/, error: 'must be an http:// or https:// URL' })),
  /** Checked against `iss` when set. */
  AUTH_ISSUER: unsetIfEmpty(z.string()),
  /** Checked against `aud` when set. */
  AUTH_AUDIENCE: unsetIfEmpty(z.string()),
  /** `production`: a service without AUTH_JWKS_URL or AUTH_SECRET refuses to start. */
  NODE_ENV: unsetIfEmpty(z.string()),
};
export type AuthEnv = z.output<z.ZodObject<typeof authEnv>>;

/**
 * A refinement for a config schema with `authEnv` (`.superRefine(checkAuthEnv)`): one of
 * AUTH_JWKS_URL and AUTH_SECRET, not both, and one of them with NODE_ENV=production.
 */
export function checkAuthEnv(env: AuthEnv, ctx: z.RefinementCtx): void {
  if (env.AUTH_SECRET !== undefined && env.AUTH_JWKS_URL !== undefined)
    ctx.addIssue({
      code: 'custom',
      path: ['AUTH_SECRET'],
      message: 'set AUTH_JWKS_URL or AUTH_SECRET, not both',
    });
  else if (env.NODE_ENV === 'production' && env.AUTH_SECRET === undefined && env.AUTH_JWKS_URL === undefined)
    ctx.addIssue({
      code: 'custom',
      path: ['AUTH_JWKS_URL'],
      message:
        "required with NODE_ENV=production (your identity provider's JWKS URL; or AUTH_SECRET, a shared HS256 secret): without either, anyone could act as any user",
    });
  else if (env.NODE_ENV === 'production' && env.AUTH_JWKS_URL !== undefined) {
    // A provider's keys sign the tokens of all its applications: in production, only those
    // issued for this one, by the expected issuer, fetched where nobody can swap the keys.
    if (!env.AUTH_JWKS_URL.startsWith('https:'))
      ctx.addIssue({
        code: 'custom',
        path: ['AUTH_JWKS_URL'],
        message: 'must be an https:// URL with NODE_ENV=production',
      });
    for (const name of ['AUTH_ISSUER', 'AUTH_AUDIENCE'] as const)
      if (env[name] === undefined)
        ctx.addIssue({
          code: 'custom',
          path: [name],
          message:
            'required with AUTH_JWKS_URL and NODE_ENV=production: else a token the provider issued for any other application would do',
        });
  }
}

/** Who a verified token says the caller is. */
export interface Caller {
  readonly userId: string;
  readonly scopes: ReadonlySet<string>;
}

/** The caller `authenticate` verified, from `res.locals`; undefined when auth is off. */
export const callerOf = (res: { locals: Record<string, unknown> }): Caller | undefined =>
  res.locals.caller as Caller | undefined;

/** Whether `caller` may read `userId`'s data: its own, or anyone's with `READ_ALL_SCOPE`. Anyone's when auth is off. */
export const mayRead = (caller: Caller | undefined, userId: string): boolean =>
  caller === undefined || caller.userId === userId || caller.scopes.has(READ_ALL_SCOPE);

/** What `authenticate` needs of Express's request and response. */
interface AuthRequest {
  readonly headers: { readonly authorization?: string | undefined };
}
interface AuthResponse {
  readonly locals: Record<string, unknown>;
}

/**
 * Express middleware for the customer-facing routes, from a service's `authEnv` config; undefined
 * when neither AUTH_JWKS_URL nor AUTH_SECRET is set (auth off: development only, `checkAuthEnv`
 * refuses it in production). It sets the `Caller` (`callerOf(res)`) or passes on an
 * `UnauthorizedError` (401 with `WWW-Authenticate: Bearer` and the reason; the token is never in
 * it), or an `UnavailableError` when the JWKS cannot be fetched (503: not the caller's fault).
 */
export function authenticate(env: AuthEnv, realm: string) {
  const checked = verifier(env);
  const verify = checked && remembering(checked);
  if (verify === undefined) {
    // `checkAuthEnv` refuses this at start already; a service that forgot it must not run open.
    if (env.NODE_ENV === 'production')
      throw new Error('AUTH_JWKS_URL or AUTH_SECRET is required with NODE_ENV=production');
    return undefined;
  }
  const refuse = (reason: string, error?: 'invalid_token' | 'invalid_request') =>
    new UnauthorizedError(
      reason,
      `Bearer realm="${realm}"${error ? `, error="${error}", error_description="${reason}"` : ''}`,
    );
  return (req: AuthRequest, res: AuthResponse, next: (err?: unknown) => void): void => {
    const header = req.headers.authorization;
    if (header === undefined) return next(refuse('an Authorization: Bearer <token> header is required'));
    const token = BEARER.exec(header)?.[1];
    if (token === undefined)
      return next(refuse('the Authorization header must be Bearer <token>', 'invalid_request'));
    verify(token).then(
      (payload) => {
        const userId = payload.sub;
        if (!isUserId(userId))
          return next(refuse("the token's subject (sub) is not a user id", 'invalid_token'));
        res.locals.caller = { userId, scopes: scopesOf(payload) } satisfies Caller;
        next();
      },
      (err: unknown) => {
        const reason = reasonOf(err);
        next(
          reason === undefined
            ? new UnavailableError('the keys that verify tokens cannot be fetched now, try again later', {
                cause: err,
              })
            : refuse(reason, 'invalid_token'),
        );
      },
    );
  };
}

/** RFC 6750's `b64token`, after the scheme (any case) and one or more spaces. */
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*) *$/i;

/** A user ID as the events carry it: 1 to 128 characters, valid Unicode, no space around. */
const isUserId = (value: unknown): value is string =>
  typeof value === 'string' &&
  value.length > 0 &&
  value.length <= 128 &&
  value.trim() === value &&
  // Node 20 has it; TypeScript's ES2022 library does not.
  (value as string & { isWellFormed(): boolean }).isWellFormed();

/** `scope` (OAuth 2: space-separated) or `scp` (an array, as some providers write it). */
function scopesOf(payload: JWTPayload): ReadonlySet<string> {
  const { scope, scp } = payload;
  const words = (value: unknown) =>
    typeof value === 'string'
      ? value.split(' ')
      : Array.isArray(value)
        ? value.filter((word) => typeof word === 'string')
        : [];
  return new Set([...words(scope), ...words(scp)].filter((word) => word !== ''));
}

/** Why jose refused a token, in words for the client: fixed phrases, never the token's content. */
function reasonOf(err: unknown): string | undefined {
  if (err instanceof errors.JWTExpired) return 'the token has expired';
  if (err instanceof errors.JWTClaimValidationFailed) {
    // A claim of the wrong type (`exp: "soon"`), as against one that is absent or does not match.
    if (err.reason === 'invalid') return 'the token has an invalid claim';
    if (err.claim === 'nbf' || err.claim === 'iat') return 'the token is not valid yet';
    if (err.claim === 'aud') return "the token's audience is not this service";
    if (err.claim === 'iss') return "the token's issuer is not trusted";
    if (err.claim === 'exp') return 'the token has no expiry (exp)';
    if (err.claim === 'sub') return 'the token has no subject (sub)';
    return 'the token has an invalid claim';
  }
  if (err instanceof errors.JOSEAlgNotAllowed) return "the token's algorithm is not accepted";
  if (err instanceof errors.JWSSignatureVerificationFailed) return "the token's signature does not verify";
  if (err instanceof errors.JWKSNoMatchingKey) return "the token's key (kid) is not known";
  if (
    err instanceof errors.JWSInvalid ||
    err instanceof errors.JWTInvalid ||
    err instanceof errors.JOSENotSupported
  )
    return 'the token is malformed';
  // The key set: unreachable (fetch's own TypeError), too slow, not a key set, a key in it that
  // does not import. Not the caller's fault.
  return undefined;
}

/** Verifies a token's signature and claims; undefined when auth is off. */
function verifier(env: AuthEnv): ((token: string) => Promise<JWTPayload>) | undefined {
  const options = {
    issuer: env.AUTH_ISSUER,
    audience: env.AUTH_AUDIENCE,
    clockTolerance: CLOCK_TOLERANCE_S,
    // A token that never expires would be a password sent with every request.
    requiredClaims: ['exp', 'sub'],
  };
  if (env.AUTH_JWKS_URL !== undefined) {
    // Cached; fetched again when a token names a `kid` the set lacks (at most every 30 s: jose's
    // cooldown, so a flood of made-up kids costs the provider nothing) and every 10 minutes.
    const keys: JWTVerifyGetKey = createRemoteJWKSet(new URL(env.AUTH_JWKS_URL));
    const jwks = { ...options, algorithms: JWKS_ALGORITHMS };
    return async (token) => {
      try {
        return (await jwtVerify(token, keys, jwks)).payload;
      } catch (err) {
        // A token without `kid` that several keys of the set could have signed (during a
        // rotation, old and new): jose leaves trying the candidates to us.
        if (!(err instanceof errors.JWKSMultipleMatchingKeys)) throw err;
        for await (const key of err as unknown as AsyncIterable<webcrypto.CryptoKey>) {
          try {
            return (await jwtVerify(token, key, jwks)).payload;
          } catch (tried) {
            if (!(tried instanceof errors.JWSSignatureVerificationFailed)) throw tried;
          }
        }
        throw new errors.JWSSignatureVerificationFailed();
      }
    };
  }
  if (env.AUTH_SECRET !== undefined) {
    // Imported once: jose would import a raw secret on every call.
    const key = hmacKey(env.AUTH_SECRET, 'verify');
    return async (token) =>
      (await jwtVerify(token, await key, { ...options, algorithms: ['HS256'] })).payload;
  }
  return undefined;
}

/**
 * How long a token, once verified, is taken again without verifying it: a client sends its token
 * with every request, and jose's verification (WebCrypto) costs 40 to 90 µs of CPU here, a fifth of
 * what an order costs order-service. Short, so that a key the provider withdraws stops working
 * within seconds of jose's next fetch of the key set; never past the expiry jose grants (`exp` and
 * the clock tolerance).
 */
export const VERIFIED_FOR_MS = 10_000;
/** The most tokens remembered at once (the oldest go first), ... */
const REMEMBERED_TOKENS = 5_000;
/** ... of at most this many characters (a bigger one is verified each time): 20 MB or so at worst. */
const REMEMBERED_TOKEN_LENGTH = 2_048;

/** `verify`, remembering what it accepted for `VERIFIED_FOR_MS`, keyed by the whole token. */
function remembering(verify: (token: string) => Promise<JWTPayload>): (token: string) => Promise<JWTPayload> {
  // `fresh` on the monotonic clock (a wall clock set back must not stretch it), `expires` on the
  // wall clock, as jose reads `exp`.
  const verified = new Map<string, { payload: JWTPayload; fresh: number; expires: number }>();
  return async (token) => {
    const known = verified.get(token);
    if (known !== undefined && performance.now() < known.fresh && Date.now() < known.expires)
      return known.payload;
    const payload = await verify(token);
    if (token.length > REMEMBERED_TOKEN_LENGTH) return payload;
    verified.delete(token);
    if (verified.size >= REMEMBERED_TOKENS) verified.delete(verified.keys().next().value!);
    // `exp` is required: jose has checked it is there, and a number.
    const expires = (payload.exp! + CLOCK_TOLERANCE_S) * 1_000;
    verified.set(token, { payload, fresh: performance.now() + VERIFIED_FOR_MS, expires });
    return payload;
  };
}

const hmacKey = (secret: string, use: 'sign' | 'verify') =>
  webcrypto.subtle.importKey(
    'raw',
    new TextEncoder().encode(secret),
    { name: 'HMAC', hash: 'SHA-256' },
    false,
    [use],
  );

/** What `signToken` writes into a token. */
export interface TokenClaims {
  /** The user: `sub`. */
  userId: string;
  /** `scope`, space-separated. */
  scopes?: readonly string[];
  /** How long it is valid. @defaultValue 3600 (an hour) */
  ttlS?: number;
  issuer?: string | undefined;
  audience?: string | undefined;
}

/**
 * A token signed with a shared HS256 secret, as `authenticate` takes it with AUTH_SECRET: for
 * development (`pnpm token <userId>`) and tests. Production tokens come from an identity provider.
 */
export async function signToken(
  secret: string,
  { userId, scopes = [], ttlS = 3_600, issuer, audience }: TokenClaims,
) {
  const jwt = new SignJWT(scopes.length > 0 ? { scope: scopes.join(' ') } : {})
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(userId)
    .setIssuedAt()
    .setExpirationTime(`${ttlS}s`);
  if (issuer !== undefined) jwt.setIssuer(issuer);
  if (audience !== undefined) jwt.setAudience(audience);
  return jwt.sign(await hmacKey(secret, 'sign'));
}
