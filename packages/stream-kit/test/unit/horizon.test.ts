import { describe, expect, it } from 'vitest';
import { handledBefore, handledThrough, handledUntilMs, type Horizon } from '../../src/horizon.ts';

describe('handledThrough (an entry of another stream against a group horizon)', () => {
  const behind: Horizon = { delivered: '1000-5', caughtUp: false };

  it.each([
    ['an entry of an earlier millisecond than the last delivered', behind, '999-9', true],
    ['an entry of the same millisecond: more entries of it may be unread', behind, '1000-0', false],
    ['an entry of a later millisecond', behind, '1001-0', false],
    [
      'an entry of the millisecond of the first pending entry',
      { ...behind, pendingFrom: '900-3' },
      '900-0',
      false,
    ],
    ['an entry before the first pending one', { ...behind, pendingFrom: '900-3' }, '899-7', true],
    [
      'any entry, once the group has handled all there is',
      { delivered: '1000-5', caughtUp: true },
      '5000-0',
      true,
    ],
    ['no entry, while the group does not exist', undefined, '1-0', false],
  ] as const)('%s: %s', (_name, horizon, id, expected) => {
    expect(handledThrough(horizon, id)).toBe(expected);
  });
});

describe('handledBefore (an entry of the same stream, pending while it is handled)', () => {
  it.each([
    [
      'nothing before it pending: it is the first pending entry',
      { delivered: '1000-5', pendingFrom: '1000-2', caughtUp: true },
      '1000-2',
      true,
    ],
    [
      'an entry before it still pending',
      { delivered: '1000-5', pendingFrom: '1000-1', caughtUp: true },
      '1000-2',
      false,
    ],
    ['an entry not delivered yet', { delivered: '1000-1', caughtUp: false }, '1000-2', false],
  ] as const)('%s', (_name, horizon, id, expected) => {
    expect(handledBefore(horizon, id)).toBe(expected);
  });
});

describe('handledUntilMs', () => {
  it('is now for a group that has handled all there is, else just before its first unhandled millisecond', () => {
    expect(handledUntilMs({ delivered: '1000-5', caughtUp: true }, 7_000)).toBe(7_000);
    expect(handledUntilMs({ delivered: '1000-5', caughtUp: false }, 7_000)).toBe(999);
    expect(handledUntilMs({ delivered: '1000-5', caughtUp: true, pendingFrom: '800-0' }, 7_000)).toBe(799);
    expect(handledUntilMs(undefined, 7_000)).toBe(-Infinity);
  });
});
