import type { Handler } from './consumer/delivery.ts';
import { NonRetryableError } from './errors.ts';

/** One handler for each event type `E` carries, keyed by type. */
export type HandlersByType<E extends { type: string }> = {
  readonly [K in E['type']]: Handler<Extract<E, { type: K }>>;
};

/**
 * A handler for a stream that carries several event types, made of one handler per type, each of
 * which receives its own event type. Exhaustive: a type added to the stream's schema and missing
 * here fails the typecheck (a `switch` on `event.type` would ack it silently). An event of a type
 * with no handler (code built without that check) rejects with `NonRetryableError`, so its entry goes to
 * the dead-letter stream (`no handler for event type "..."`), never acked unhandled.
 */
export function byType<E extends { type: string }>(handlers: HandlersByType<E>): Handler<E> {
  return (event, context) => {
    if (!Object.hasOwn(handlers, event.type))
      return Promise.reject(new NonRetryableError(`no handler for event type ${JSON.stringify(event.type)}`));
    const handle = handlers[event.type as E['type']] as Handler<E>;
    return handle(event, context);
  };
}
