/*
 * Handler run times for the board's chart, from the services' own `/metrics`: the cumulative
 * buckets of `messaging_process_duration_seconds`, summed over outcomes and over the services
 * that report the same stream and group, and turned into p50 and p99 over the interval between
 * two scrapes, as PromQL's `histogram_quantile(q, rate(...))` would.
 */

const METRIC = 'messaging_process_duration_seconds_bucket';
const SAMPLE = /^messaging_process_duration_seconds_bucket\{([^}]*)\} (\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

/** Cumulative counts by bucket bound (`+Inf` as Infinity), by `stream/group`. */
export type Buckets = Map<string, Map<number, number>>;

/** The run-time buckets in a `/metrics` text, by `stream/group`, outcomes summed. */
export function parseRunTimes(text: string): Buckets {
  const buckets: Buckets = new Map();
  for (const line of text.split('\n')) {
    if (!line.startsWith(METRIC)) continue;
    const match = SAMPLE.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const [, name, value] of match[1]!.matchAll(LABEL)) labels[name!] = value!;
    const { stream, group, le } = labels;
    if (stream === undefined || group === undefined || le === undefined) continue;
    const key = `${stream}/${group}`;
    const bound = le === '+Inf' ? Infinity : Number(le);
    let series = buckets.get(key);
    if (!series) buckets.set(key, (series = new Map()));
    series.set(bound, (series.get(bound) ?? 0) + Number(match[2]));
  }
  return buckets;
}

/**
 * The runs counted between `before` and `after`, two scrapes of one service, as cumulative counts
 * by bucket, added into `into` (several services may run the same group). A series with no run in
 * between, or whose counts went down (the service restarted in between), adds nothing.
 */
export function addRunsBetween(into: Buckets, before: Buckets, after: Buckets): void {
  for (const [key, now] of after) {
    const then = before.get(key);
    if (!then) continue;
    const delta = new Map<number, number>();
    for (const [bound, count] of now) delta.set(bound, count - (then.get(bound) ?? 0));
    if ([...delta.values()].some((count) => count < 0) || (delta.get(Infinity) ?? 0) === 0) continue;
    let sum = into.get(key);
    if (!sum) into.set(key, (sum = new Map()));
    for (const [bound, count] of delta) sum.set(bound, (sum.get(bound) ?? 0) + count);
  }
}

/** p50 and p99 in seconds of `runs` (from `addRunsBetween`), by `stream/group`. */
export function quantilesOf(runs: Buckets): Record<string, { p50: number; p99: number }> {
  const result: Record<string, { p50: number; p99: number }> = {};
  for (const [key, series] of runs) {
    const bounds = [...series.keys()].sort((a, b) => a - b);
    const cumulative = bounds.map((bound) => series.get(bound)!);
    result[key] = { p50: quantile(0.5, bounds, cumulative), p99: quantile(0.99, bounds, cumulative) };
  }
  return result;
}

/** Linear interpolation inside the bucket the quantile falls in; the highest finite bound for `+Inf`. */
function quantile(q: number, bounds: readonly number[], cumulative: readonly number[]): number {
  const rank = q * cumulative.at(-1)!;
  const i = cumulative.findIndex((count) => count >= rank);
  const upper = bounds[i]!;
  if (upper === Infinity) return bounds.at(-2) ?? 0;
  const lower = i === 0 ? 0 : bounds[i - 1]!;
  const below = i === 0 ? 0 : cumulative[i - 1]!;
  const inBucket = cumulative[i]! - below;
  return inBucket === 0 ? upper : lower + (upper - lower) * ((rank - below) / inBucket);
}
