import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { OrderCreated, OrderEvents, PaymentEvents, type OrderEvent } from '../src/events.ts';
import { EventValidationError } from '../src/errors.ts';
import { decode, encode, xaddArguments } from '../src/stream.ts';

const ENTRY_ID = '1700000000000-0';

describe('order-events entries', () => {
  it("read the tutorial's three fields as order-created, with the entry ID as orderId", () => {
    const decoded = decode(OrderEvents, ENTRY_ID, { userId: 'u1', productId: 'p1', price: '1000' });

    expect(decoded).toEqual({
      ok: true,
      event: { type: 'order-created', orderId: ENTRY_ID, userId: 'u1', productId: 'p1', price: 1000 },
    });
  });

  it('keep the orderId they carry', () => {
    const decoded = decode(OrderEvents, ENTRY_ID, {
      type: 'order-created',
      orderId: 'o-1',
      userId: 'u1',
      productId: 'p1',
      price: '12.50',
    });

    expect(decoded).toMatchObject({ ok: true, event: { orderId: 'o-1', price: 12.5 } });
  });

  it('survive the round trip through encode unchanged', () => {
    const event: OrderEvent = {
      type: 'order-created',
      orderId: 'o-1',
      userId: 'u',
      productId: 'p',
      price: 0.5,
    };

    expect(encode(event)).toEqual({
      type: 'order-created',
      orderId: 'o-1',
      userId: 'u',
      productId: 'p',
      price: '0.5',
    });
    expect(decode(OrderEvents, ENTRY_ID, encode(event))).toEqual({ ok: true, event });
  });

  it.each([
    ['a zero price', { price: '0' }, /price/],
    ['a negative price', { price: '-5' }, /price/],
    ['a non-numeric price', { price: 'free' }, /price/],
    ['an empty price', { price: '' }, /price/],
    ['a blank userId', { userId: '  ' }, /^userId: must not be blank$/],
    [
      'an orderId of 129 characters',
      { orderId: 'o'.repeat(129) },
      /^orderId: must be at most 128 characters$/,
    ],
    ['a userId with a lone surrogate', { userId: 'u1\ud800' }, /^userId: must be valid Unicode/],
    ['a productId with a lone surrogate', { productId: '\udc00p1' }, /^productId: must be valid Unicode/],
    ['an unknown event type', { type: 'order-shipped' }, /type/],
  ])('reject %s, naming the field', (_name, override, reason) => {
    const decoded = decode(OrderEvents, ENTRY_ID, {
      userId: 'u1',
      productId: 'p1',
      price: '1000',
      ...override,
    });

    expect(decoded.ok).toBe(false);
    expect(!decoded.ok && decoded.reason).toMatch(reason);
  });

  it('reject an entry missing a field', () => {
    const decoded = decode(OrderEvents, ENTRY_ID, { userId: 'u1', price: '1000' });

    expect(decoded).toEqual({ ok: false, reason: expect.stringMatching(/^productId: /) });
  });
});

describe('IDs', () => {
  it('are trimmed, and count their length after trimming', () => {
    const decoded = decode(OrderEvents, ENTRY_ID, {
      type: 'order-created',
      orderId: ` ${'o'.repeat(128)} `,
      userId: '\tu1 ',
      productId: 'p1',
      price: '1000',
    });

    expect(decoded).toEqual({
      ok: true,
      event: { type: 'order-created', orderId: 'o'.repeat(128), userId: 'u1', productId: 'p1', price: 1000 },
    });
  });

  it("keep their limits in the schema's JSON Schema", () => {
    const schema = z.toJSONSchema(OrderCreated, { io: 'input' });

    for (const field of ['orderId', 'userId', 'productId'])
      expect(schema.properties?.[field]).toEqual({ type: 'string', minLength: 1, maxLength: 128 });
  });
});

