import type { StreamDefinition } from '@msa/stream-kit';

/*
 * The compatibility check: entries that a schema of the catalogue accepted once must still be
 * accepted, or consumers would dead-letter what producers (ours of an earlier release, the Java
 * tutorial's, a replay of old dead letters) still write. The corpus (docs/contracts/corpus.json)
 * keeps samples of such entries, per event type, edge cases included; a schema change that refuses
 * one of them is a breaking change.
 */

/** A sample entry, as Redis holds it: flat string fields. */
export interface CorpusEntry {
  readonly stream: string;
  /** What it shows, e.g. `the tutorial's three fields`. */
  readonly note: string;
  /** Its entry ID, for the fields a stream assumes when they are missing. @defaultValue `1795312027109-0` */
  readonly id?: string;
  readonly fields: Readonly<Record<string, string>>;
}

/**
 * What in `corpus` the current `streams` refuse, one line each (none: compatible). Each entry is
 * read as a subscriber reads it: the stream's defaults under its fields, then its schema.
 */
export function compatibilityProblems(
  streams: readonly StreamDefinition[],
  corpus: readonly CorpusEntry[],
): string[] {
  const problems: string[] = [];
  for (const entry of corpus) {
    const stream = streams.find((known) => known.name === entry.stream);
    if (!stream) {
      problems.push(`${entry.stream} (${entry.note}): the stream is gone from the catalogue`);
      continue;
    }
    const input = Object.assign({}, stream.defaults?.(entry.id ?? '1795312027109-0'), entry.fields);
    const result = stream.schema.safeParse(input);
    if (!result.success) {
      const issues = result.error.issues.map(
        (issue) => `${issue.path.join('.') || '(entry)'}: ${issue.message}`,
      );
      problems.push(`${entry.stream} (${entry.note}): refused now: ${issues.join('; ')}`);
    }
  }
  return problems;
}

/** Every event type of `streams` that no entry of `corpus` stands for. */
export function uncoveredTypes(
  types: readonly { stream: string; type: string }[],
  streams: readonly StreamDefinition[],
  corpus: readonly CorpusEntry[],
): string[] {
  const covered = new Set<string>();
  for (const entry of corpus) {
    const stream = streams.find((known) => known.name === entry.stream);
    const input = Object.assign({}, stream?.defaults?.(entry.id ?? '1795312027109-0'), entry.fields);
    covered.add(`${entry.stream} ${String(input.type)}`);
  }
  return types.map(({ stream, type }) => `${stream} ${type}`).filter((key) => !covered.has(key));
}
