import type { RedisClient } from '@msa/stream-kit';
import { compareIds } from './outcome.ts';

/*
 * How long the entries a SIGKILLed consumer held take to be handled: the ones pending under its
 * name right after the kill, watched in their groups' pending lists until each is acked (by
 * anyone: the restarted instance under the same name, or another that took it over).
 */

/** How the killed instance was named: fixed (its restart takes its own entries back at once), or per start (another instance must take them over). */
export type Naming = 'fixed' | 'perStart';

/** One entry a killed consumer held, and when it stopped being pending. */
export interface HeldEntry {
  /** The service of the killed instance. */
  service: string;
  stream: string;
  group: string;
  id: string;
  naming: Naming;
  killedAt: number;
  /** When the watch first saw it no longer pending; undefined while it still is. */
  handledAt?: number;
}

/** Entries per XPENDING page while polling: a group's pending list is its entries in flight. */
const PAGE = 1_000;

/**
 * Watches the entries SIGKILLed consumers held until each is no longer pending. Give it a
 * connection of its own: it polls every `intervalMs` while `start`ed, with one XPENDING range
 * per group (from the oldest entry still watched to the newest), never a read of the streams.
 * Pending-list reads are not writes, so it works while Redis refuses writes; it waits through a
 * stall or a restart.
 */
export class TakeoverWatch {
  private readonly entries: HeldEntry[] = [];
  private open: HeldEntry[] = [];
  private polling: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly redis: RedisClient,
    private readonly intervalMs = 100,
  ) {}

  /**
   * Reads what `consumer` (just killed, at `killedAt`) has pending in each of `groups`
   * (`[stream, group]`) and watches it; resolves to how many entries that was. A group that does
   * not exist yet holds nothing.
   */
  async killed(
    service: string,
    consumer: string,
    naming: Naming,
    groups: readonly (readonly [string, string])[],
    killedAt: number,
  ): Promise<number> {
    let count = 0;
    for (const [stream, group] of groups) {
      const held = (await this.redis
        .xpending(stream, group, '-', '+', 100_000, consumer)
        .catch(() => [])) as [string, string, number, number][];
      for (const [id] of held) {
        const entry = { service, stream, group, id, naming, killedAt };
        this.entries.push(entry);
        this.open.push(entry);
      }
      count += held.length;
    }
    return count;
  }

  /** Starts polling. Safe to call twice. */
  start(): void {
    this.polling ??= (async () => {
      while (!this.stopped) {
        await this.poll().catch(() => {});
        await sleep(this.intervalMs);
      }
    })();
  }

  /**
   * Polls once more (entries handled since the last poll get their time), stops, and resolves to
   * every entry watched, `handledAt` unset for those still pending. Safe to call twice.
   */
  async stop(): Promise<HeldEntry[]> {
    this.stopped = true;
    await this.polling;
    await this.poll().catch(() => {});
    return this.entries;
  }

  /** Marks the watched entries no longer pending as handled now. */
  private async poll(): Promise<void> {
    const byGroup = new Map<string, HeldEntry[]>();
    for (const entry of this.open) {
      const key = `${entry.stream}\n${entry.group}`;
      const watched = byGroup.get(key);
      if (watched) watched.push(entry);
      else byGroup.set(key, [entry]);
    }
    for (const watched of byGroup.values()) {
      const { stream, group } = watched[0]!;
      const ids = watched.map((entry) => entry.id).sort(compareIds);
      const pending = new Set<string>();
      // From the oldest watched entry to the newest, a page at a time; each page starts past the
      // last one (an exclusive range).
      for (let from = ids[0]!; ;) {
        const page = (await this.redis.xpending(stream, group, from, ids.at(-1)!, PAGE)) as [string][];
        for (const [id] of page) pending.add(id);
        if (page.length < PAGE) break;
        from = `(${page.at(-1)![0]}`;
      }
      // The reply's time, not the request's: a later bound when the reply was held up.
      const now = Date.now();
      for (const entry of watched) if (!pending.has(entry.id)) entry.handledAt = now;
    }
    this.open = this.open.filter((entry) => entry.handledAt === undefined);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** What the entries of one kind of instance's SIGKILLs took to be handled (see `takeoversOf`). */
export interface Takeovers {
  /** SIGKILLs of such instances, each one's pending entries read right after it. */
  kills: number;
  /** Per entry held at such a SIGKILL, the ms from the kill until it was no longer pending. */
  ms: number[];
  /**
   * The same, for the entries whose wait overlapped no Redis trouble (a hold of the consumers, a
   * stall, the out-of-memory window, the restart) and had a live peer all along (another instance
   * of the service, neither killed nor paused, and up long enough to judge others): while Redis
   * refuses writes, or no instance is there to take over, nobody can ack, however soon a dead
   * consumer is noticed.
   */
  clearMs: number[];
  /** Entries still pending when the watch stopped: they have no time. */
  unhandled: number;
}

/**
 * The watched entries' times by how the killed instance was named, given the SIGKILLs of each
 * kind, the spans `[from, to]` (epoch ms) of Redis trouble, and whether an instance of a service
 * could take over all through `[from, to]`.
 */
export function takeoversOf(
  entries: readonly HeldEntry[],
  kills: Record<Naming, number>,
  trouble: readonly (readonly [number, number])[],
  peerUp: (service: string, from: number, to: number) => boolean = () => true,
): Record<Naming, Takeovers> {
  const of = (naming: Naming): Takeovers => {
    const held = entries.filter((entry) => entry.naming === naming);
    const handled = held.filter((entry) => entry.handledAt !== undefined) as Required<HeldEntry>[];
    const clear = handled.filter(
      ({ service, killedAt, handledAt }) =>
        trouble.every(([from, to]) => handledAt < from || killedAt > to) &&
        peerUp(service, killedAt, handledAt),
    );
    return {
      kills: kills[naming],
      ms: handled.map((entry) => entry.handledAt - entry.killedAt),
      clearMs: clear.map((entry) => entry.handledAt - entry.killedAt),
      unhandled: held.length - handled.length,
    };
  };
  return { fixed: of('fixed'), perStart: of('perStart') };
}
