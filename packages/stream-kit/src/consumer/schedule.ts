/*
 * What the loop does next: a pure function of its state, so that the order of its work is plain
 * to read and tested without Redis.
 */

/** The part of the loop's state that decides its next step. */
export interface LoopState {
  /** A batch was read ahead and waits to be handled. */
  readonly readAhead: boolean;
  /**
   * A pass through this consumer's own pending list is called for: `'all'` handles every entry
   * in it (at start, after an error), `'due'` those whose retry time has come.
   */
  readonly ownPending: 'all' | 'due' | undefined;
  /** When the first failed entry is due again; 0 when none waits. */
  readonly retryAt: number;
  /** When the next reclaim pass is due. */
  readonly claimAt: number;
  /** When the group is next checked for dead consumers (see liveness.ts). */
  readonly livenessAt: number;
  /**
   * New entries wait: the subscription keeps its entries in order (a partition's) and a failed
   * entry waits for its retry, which must come before anything written after it.
   */
  readonly holdNew?: boolean;
}

export type Step =
  /** Handle the batch read ahead: its entries are ours already, and come before anything else. */
  | { readonly kind: 'read-ahead' }
  /** Go through our own pending list; `retryTime`: because a retry time came (it is used up). */
  | { readonly kind: 'own-pending'; readonly mode: 'all' | 'due'; readonly retryTime: boolean }
  /** Take over what dead consumers hold (their liveness marks lapsed). */
  | { readonly kind: 'take-from-dead' }
  /** Take over what other consumers left idle, and tidy the group. */
  | { readonly kind: 'reclaim' }
  /** Read new entries, waiting up to `blockMs` for the first. */
  | { readonly kind: 'read'; readonly blockMs: number }
  /** Wait `ms` and read nothing (new entries are held back: see `LoopState.holdNew`). */
  | { readonly kind: 'pause'; readonly ms: number };

const READ_AHEAD: Step = { kind: 'read-ahead' };
const RECLAIM: Step = { kind: 'reclaim' };
const TAKE_FROM_DEAD: Step = { kind: 'take-from-dead' };

/**
 * One round: a batch read ahead; else this consumer's own pending entries when a pass is called
 * for or a retry is due; else the check for dead consumers when due; else a reclaim pass when
 * due; else new entries, blocking no longer than `maxBlockMs` and waking in time for the next
 * retry, check and reclaim (or, while new entries are held back, a pause as long).
 */
export function nextStep(state: LoopState, now: number, maxBlockMs: number): Step {
  if (state.readAhead) return READ_AHEAD;
  if (state.ownPending !== undefined)
    return { kind: 'own-pending', mode: state.ownPending, retryTime: false };
  if (state.retryAt !== 0 && now >= state.retryAt)
    return { kind: 'own-pending', mode: 'due', retryTime: true };
  if (now >= state.livenessAt) return TAKE_FROM_DEAD;
  if (now >= state.claimAt) return RECLAIM;
  const wakeAt = Math.min(state.claimAt, state.livenessAt, state.retryAt || Infinity);
  const ms = Math.max(1, Math.min(maxBlockMs, wakeAt - now));
  return state.holdNew ? { kind: 'pause', ms } : { kind: 'read', blockMs: ms };
}

/**
 * Whether to ask for the next batch (without BLOCK) while this one is handled: only after a full
 * batch (more are likely waiting), and not when a pending pass or a reclaim is due, which would
 * wait behind it.
 */
export function readsAhead(state: LoopState, now: number, batchSize: number, count: number): boolean {
  if (batchSize !== count || state.holdNew) return false;
  const due =
    state.ownPending !== undefined ||
    now >= state.claimAt ||
    now >= state.livenessAt ||
    (state.retryAt !== 0 && now >= state.retryAt);
  return !due;
}

/**
 * How often a reclaim pass runs: every `claimIdleMs / 2`, so an entry idle too long waits at most
 * half as long again; at least every 30 s, at most every 50 ms.
 */
export function reclaimIntervalMs(claimIdleMs: number): number {
  return Math.min(Math.max(claimIdleMs / 2, 50), 30_000);
}
