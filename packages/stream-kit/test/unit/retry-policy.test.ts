import { describe, expect, it } from 'vitest';
import {
  MAX_RETRY_DELAY_MS,
  pauseDelay,
  retryDelay,
  RetrySchedule,
} from '../../src/consumer/retry-policy.ts';

describe('retryDelay', () => {
  it('waits the base delay after the first run, then twice as long after each one after', () => {
    expect([1, 2, 3, 4].map((run) => retryDelay(1_000, run))).toEqual([1_000, 2_000, 4_000, 8_000]);
  });

  it(`never waits longer than ${MAX_RETRY_DELAY_MS} ms`, () => {
    expect(retryDelay(1_000, 7)).toBe(MAX_RETRY_DELAY_MS);
    expect(retryDelay(1_000, 1_000)).toBe(MAX_RETRY_DELAY_MS);
  });

  it('retries at once with a base delay of 0', () => {
    expect(retryDelay(0, 5)).toBe(0);
  });
});

describe('pauseDelay', () => {
  it('pauses the loop 200 ms after a first failure, doubling up to 5 s', () => {
    expect([1, 2, 3, 4, 5, 6, 10].map(pauseDelay)).toEqual([200, 400, 800, 1_600, 3_200, 5_000, 5_000]);
  });
});

describe('RetrySchedule', () => {
  const NOW = 1_000_000;

  it('makes a failed entry due after its retry delay, and the loop wake for the first one due', () => {
    const schedule = new RetrySchedule(1_000);

    schedule.failed('1-0', 2, NOW);
    schedule.failed('2-0', 1, NOW);

    expect(schedule.dueAt('1-0', 99, 0, NOW)).toBe(NOW + 2_000);
    expect(schedule.dueAt('2-0', 99, 0, NOW)).toBe(NOW + 1_000);
    expect(schedule.nextAt).toBe(NOW + 1_000);
  });

  it('reckons an entry it never saw fail from its delivery count and idle time, and keeps that time', () => {
    const schedule = new RetrySchedule(1_000);

    expect(schedule.dueAt('1-0', 3, 1_500, NOW)).toBe(NOW + 4_000 - 1_500);
    // Its idle time is reset by any XAUTOCLAIM pass: the time noted first stands.
    expect(schedule.dueAt('1-0', 3, 0, NOW + 100)).toBe(NOW + 2_500);
  });

  it('forgets an entry once done with, and entries no longer pending', () => {
    const schedule = new RetrySchedule(1_000);
    schedule.failed('1-0', 1, NOW);
    schedule.failed('2-0', 1, NOW);
    schedule.failed('3-0', 1, NOW);

    schedule.forget('1-0');
    schedule.keepOnly(new Set(['3-0']));

    expect(schedule.dueAt('1-0', 1, 0, NOW + 5)).toBe(NOW + 5 + 1_000);
    expect(schedule.dueAt('2-0', 1, 0, NOW + 5)).toBe(NOW + 5 + 1_000);
    expect(schedule.dueAt('3-0', 1, 0, NOW + 5)).toBe(NOW + 1_000);
  });

  it('sets no wake-up until told of one once the loop has taken the due entries', () => {
    const schedule = new RetrySchedule(1_000);
    schedule.failed('1-0', 1, NOW);

    schedule.taken();
    expect(schedule.nextAt).toBe(0);
    schedule.wakeAt(NOW + 5_000);
    schedule.wakeAt(NOW + 3_000);
    expect(schedule.nextAt).toBe(NOW + 3_000);
  });
});