describe('an order-created event with a lone surrogate in an ID', () => {
  // Redis would store it as U+FFFD: 'alice\ud800' and 'alice\udbff' would become one user.
  it('is refused before it is written, naming the field', () => {
    const event: OrderEvent = {
      type: 'order-created',
      orderId: 'o-1',
      userId: 'alice\ud800',
      productId: 'p',
      price: 1,
    };

    expect(() => xaddArguments(OrderEvents, event)).toThrow(EventValidationError);
    expect(() => xaddArguments(OrderEvents, event)).toThrow(/userId: must be valid Unicode/);
  });

  it('is fine with a character outside the BMP, a surrogate pair', () => {
    const event: OrderEvent = {
      type: 'order-created',
      orderId: 'o-1',
      userId: '👩‍👩‍👧',
      productId: 'p',
      price: 1,
    };

    expect(decode(OrderEvents, ENTRY_ID, encode(event))).toEqual({ ok: true, event });
  });
});

describe('payment-events entries', () => {
  it('read as payment-completed when they carry no type', () => {
    const decoded = decode(PaymentEvents, ENTRY_ID, {
      orderId: 'o-1',
      userId: 'u1',
      productId: 'p1',
      price: '1000',
      paymentProcessId: '7',
    });

    expect(decoded).toMatchObject({
      ok: true,
      event: { type: 'payment-completed', paymentProcessId: '7', price: 1000 },
    });
  });

  it("accept the tutorial's Java entries, which carry no orderId", () => {
    const decoded = decode(PaymentEvents, ENTRY_ID, {
      userId: 'u1',
      productId: 'p1',
      price: '1000',
      paymentProcessId: '0',
    });

    expect(decoded).toEqual({
      ok: true,
      event: { type: 'payment-completed', userId: 'u1', productId: 'p1', price: 1000, paymentProcessId: '0' },
    });
  });

  it('need a paymentProcessId', () => {
    const decoded = decode(PaymentEvents, ENTRY_ID, {
      orderId: 'o-1',
      userId: 'u1',
      productId: 'p1',
      price: '1000',
    });

    expect(decoded).toEqual({ ok: false, reason: expect.stringMatching(/^paymentProcessId: /) });
  });
});

describe("the saga's events", () => {
  it.each([
    [OrderEvents, { type: 'order-cancelled', orderId: 'o-1', userId: 'u1', reason: 'payment-timeout' }],
    [PaymentEvents, { type: 'payment-failed', orderId: 'o-1', userId: 'u1', reason: 'limit-exceeded' }],
    [
      PaymentEvents,
      { type: 'payment-refunded', orderId: 'o-1', userId: 'u1', paymentProcessId: 'pp-1', price: 12.5 },
    ],
  ] as const)('%#: survive the round trip through encode unchanged', (stream, event) => {
    expect(decode(stream, ENTRY_ID, encode(event))).toEqual({ ok: true, event });
  });

  it.each([
    [
      'a cancellation with a reason of its own',
      OrderEvents,
      { type: 'order-cancelled', orderId: 'o', userId: 'u', reason: 'bored' },
      /^reason: /,
    ],
    [
      'a cancellation without a user',
      OrderEvents,
      { type: 'order-cancelled', orderId: 'o', reason: 'payment-timeout' },
      /^userId: /,
    ],
    [
      'a declined payment without an order',
      PaymentEvents,
      { type: 'payment-failed', userId: 'u', reason: 'limit-exceeded' },
      /^orderId: /,
    ],
    [
      'a refund without its payment',
      PaymentEvents,
      { type: 'payment-refunded', orderId: 'o', userId: 'u', price: '5' },
      /^paymentProcessId: /,
    ],
  ] as const)('reject %s, naming the field', (_name, stream, fields, reason) => {
    const decoded = decode(stream, ENTRY_ID, fields);

    expect(decoded.ok).toBe(false);
    expect(decoded.ok === false && decoded.reason).toMatch(reason);
  });
});
