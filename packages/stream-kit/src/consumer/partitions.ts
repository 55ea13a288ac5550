import { performance } from 'node:perf_hooks';
import { openReaderConnection, reconnectIfStalled, type RedisClient } from '../connection.ts';
import { silentLogger } from '../logger.ts';
import { defineScript, RELEASE_LEASE, RENEW_MEMBERSHIP, TAKE_LEASE } from '../scripts.ts';
import { partitionNames, partitionStream, slotName, type StreamDefinition } from '../stream.ts';
import type { Handler } from './delivery.ts';
import { LIVENESS_TTL_MS } from './liveness.ts';
import { ConsumerLoop } from './loop.ts';
import type { Settings } from './options.ts';
import { sleep } from './waits.ts';

/*
 * A subscription to a partitioned stream (`StreamDefinition.partitions`): the group's consumers
 * share out the partitions, and each partition is read by one consumer at a time, through a lease,
 * so that its entries are handled in order. Every `LEASE_CHECK_MS` each consumer renews its
 * membership, works out from the live members and the leases' holders which partitions are its
 * own (`partitionsOf`: the same answer everywhere, balanced and sticky), and takes, renews or lets
 * go of each partition's lease. A consumer that
 * dies stops renewing: its membership and leases lapse within `LEASE_MS`, and the others take its
 * partitions. A consumer that joins makes the others hand over partitions: each first closes its
 * loop for the partition (its running handler ends, its acks land), then releases the lease.
 */

/** How long a partition's lease, and a membership, lasts without renewal. */
export const LEASE_MS = LIVENESS_TTL_MS;
/** How often leases and memberships are renewed, and the partitions shared out again. */
export const LEASE_CHECK_MS = LEASE_MS / 3;

/** Where the members of `group` on partitioned `stream` keep their marks: a hash, consumer → deadline. */
export function membersKey(stream: string, group: string): string {
  return `${slotName(stream)}:members:${group}`;
}

/** The lease on `partition` (a partition's key, `<stream>:{k}`) for `group`, in the partition's slot. */
export function leaseKey(partition: string, group: string): string {
  return `${slotName(partition)}:owner:${group}`;
}

/**
 * The partitions `consumer` should own, given the group's live `members` and who holds each
 * partition's lease now (`owners`, by partition; null for none). Balanced (each member gets
 * `floor(K/n)` or one more) and sticky: a member keeps what it holds up to its share, so a join
 * moves only the partitions the newcomer needs and a departure only the ones it held. A pure
 * function of its inputs, so members that read the same owners work out the same split. None for
 * a consumer that is not a member.
 */
export function partitionsOf(
  consumer: string,
  members: readonly string[],
  owners: readonly (string | null)[],
): number[] {
  const names = [...new Set(members)].sort();
  if (!names.includes(consumer)) return [];
  const held = new Map(names.map((name) => [name, [] as number[]]));
  owners.forEach((owner, k) => owner !== null && held.get(owner)?.push(k));
  // The larger shares go to those holding the most already (then by name): fewer moves.
  const base = Math.floor(owners.length / names.length);
  const byHeld = [...names].sort((a, b) => held.get(b)!.length - held.get(a)!.length || (a < b ? -1 : 1));
  const quota = new Map(byHeld.map((name, i) => [name, base + (i < owners.length % names.length ? 1 : 0)]));
  const share = new Map(names.map((name) => [name, held.get(name)!.slice(0, quota.get(name))]));
  const taken = new Set([...share.values()].flat());
  // The rest (nobody's, a departed member's, over a share) fill the shares still open, in order.
  let next = 0;
  for (let k = 0; k < owners.length; k += 1) {
    if (taken.has(k)) continue;
    while (share.get(names[next]!)!.length >= quota.get(names[next]!)!) next += 1;
    share.get(names[next]!)!.push(k);
  }
  return share.get(consumer)!.sort((a, b) => a - b);
}

interface Owned {
  readonly loop: ConsumerLoop;
  /** Until when (performance.now()) the lease is surely ours: its loop starts nothing after. */
  until: number;
  /**
   * `running`; `releasing`: its loop closes and the lease is released after (renewed meanwhile, so
   * that its running handler ends before anyone else reads the partition); `dropping`: lost, its
   * loop closes and nothing is released.
   */
  state: 'running' | 'releasing' | 'dropping';
}

