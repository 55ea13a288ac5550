/**
 * An event that does not match its stream's schema. Thrown by `publish()` before anything is
 * written; `issues` lists each field at fault as `path: message`.
 */
export class EventValidationError extends Error {
  constructor(
    readonly stream: string,
    readonly issues: readonly string[],
  ) {
    super(`invalid ${stream} event: ${issues.join('; ')}`);
    this.name = new.target.name;
  }
}

/**
 * Throw this from a handler when retrying cannot help (the event is valid but can never be
 * applied). The entry goes to the dead-letter stream at once instead of being delivered again.
 */
export class NonRetryableError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * Throw this from a handler when the entry cannot be handled now for a reason that is not its
 * own fault (another live consumer holds a lease on its effect, say). The entry stays pending and
 * comes back `retryDelayMs` later; the run does not count toward `maxDeliveries`.
 */
export class RetryLaterError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** `publish()` or `publishMany()` after the publisher's `close()`: nothing was written. */
export class PublisherClosedError extends Error {
  constructor() {
    super('publisher is closed');
    this.name = new.target.name;
  }
}

/**
 * For the branch of a handler's `switch (event.type)` that no case took: with every type handled
 * TypeScript infers `never` there, so a type added to the stream's schema and not to the handler
 * fails the typecheck. Should one arrive anyway (code built without the check), it throws
 * `NonRetryableError`: the entry goes to the dead-letter stream with its type as the reason,
 * never acked silently.
 */
export function unknownEvent(event: never): never {
  const type = (event as { type?: unknown } | null)?.type;
  throw new NonRetryableError(`no handler for event type ${JSON.stringify(type ?? null)}`);
}
