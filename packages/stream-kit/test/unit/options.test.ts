import { describe, expect, it } from 'vitest';
import { withDefaults } from '../../src/consumer/options.ts';
import { testStream } from '../test-stream.ts';

describe('withDefaults', () => {
  it('fills in the shipped defaults', () => {
    const stream = testStream();

    const { logger: _, ...settings } = withDefaults(stream, { connection: 'redis://x' });

    expect(settings).toEqual({
      connection: 'redis://x',
      count: 10,
      concurrency: 1,
      blockMs: 2_000,
      maxDeliveries: 5,
      retryDelayMs: 1_000,
      startId: '0',
      claimIdleMs: 60_000,
      deleteIdleConsumersAfterMs: 3_600_000,
      closeTimeoutMs: 10_000,
      deadLetterStream: `${stream.name}:dlq`,
      handlerAcks: false,
    });
  });

  it('keeps the default of an option given as undefined, and takes the others as given', () => {
    const settings = withDefaults(testStream(), {
      connection: 'redis://x',
      count: undefined,
      claimIdleMs: 500,
      handlerAcks: true,
    });

    expect([settings.count, settings.claimIdleMs, settings.handlerAcks]).toEqual([10, 500, true]);
  });

  it.each([
    [{ count: 0 }, 'count must be a positive integer, got 0'],
    [{ concurrency: 1.5 }, 'concurrency must be a positive integer, got 1.5'],
    [{ claimIdleMs: 0 }, 'claimIdleMs must be at least 1, got 0'],
    [{ retryDelayMs: -1 }, 'retryDelayMs must be a non-negative number, got -1'],
    [{ closeTimeoutMs: Number.NaN }, 'closeTimeoutMs must be a non-negative number, got NaN'],
  ])('refuses %o with a RangeError naming the option', (option, message) => {
    expect(() => withDefaults(testStream(), { connection: 'redis://x', ...option })).toThrow(
      new RangeError(message),
    );
  });

  it('refuses a dead-letter stream that is the stream itself', () => {
    const stream = testStream();

    expect(() => withDefaults(stream, { connection: 'redis://x', deadLetterStream: stream.name })).toThrow(
      'deadLetterStream must differ from the stream itself',
    );
  });
});