/** The partitions one consumer of a group owns, each read by a consumer loop of its own. */
export class PartitionedSubscription {
  private readonly redis: RedisClient;
  private readonly owned = new Map<number, Owned>();
  private readonly names: string[];
  private readonly timer: NodeJS.Timeout;
  private ticking: Promise<void> | undefined;
  private closing: Promise<void> | undefined;
  private readonly renewMembership;
  private readonly takeLease;
  private readonly releaseLease;
  private readonly where: { stream: string; group: string; consumer: string };

  constructor(
    private readonly group: string,
    private readonly consumer: string,
    private readonly stream: StreamDefinition,
    private readonly handler: Handler<unknown>,
    private readonly settings: Settings,
  ) {
    this.redis = openReaderConnection(
      settings.connection,
      silentLogger, // the loops' connections log Redis's outages already
      `stream-kit:${group}:${consumer}:partitions`,
      LEASE_MS,
    );
    this.renewMembership = defineScript<string[]>(
      this.redis,
      'streamKitRenewMembership',
      1,
      RENEW_MEMBERSHIP,
    );
    this.takeLease = defineScript<number>(this.redis, 'streamKitTakeLease', 1, TAKE_LEASE);
    this.releaseLease = defineScript<number>(this.redis, 'streamKitReleaseLease', 1, RELEASE_LEASE);
    this.names = partitionNames(stream);
    this.where = { stream: stream.name, group, consumer };
    this.timer = setInterval(() => void this.tick(), LEASE_CHECK_MS);
    this.timer.unref();
    void this.tick();
  }

  /** Closes every partition's loop, releases their leases and leaves the group's members. Safe to call twice. */
  close(): Promise<void> {
    return (this.closing ??= this.shutdown());
  }

  private tick(): Promise<void> {
    if (this.closing) return Promise.resolve();
    return (this.ticking ??= this.share().finally(() => (this.ticking = undefined)));
  }

  /** One round: renew the membership, then take, keep or let go of each partition. */
  private async share() {
    const { logger } = this.settings;
    let mine: Set<number>;
    try {
      const key = membersKey(this.stream.name, this.group);
      const [members, owners] = await Promise.all([
        this.renewMembership(key, this.consumer, LEASE_MS),
        Promise.all(this.names.map((name) => this.redis.get(leaseKey(name, this.group)))),
      ]);
      mine = new Set(partitionsOf(this.consumer, members, owners));
    } catch (err) {
      // The members' hash lives in one slot, each lease in its partition's: a failover of that
      // one master must not stop every partition. Keep what is ours (the leases alone keep one
      // owner per partition), and share out again once the members can be read.
      reconnectIfStalled(this.redis, err, logger, this.where);
      logger.debug({ ...this.where, err }, 'cannot renew the membership of the partitioned group');
      mine = new Set([...this.owned].filter(([, o]) => o.state === 'running').map(([k]) => k));
    }
    await Promise.all(
      this.names.map((_, k) =>
        this.keep(k, mine.has(k)).catch((err: unknown) => {
          reconnectIfStalled(this.redis, err, logger, this.where);
          logger.debug({ ...this.where, partition: this.names[k], err }, 'cannot renew a partition lease');
        }),
      ),
    );
  }

  /** Takes, renews or lets go of partition `k`'s lease, and starts or closes its loop to match. */
  private async keep(k: number, wanted: boolean) {
    const owned = this.owned.get(k);
    if (owned?.state === 'dropping') return;
    if (!owned && !wanted) return;
    const sentAt = performance.now();
    const taken = await this.takeLease(leaseKey(this.names[k]!, this.group), this.consumer, LEASE_MS);
    if (this.closing) {
      // Taken as close() came: let it go at once, rather than make the next owner wait it out.
      if (taken === 2) await this.releaseLease(leaseKey(this.names[k]!, this.group), this.consumer);
      return;
    }
    const { logger } = this.settings;
    const where = { ...this.where, partition: this.names[k] };
    if (taken === 0) {
      if (owned) {
        // Another consumer holds it: ours lapsed (this process or Redis stalled). Stop at once.
        logger.warn(where, 'lost the lease on a partition to another consumer; its loop stops');
        this.drop(k, owned);
      }
      return;
    }
    if (owned && taken === 2) {
      // Ours had lapsed and we took it anew: someone else may have read the partition meanwhile,
      // and the loop's view of it is stale. Start it over.
      logger.info(where, 'a partition lease lapsed and was taken again; restarting its loop');
      this.drop(k, owned);
      return;
    }
    const until = sentAt + LEASE_MS * 0.8;
    if (owned) {
      owned.until = until;
      if (!wanted && owned.state === 'running') this.release(k, owned);
      return;
    }
    logger.info(where, 'took a partition');
    this.owned.set(k, { loop: this.start(k), until, state: 'running' });
  }

