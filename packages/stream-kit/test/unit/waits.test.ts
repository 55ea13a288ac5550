import { describe, expect, it } from 'vitest';
import { sleep, StepGuard } from '../../src/consumer/waits.ts';

describe('sleep', () => {
  it('resolves at once when its signal aborts', async () => {
    const stop = new AbortController();
    const started = performance.now();

    const waiting = sleep(10_000, { signal: stop.signal });
    stop.abort();
    await waiting;

    expect(performance.now() - started).toBeLessThan(1_000);
  });

  it('does not wait at all with a signal already aborted', async () => {
    const stop = new AbortController();
    stop.abort();
    const started = performance.now();

    await sleep(10_000, { signal: stop.signal });

    expect(performance.now() - started).toBeLessThan(1_000);
  });
});

describe('StepGuard', () => {
  it('passes on what the step resolves or throws', async () => {
    const guard = new StepGuard();

    await expect(guard.run(Promise.resolve())).resolves.toBeUndefined();
    await expect(guard.run(Promise.reject(new Error('boom')))).rejects.toThrow('boom');
  });

  it('stops waiting for the step under way, and for every later one, once abandoned', async () => {
    const guard = new StepGuard();
    const never = new Promise<void>(() => {});

    const waiting = guard.run(never);
    guard.abandon();

    await expect(waiting).resolves.toBeUndefined();
    await expect(guard.run(never)).resolves.toBeUndefined();
  });
});
