import { isStreamIdError } from '../connection.ts';
import type { Logger } from '../logger.ts';

/** Options of the named HTTP errors: the error they wrap, and the input at fault. */
export interface HttpErrorOptions extends ErrorOptions {
  /** The input at fault (`price`, `Idempotency-Key`, `body`), sent to the client as `field`. */
  field?: string | undefined;
}

/** An error in the request's input, naming the input at fault (`field`). */
abstract class InputError extends Error {
  readonly field: string | undefined;
  constructor(message: string, options?: HttpErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.field = options?.field;
  }
}

/**
 * Bad input, the client's to fix: `errorMiddleware` answers 400 `{error: message, field}`
 * (`field` left out when no single input is at fault). Nothing is logged.
 */
export class ValidationError extends InputError {}

/**
 * The request contradicts an earlier one (an idempotency key used before for another body):
 * `errorMiddleware` answers 409 `{error: message, field}`. Nothing is logged.
 */
export class ConflictError extends InputError {}

/**
 * The caller may not do this, whoever it is (a body naming another user than the token's):
 * `errorMiddleware` answers 403 `{error: message, field}`. Nothing is logged. A read of another
 * user's data is a 404 instead, so that IDs cannot be probed.
 */
export class ForbiddenError extends InputError {}

/**
 * No verified caller (`authenticate`): `errorMiddleware` answers 401 `{error: message, field:
 * 'Authorization'}` with `WWW-Authenticate: challenge`. `message` is a fixed phrase: never the token.
 */