  private start(k: number): ConsumerLoop {
    const tenancy = {
      logical: this.stream,
      heldForMs: () => {
        const owned = this.owned.get(k);
        return owned === undefined || owned.state === 'dropping'
          ? 0
          : Math.max(0, owned.until - performance.now());
      },
    };
    // prettier-ignore
    return new ConsumerLoop(
      this.group, this.consumer, partitionStream(this.stream, k), this.handler, this.settings, tenancy,
    );
  }

  /**
   * Hands partition `k` over: closes its loop and waits for its handlers, even one that outlived
   * `closeTimeoutMs` (its lease is renewed meanwhile: nobody else may run the partition's entries
   * while one runs here), then releases the lease.
   */
  private release(k: number, owned: Owned) {
    owned.state = 'releasing';
    void owned.loop
      .close()
      .then(() => owned.loop.handlersDone())
      .then(() => this.releaseLease(leaseKey(this.names[k]!, this.group), this.consumer))
      .then(
        () =>
          this.settings.logger.info({ ...this.where, partition: this.names[k] }, 'handed a partition over'),
        () => {}, // it lapses by itself
      )
      .finally(() => this.forget(k, owned));
  }

  /**
   * Lets go of partition `k` without releasing its lease: its loop starts nothing from now on. It
   * is started again (if the partition comes back) only once its handlers have ended.
   */
  private drop(k: number, owned: Owned) {
    owned.state = 'dropping';
    void owned.loop
      .close()
      .then(() => owned.loop.handlersDone())
      .finally(() => this.forget(k, owned));
  }

  private forget(k: number, owned: Owned) {
    if (this.owned.get(k) === owned) this.owned.delete(k);
  }

  private async shutdown() {
    clearInterval(this.timer);
    // On a cluster whose every node is gone, a command waits in the offline queue with no timeout.
    await Promise.race([this.ticking, sleep(LEASE_MS, { unref: true })]);
    const owned = [...this.owned];
    // The leases are kept while the loops close (their handlers end first), then released.
    const renewing = setInterval(() => {
      for (const [k, o] of owned)
        if (o.state !== 'dropping')
          this.takeLease(leaseKey(this.names[k]!, this.group), this.consumer, LEASE_MS).then(
            (taken) => (o.until = taken === 1 ? performance.now() + LEASE_MS * 0.8 : 0),
            () => {},
          );
    }, LEASE_CHECK_MS);
    await Promise.all(owned.map(([, o]) => o.loop.close()));
    // A handler that outlived closeTimeoutMs keeps its partition's lease from being released: it
    // lapses once the renewals stop, as a dead consumer's would.
    const done = new Set<number>();
    await Promise.race([
      Promise.all(owned.map(([k, o]) => o.loop.handlersDone().then(() => done.add(k)))),
      sleep(this.settings.closeTimeoutMs, { unref: true }),
    ]);
    clearInterval(renewing);
    if (this.redis.status === 'ready') {
      const released = Promise.all([
        ...owned
          .filter(([k, o]) => o.state !== 'dropping' && done.has(k))
          .map(([k]) => this.releaseLease(leaseKey(this.names[k]!, this.group), this.consumer)),
        this.redis.hdel(membersKey(this.stream.name, this.group), this.consumer),
      ]).catch(() => {});
      await Promise.race([released, sleep(500, { unref: true })]);
    }
    this.redis.disconnect();
  }
}
