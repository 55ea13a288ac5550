import { describe, expect, it } from 'vitest';
import { waitFor } from '../../../../harness/wait.ts';
import { defineStream, subscribe, type SubscribeOptions } from '../../src/index.ts';
import { contractSuite, testStream, type TestStream } from './setup.ts';

/*
 * Options: out of range, they are refused at once, with a message naming them; left out or given
 * as undefined, they keep their defaults.
 */

const suite = contractSuite();
const { start } = suite;

describe('subscribe options', () => {
  it('keeps the default of an option given as undefined', async () => {
    const stream = testStream();
    const seen: number[] = [];
    start(stream, (event) => void seen.push(event.n), { logger: undefined, count: undefined });

    await suite.publisher.publish(stream, { n: 1 });

    await waitFor(() => seen.length === 1);
  });

  it.each<[string, (stream: TestStream) => Partial<SubscribeOptions>, RegExp | RangeErrorConstructor]>([
    ['claimIdleMs 0', () => ({ claimIdleMs: 0 }), RangeError],
    ['count 0', () => ({ count: 0 }), /count/],
    ['concurrency 1.5', () => ({ concurrency: 1.5 }), /concurrency/],
    [
      'the stream itself as deadLetterStream',
      (stream) => ({ deadLetterStream: stream.name }),
      /deadLetterStream/,
    ],
  ])('refuses %s', (_option, options, refusal) => {
    const stream = testStream();

    const subscribing = () =>
      subscribe('g', 'c', stream, () => {}, { connection: suite.url, ...options(stream) });

    expect(subscribing).toThrow(refusal);
  });
});

describe('defineStream options', () => {
  it('refuses a retention out of range', () => {
    expect(() => defineStream({ ...testStream(), retention: { maxLen: 0 } })).toThrow(/maxLen/);
  });
});
