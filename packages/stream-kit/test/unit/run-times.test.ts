import { describe, expect, it } from 'vitest';
import { addRunsBetween, parseRunTimes, quantilesOf, type Buckets } from '../../src/board/run-times.ts';

/** A /metrics text with the run-time histogram of one group: cumulative counts at 1 ms, 10 ms, 100 ms, +Inf. */
function scrape(group: string, counts: [number, number, number, number], outcome = 'acked'): string {
  const labels = (le: string) => `{stream="s",group="${group}",outcome="${outcome}",le="${le}"}`;
  return [
    '# TYPE messaging_process_duration_seconds histogram',
    `messaging_process_duration_seconds_bucket${labels('0.001')} ${counts[0]}`,
    `messaging_process_duration_seconds_bucket${labels('0.01')} ${counts[1]}`,
    `messaging_process_duration_seconds_bucket${labels('0.1')} ${counts[2]}`,
    `messaging_process_duration_seconds_bucket${labels('+Inf')} ${counts[3]}`,
    `messaging_process_duration_seconds_sum{stream="s",group="${group}",outcome="${outcome}"} 1`,
    'http_server_request_duration_seconds_bucket{method="GET",route="/x",status_code="200",le="0.1"} 3',
  ].join('\n');
}

describe('handler run times from /metrics', () => {
  it('reads the buckets of each stream and group, outcomes summed', () => {
    const buckets = parseRunTimes(`${scrape('g', [1, 2, 3, 4])}\n${scrape('g', [1, 1, 1, 1], 'retried')}`);

    expect([...buckets.keys()]).toEqual(['s/g']);
    expect(buckets.get('s/g')!.get(0.01)).toBe(3);
    expect(buckets.get('s/g')!.get(Infinity)).toBe(5);
  });

  it('takes p50 and p99 of the runs between two scrapes, interpolating inside the bucket', () => {
    const runs: Buckets = new Map();
    // 100 runs in between: 50 under 1 ms, 40 from 1 to 10 ms, 10 from 10 to 100 ms.
    addRunsBetween(
      runs,
      parseRunTimes(scrape('g', [10, 10, 10, 10])),
      parseRunTimes(scrape('g', [60, 100, 110, 110])),
    );

    const { p50, p99 } = quantilesOf(runs)['s/g']!;

    expect(p50).toBeCloseTo(0.001, 6);
    expect(p99).toBeCloseTo(0.01 + 0.09 * 0.9, 6);
  });

  it('adds the runs of several services of one group before taking quantiles', () => {
    const runs: Buckets = new Map();
    addRunsBetween(
      runs,
      parseRunTimes(scrape('g', [0, 0, 0, 0])),
      parseRunTimes(scrape('g', [100, 100, 100, 100])),
    );
    addRunsBetween(
      runs,
      parseRunTimes(scrape('g', [0, 0, 0, 0])),
      parseRunTimes(scrape('g', [0, 0, 100, 100])),
    );

    expect(quantilesOf(runs)['s/g']!.p50).toBeCloseTo(0.001, 6);
    expect(quantilesOf(runs)['s/g']!.p99).toBeGreaterThan(0.01);
  });

  it('leaves out a series with no run in between, or one whose counts went down (a restart)', () => {
    const runs: Buckets = new Map();
    addRunsBetween(
      runs,
      parseRunTimes(scrape('idle', [5, 5, 5, 5])),
      parseRunTimes(scrape('idle', [5, 5, 5, 5])),
    );
    addRunsBetween(
      runs,
      parseRunTimes(scrape('restarted', [50, 50, 50, 50])),
      parseRunTimes(scrape('restarted', [1, 1, 1, 1])),
    );

    expect(quantilesOf(runs)).toEqual({});
  });

  it('answers the highest finite bound for runs past every bucket', () => {
    const runs: Buckets = new Map();
    addRunsBetween(runs, parseRunTimes(scrape('g', [0, 0, 0, 0])), parseRunTimes(scrape('g', [0, 0, 0, 10])));

    expect(quantilesOf(runs)['s/g']).toEqual({ p50: 0.1, p99: 0.1 });
  });
});
