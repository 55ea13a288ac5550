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
