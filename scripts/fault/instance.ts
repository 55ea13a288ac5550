import type { ChildProcess } from 'node:child_process';
import { hostname } from 'node:os';
import { consumerEnv, parseEnv } from '@msa/stream-kit/service';
import { LIVENESS_TTL_MS } from '@msa/stream-kit/lua';
import { exitOf, spawnService, type ServiceName } from '../../harness/services.ts';

/** The services' `CLAIM_IDLE_MS`, which the fault run keeps unless told otherwise. */
export const DEFAULT_CLAIM_IDLE_MS = parseEnv(consumerEnv(0), {}).CLAIM_IDLE_MS;

/**
 * How long the fault run pauses an instance (see `Instance.pause`), drawn between the two: longer
 * than a liveness mark of a few seconds, so that others may take its entries over, and far shorter
 * than the default claim time.
 */
export const PAUSE_MS = { min: 2_000, max: 12_000 } as const;

/** A consumer instance that can be killed and started again. */
export class Instance {
  private child: ChildProcess | undefined;
  private tail = '';
  kills = 0;
  /** Graceful stops that did not end with exit code 0 in time, as `exit <code>`. */
  readonly badStops: string[] = [];
  /** Whether it has started listening (and handles signals) since its last start. */
  private up = false;
  /** When it started listening, since its last start. */
  private upAt: number | undefined;
  /** Held with SIGSTOP (see `hold`): a process started meanwhile is stopped too. */
  private held = false;
  /** The pause under way (see `pause`), if any: a mark its own resume checks. */
  private pausedBy: object | undefined;
  /** Pauses so far (see `pause`). */
  pauses = 0;
  /**
   * When it could not take over a peer's entries, as `[from, to]` (epoch ms; `to` Infinity while
   * it lasts): killed or paused, until its consumers have run a liveness mark's life again (a
   * consumer judges others only then, see stream-kit's liveness.ts). What `takeoversOf` needs to
   * tell a slow takeover from one that had nobody to do it.
   */
  readonly unavailable: [from: number, to: number][] = [];

  constructor(
    readonly service: ServiceName,
    /** A fixed consumer name (a restart picks up its own pending entries at once), or none (a new `hostname-pid`). */
    readonly consumerName: string | undefined,
    private readonly env: Record<string, string>,
    /** Called with each JSON log line the instance writes. */
    private readonly onLog: (line: { msg?: string; idempotencyKey?: string }) => void = () => {},
  ) {}

  start() {
    this.up = false;
    this.upAt = undefined;
    this.child = spawnService(this.service, {
      ...this.env,
      PORT: '0',
      ...(this.consumerName ? { CONSUMER_NAME: this.consumerName } : {}),
    });
    if (this.held) this.child.kill('SIGSTOP');
    // Keep the pipes drained (a full pipe would stall the process) and the last lines for failures.
    this.child.stderr!.on(
      'data',
      (chunk: Buffer) => (this.tail = (this.tail + chunk.toString()).slice(-4_000)),
    );
    let partial = '';
    this.child.stdout!.on('data', (chunk: Buffer) => {
      const lines = (partial + chunk.toString()).split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        this.tail = (this.tail + line + '\n').slice(-4_000);
        if (!line.startsWith('{')) continue;
        const entry = JSON.parse(line) as { msg?: string };
        if (entry.msg?.endsWith(' listening')) {
          this.up = true;
          this.upAt = Date.now();
          this.available(this.upAt);
        }
        this.onLog(entry);
      }
    });
  }

  /**
   * The name its current process reads under: `consumerName`, or the services' default
   * (stream-kit's `defaultConsumerName`, `${hostname}-${pid}`); undefined before the first start.
   */
  get consumer(): string | undefined {
    if (this.consumerName !== undefined) return this.consumerName;
    return this.child?.pid === undefined ? undefined : `${hostname()}-${this.child.pid}`;
  }

  /**
   * SIGKILL, or SIGTERM for a graceful stop (which acks what finished and leaves the rest pending).
   * Ends a pause under way; not to be called while held.
   */
  async kill(signal: 'SIGKILL' | 'SIGTERM' = 'SIGKILL') {
    const child = this.child;
    if (!child) return;
    // A process still booting has no signal handlers yet: SIGTERM ends it like SIGKILL does, and
    // says nothing about its graceful stop.
    const graceful = signal === 'SIGTERM' && this.up;
    const paused = this.paused;
    this.pausedBy = undefined;
    this.unavailableFrom(Date.now());
    child.kill(signal);
    // A stopped process only handles its SIGTERM once it runs again (SIGKILL needs no help).
    if (signal === 'SIGTERM' && paused && !this.held) child.kill('SIGCONT');
    if (signal === 'SIGKILL') this.kills += 1;
    // The services give up on their own after 15 s; later than that is a hang.
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const code = await exitOf(child);
    clearTimeout(timer);
    if (graceful && code !== 0) this.badStops.push(`${this.service} exit ${code}`);
  }

  /** Whether it has been listening (its subscriptions started) for `ms` at least. */
  upFor(ms: number): boolean {
    return this.upAt !== undefined && Date.now() - this.upAt >= ms;
  }

  /** Stops the process where it is (SIGSTOP), a stalled consumer: its entries wait, read or not. */
  hold() {
    this.held = true;
    this.child?.kill('SIGSTOP');
  }

  /** Lets a held process go on (SIGCONT), unless it is paused: its pause ends it. */
  release() {
    this.held = false;
    if (!this.paused) this.child?.kill('SIGCONT');
  }

  /** Whether a pause (see `pause`) is under way. */
  get paused(): boolean {
    return this.pausedBy !== undefined;
  }

  /**
   * Stops the process where it is (SIGSTOP), as a stalled host or a long GC pause would, and
   * returns the function that ends the pause: SIGCONT, unless the process was killed since (its
   * successor was never paused) or the instance is held (`release` then lets it go). So a pause
   * and a hold never let each other's process go early. The returned function is safe to call
   * twice.
   */
  pause(): () => void {
    const mark = {};
    this.pausedBy = mark;
    this.pauses += 1;
    this.unavailableFrom(Date.now());
    this.child?.kill('SIGSTOP');
    return () => {
      if (this.pausedBy !== mark) return;
      this.pausedBy = undefined;
      if (!this.held) this.child?.kill('SIGCONT');
      this.available(Date.now());
    };
  }

  /** Whether it could take over a peer's entries all through `[from, to]`. */
  availableThrough(from: number, to: number): boolean {
    return this.unavailable.every(([down, up]) => to < down || from > up);
  }

  private unavailableFrom(at: number) {
    const last = this.unavailable.at(-1);
    if (!last || last[1] !== Infinity) this.unavailable.push([at, Infinity]);
  }

  /** Running again at `at`: able to judge others once its liveness marks have lived a full life. */
  private available(at: number) {
    const last = this.unavailable.at(-1);
    if (last && last[1] === Infinity) last[1] = at + LIVENESS_TTL_MS;
  }

  describe() {
    return `--- ${this.service} (${this.consumerName ?? 'pid name'}) ---\n${this.tail}`;
  }
}
