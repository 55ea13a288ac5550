import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { defineStream, slotName, slotTag } from '../../src/stream.ts';

/*
 * Where keys that change with a stream live on a Redis Cluster: in the stream's hash slot, through
 * a hash tag of its name (README, Redis Cluster). Redis hashes a key by what lies between its first
 * `{` and the next `}`, if that is not empty, else by the whole key.
 */

describe('slotName', () => {
  it('wraps a plain stream name in braces, so that `{order-events}:...` hashes as `order-events` does', () => {
    expect(slotName('order-events')).toBe('{order-events}');
  });

  it('keeps a name that holds a hash tag of its own: its keys hash by that tag, as the stream does', () => {
    expect(slotName('orders:{3}')).toBe('orders:{3}');
  });
});

describe('slotTag', () => {
  it("is the slot name and a colon on a cluster, for a service's keys (`payment-service:payment:{payment-events}:<id>`)", () => {
    expect(slotTag({ isCluster: true }, 'payment-events')).toBe('{payment-events}:');
  });

  it('is empty on one Redis, where keys keep the names they had before cluster mode', () => {
    expect(slotTag({ isCluster: false }, 'payment-events')).toBe('');
  });
});

describe('defineStream', () => {
  const schema = z.object({ a: z.string() });

  it.each(['a}b', 'x{}y', '{open'])(
    'refuses the name %s, whose braces are no hash tag: its tagged keys would hash elsewhere than the stream',
    (name) => {
      expect(() => defineStream({ name, schema })).toThrow(RangeError);
    },
  );

  it('takes a name with a hash tag, and one without braces', () => {
    expect(defineStream({ name: 'orders:{3}', schema }).name).toBe('orders:{3}');
    expect(defineStream({ name: 'order-events', schema }).name).toBe('order-events');
  });
});
