import type { ConsumerContext } from './context.ts';

/**
 * Sends acks in one multi-ID XACK for the entries whose handlers resolved (never before) since
 * the last one went: as soon as the loop waits for anything (a handler's own I/O), or at the end
 * of a batch. The next handler does not wait for Redis's answer; `flush()` awaits the answers (at
 * the end of a batch or pending page), and the loop's close before it drops the connection. Run
 * counts of acked entries (see runs.ts) are deleted with them.
 */
export class AckBatcher {
  private ids: string[] = [];
  private runKeys: string[] = [];
  private soon: NodeJS.Immediate | undefined;
  /** XACKs sent, not yet answered. */
  private sent: Promise<unknown>[] = [];

  constructor(private readonly ctx: ConsumerContext) {}

  /** Queues the XACK of entry `id`. */
  ack(id: string): void {
    this.ids.push(id);
    this.soon ??= setImmediate(() => this.send());
  }

  /** Queues the deletion of a run count that is no longer needed (its entry is done with). */
  forgetRuns(key: string): void {
    this.runKeys.push(key);
    this.soon ??= setImmediate(() => this.send());
  }

  /** Sends what is queued now, without waiting for the answers. */
  send(): void {
    if (this.soon) clearImmediate(this.soon);
    this.soon = undefined;
    const { redis, stream, group } = this.ctx;
    if (this.ids.length > 0) {
      const ack = redis.xack(stream.name, group, ...this.ids.splice(0));
      ack.catch(() => {}); // awaited in flush() or by the loop's close
      this.sent.push(ack);
    }
    // Best effort: a count left behind expires (RUNS_TTL_MS).
    if (this.runKeys.length > 0) redis.del(...this.runKeys.splice(0)).catch(() => {});
  }

  /** Sends what is queued and waits for every answer; throws if an XACK failed (its entries stay pending, and come back). */
  async flush(): Promise<void> {
    this.send();
    const sent = this.sent;
    this.sent = [];
    await Promise.all(sent);
  }

  /** Sends what is queued; resolves once every XACK sent has an answer, failed or not. */
  settle(): Promise<unknown> {
    this.send();
    return Promise.allSettled(this.sent);
  }
}