export class UnauthorizedError extends Error {
  constructor(
    message: string,
    /** The `WWW-Authenticate` header: `Bearer realm="...", error="invalid_token", ...`. */
    readonly challenge: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** Over a rate limit: `errorMiddleware` answers 429 `{error: message}` with `Retry-After`. */
export class TooManyRequestsError extends Error {
  constructor(
    message: string,
    /** Whole seconds until a request may succeed: `Retry-After`. */
    readonly retryAfterS: number,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** A request body in a format the route does not read: `errorMiddleware` answers 415. */
class UnsupportedMediaTypeError extends InputError {}

/** A known path asked with a method it does not serve: `errorMiddleware` answers 405 with `Allow`. */
class MethodNotAllowedError extends Error {
  constructor(
    message: string,
    /** The methods the path serves, as the `Allow` header lists them. */
    readonly allow: string,
  ) {
    super(message);
    this.name = new.target.name;
  }
}

/** What the helpers below need of Express's request. */
interface RequestLike {
  readonly method: string;
  readonly path: string;
  readonly body?: unknown;
  is(type: string): string | false | null;
}

/**
 * The JSON body of a request that went through `express.json()`, which leaves `body` unset for
 * any other content type: then a 415 `{error: 'content-type must be application/json', field:
 * 'content-type'}` instead of a confusing 400 about the body (or 400 `body is required` for a
 * JSON request without one). Costs nothing on the way of a JSON body: the content type is looked
 * at only when there is no body.
 */
export function jsonBody(req: RequestLike): unknown {
  if (req.body !== undefined) return req.body;
  if (req.is('application/json')) throw new ValidationError('body is required', { field: 'body' });
  throw new UnsupportedMediaTypeError('content-type must be application/json', { field: 'content-type' });
}

/**
 * The handler for every other method on a known path (`app.all(path, methodNotAllowed('GET,
 * HEAD'))` after its routes): 405 `{error: 'DELETE /orders is not allowed; use POST'}` with an
 * `Allow` header, where a 404 would say the path does not exist.
 */
export function methodNotAllowed(allow: string) {
  return (req: RequestLike, _res: unknown, next: (err?: unknown) => void): void => {
    next(new MethodNotAllowedError(`${req.method} ${req.path} is not allowed; use ${allow}`, allow));
  };
}

/** Options of `UnavailableError`. */
export interface UnavailableErrorOptions extends ErrorOptions {
  /** The stream the request writes to, named in the log line. */
  stream?: string | undefined;
}

/**
 * The request cannot be served now, through no fault of its own: Redis cannot be reached, does
 * not answer in time or refuses the work (its error is the `cause`). `errorMiddleware` answers
 * 503 `{error: message}`, so `message` is for the client and must not carry the cause; the cause
 * goes to the log. The same request may succeed later.
 */
export class UnavailableError extends Error {
  readonly stream: string | undefined;
  constructor(message: string, options?: UnavailableErrorOptions) {
    super(message, options);
    this.name = new.target.name;
    this.stream = options?.stream;
  }
}

/**
 * Express's body parser fails with the status to answer (4xx) and, mostly, a `type`. A body that
 * does not inflate as its Content-Encoding says has no `type`: zlib's error, with status 400.
 */
const BODY_PARSER_ERRORS: Record<string, string> = {
  'entity.parse.failed': 'body: malformed JSON',
  'entity.too.large': 'body: too large (16 kB at most)',
  'encoding.unsupported': 'body: unsupported content encoding',
  'charset.unsupported': 'body: unsupported charset',
  'request.aborted': 'body: request aborted',
  'request.size.invalid': 'body: size does not match Content-Length',
};

/** The client's fault, as the body parser saw it: its status and a message naming the body. */
function bodyParserError(err: unknown): { status: number; message: string } | undefined {
  const { status, type } = (err ?? {}) as { status?: unknown; type?: unknown };
  if (typeof status !== 'number' || status < 400 || status > 499) return undefined;
  const known = typeof type === 'string' && Object.hasOwn(BODY_PARSER_ERRORS, type);
  return { status, message: known ? BODY_PARSER_ERRORS[type]! : 'body: cannot be decoded' };
}

/** What `errorMiddleware` needs of Express's response. */
export interface ErrorResponse {
  readonly headersSent: boolean;
  getHeader(name: string): unknown;
  setHeader(name: string, value: string): unknown;
  status(code: number): { json(body: unknown): unknown };
}

/**
 * A service's one Express error middleware, to `app.use()` after every route: routes throw (or
 * pass to `next`) the named errors above, and this alone decides the answer.
 *
 * - `ValidationError` → 400 `{error, field}`; `ConflictError` → 409 `{error, field}`;
 * - `UnauthorizedError` → 401 `{error, field: 'Authorization'}` with `WWW-Authenticate`;
 *   `ForbiddenError` → 403 `{error, field}`; `TooManyRequestsError` → 429 `{error}` with `Retry-After`;
 * - a body that is not JSON where `jsonBody()` wants it → 415 `{error, field: 'content-type'}`;
 * - a method a known path does not serve (`methodNotAllowed`) → 405 `{error}` with `Allow`;
 * - a body that Express's body parser could not read (malformed JSON, too large, a bad
 *   encoding) → its 4xx status, `{error, field: 'body'}`;
 * - `UnavailableError` → 503 `{error}`, logged as a warning with its cause; as an error when the
 *   cause is a stream that takes no new IDs (`isStreamIdError`), which only an operator's repair
 *   heals (README, Entry IDs);
 * - anything else → logged as `err` (`unexpected error`) and answered 500
 *   `{error: 'internal error'}`: neither its message nor its stack reaches the client.
 *
 * Its lines carry the request's `requestId` (the `X-Request-Id` that `accessLog` set), which ties
 * them to the request's access line.
 *
 * An error raised after the answer has begun is left to Express, which closes the connection.
 */
export function errorMiddleware(logger: Logger) {
  // Four parameters: that is how Express tells an error middleware from a route.
  return (err: unknown, _req: unknown, res: ErrorResponse, next: (err: unknown) => void): void => {
    if (res.headersSent) return next(err);
    const bodyError = bodyParserError(err);
    if (err instanceof ValidationError) {
      res.status(400).json({ error: err.message, field: err.field });
    } else if (err instanceof UnauthorizedError) {
      res.setHeader('WWW-Authenticate', err.challenge);
      res.status(401).json({ error: err.message, field: 'Authorization' });
    } else if (err instanceof ForbiddenError) {
      res.status(403).json({ error: err.message, field: err.field });
    } else if (err instanceof TooManyRequestsError) {
      res.setHeader('Retry-After', String(err.retryAfterS));
      res.status(429).json({ error: err.message });
    } else if (err instanceof ConflictError) {
      res.status(409).json({ error: err.message, field: err.field });
    } else if (err instanceof UnsupportedMediaTypeError) {
      res.status(415).json({ error: err.message, field: err.field });
    } else if (err instanceof MethodNotAllowedError) {
      res.setHeader('Allow', err.allow);
      res.status(405).json({ error: err.message });
    } else if (err instanceof UnavailableError) {
      const { stream } = err;
      const requestId = res.getHeader('x-request-id');
      if (isStreamIdError(err.cause))
        logger.error(
          { err, stream, requestId },
          `${stream ?? 'a stream'} cannot take new entries (its IDs run ahead of the clock or are used up); requests that write to it are refused until an operator repairs it (README: Entry IDs)`,
        );
      else logger.warn({ err, stream, requestId }, err.message);
      res.status(503).json({ error: err.message });
    } else if (bodyError) {
      res.status(bodyError.status).json({ error: bodyError.message, field: 'body' });
    } else {
      logger.error({ err, requestId: res.getHeader('x-request-id') }, 'unexpected error');
      res.status(500).json({ error: 'internal error' });
    }
  };
}
