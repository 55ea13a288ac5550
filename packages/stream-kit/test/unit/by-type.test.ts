import { describe, expect, it } from 'vitest';
import { byType, NonRetryableError, type DeliveryContext } from '../../src/index.ts';

type Shipped = { type: 'shipped'; orderId: string };
type Returned = { type: 'returned'; orderId: string; reason: string };
type ShipmentEvent = Shipped | Returned;

const context: DeliveryContext = {
  id: '1-0',
  stream: 's',
  group: 'g',
  consumer: 'c',
  deliveryCount: 1,
  stillHeld: () => true,
};

describe('byType', () => {
  it('hands each event to the handler of its type, typed as that type', async () => {
    const seen: string[] = [];
    const handler = byType<ShipmentEvent>({
      shipped: (event) => void seen.push(`shipped ${event.orderId}`),
      returned: (event) => void seen.push(`returned ${event.orderId}: ${event.reason}`),
    });

    await handler({ type: 'returned', orderId: 'o-1', reason: 'broken' }, context);
    await handler({ type: 'shipped', orderId: 'o-2' }, context);

    expect(seen).toEqual(['returned o-1: broken', 'shipped o-2']);
  });

  it('fails the typecheck when a type of the stream has no handler', () => {
    // @ts-expect-error -- `returned` is missing: exactly what makes a new event type a compile error
    const handler = byType<ShipmentEvent>({ shipped: () => {} });

    expect(handler).toBeTypeOf('function');
  });

  it('dead-letters an event of a type without a handler (NonRetryableError), naming the type', async () => {
    const handler = byType<ShipmentEvent>({ shipped: () => {} } as never);

    const handling = handler({ type: 'returned', orderId: 'o-1', reason: 'x' }, context);

    await expect(handling).rejects.toThrow(NonRetryableError);
    await expect(handling).rejects.toThrow('no handler for event type "returned"');
  });

  it('takes no inherited property for a handler', async () => {
    const handler = byType<ShipmentEvent>({ shipped: () => {}, returned: () => {} });

    await expect(handler({ type: 'constructor' } as never, context)).rejects.toThrow(NonRetryableError);
  });
});
