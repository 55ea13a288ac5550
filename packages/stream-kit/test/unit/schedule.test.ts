import { describe, expect, it } from 'vitest';
import { nextStep, readsAhead, reclaimIntervalMs, type LoopState } from '../../src/consumer/schedule.ts';

/* What the loop does next, decided without Redis. */

const NOW = 1_000_000;
const idle: LoopState = {
  readAhead: false,
  ownPending: undefined,
  retryAt: 0,
  claimAt: NOW + 10_000,
  livenessAt: NOW + 10_000,
};

describe('nextStep', () => {
  it('handles a batch read ahead before anything else, even a pending pass or a reclaim that is due', () => {
    const state = { ...idle, readAhead: true, ownPending: 'all' as const, claimAt: 0, retryAt: NOW - 1 };

    expect(nextStep(state, NOW, 2_000)).toEqual({ kind: 'read-ahead' });
  });

  it.each(['all', 'due'] as const)(
    'goes through the own pending list when a %s pass is called for',
    (mode) => {
      expect(nextStep({ ...idle, ownPending: mode, claimAt: 0 }, NOW, 2_000)).toEqual({
        kind: 'own-pending',
        mode,
        retryTime: false,
      });
    },
  );

  it('goes through the due entries once a retry time has come, and says the retry time is used up', () => {
    expect(nextStep({ ...idle, retryAt: NOW }, NOW, 2_000)).toEqual({
      kind: 'own-pending',
      mode: 'due',
      retryTime: true,
    });
  });

  it('reclaims when a reclaim pass is due and nothing of its own waits', () => {
    expect(nextStep({ ...idle, claimAt: NOW }, NOW, 2_000)).toEqual({ kind: 'reclaim' });
  });

  it('checks for dead consumers when the check is due, before a reclaim pass, and after its own pending entries', () => {
    expect(nextStep({ ...idle, livenessAt: NOW, claimAt: NOW }, NOW, 2_000)).toEqual({
      kind: 'take-from-dead',
    });
    expect(nextStep({ ...idle, livenessAt: NOW, retryAt: NOW }, NOW, 2_000)).toMatchObject({
      kind: 'own-pending',
    });
  });

  it('reads new entries, blocking no longer than blockMs', () => {
    expect(nextStep(idle, NOW, 2_000)).toEqual({ kind: 'read', blockMs: 2_000 });
  });

  it.each([
    ['the next retry', { retryAt: NOW + 300 }, 300],
    ['the next reclaim pass', { claimAt: NOW + 700 }, 700],
    ['the next check for dead consumers', { livenessAt: NOW + 600 }, 600],
    ['whichever comes first', { retryAt: NOW + 900, claimAt: NOW + 400 }, 400],
  ])('wakes from a read in time for %s', (_, change, blockMs) => {
    expect(nextStep({ ...idle, ...change }, NOW, 2_000)).toEqual({ kind: 'read', blockMs });
  });

  it('never blocks for less than 1 ms (BLOCK 0 would wait forever)', () => {
    expect(nextStep({ ...idle, claimAt: NOW + 0.2 }, NOW, 2_000)).toEqual({ kind: 'read', blockMs: 1 });
  });
});

describe('readsAhead', () => {
  it('reads the next batch ahead after a full batch when nothing else is due', () => {
    expect(readsAhead(idle, NOW, 10, 10)).toBe(true);
  });

  it('does not read ahead after a short batch: the stream is drained', () => {
    expect(readsAhead(idle, NOW, 9, 10)).toBe(false);
  });

  it.each([
    ['a pending pass is called for', { ownPending: 'all' as const }],
    ['a reclaim pass is due', { claimAt: NOW }],
    ['a retry is due', { retryAt: NOW }],
    ['a check for dead consumers is due', { livenessAt: NOW }],
  ])('does not read ahead when %s: it would wait behind the batch', (_, change) => {
    expect(readsAhead({ ...idle, ...change }, NOW, 10, 10)).toBe(false);
  });
});

describe('reclaimIntervalMs', () => {
  it.each([
    [60_000, 30_000],
    [120_000, 30_000],
    [1_000, 500],
    [20, 50],
  ])(
    'reclaims every half claimIdleMs, between 50 ms and 30 s (claimIdleMs %i → %i)',
    (claimIdleMs, interval) => {
      expect(reclaimIntervalMs(claimIdleMs)).toBe(interval);
    },
  );
});

describe("nextStep in a loop that keeps order (a partition's)", () => {
  it('reads nothing new while a failed entry waits for its retry: it pauses until the retry is due', () => {
    const state = { ...idle, retryAt: NOW + 300, holdNew: true };

    expect(nextStep(state, NOW, 2_000)).toEqual({ kind: 'pause', ms: 300 });
    expect(readsAhead(state, NOW, 10, 10)).toBe(false);
  });

  it('takes the retry when it is due, before anything written after it', () => {
    expect(nextStep({ ...idle, retryAt: NOW - 1, holdNew: true }, NOW, 2_000)).toEqual({
      kind: 'own-pending',
      mode: 'due',
      retryTime: true,
    });
  });
});
