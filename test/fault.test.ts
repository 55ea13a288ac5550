import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { startRedisServer } from '../harness/redis-server.ts';
import { formatReport, problemsOf, summary, type FaultReport } from '../scripts/fault/report.ts';
import { runFault } from '../scripts/fault/run.ts';
import { TakeoverWatch, takeoversOf, type HeldEntry } from '../scripts/fault/takeover.ts';

/*
 * The fault test, in a size that fits CI, at the services' shipped CLAIM_IDLE_MS (60 s): what
 * users run. `pnpm fault --orders 20000` runs a bigger one, `--claim-idle-ms 1000` a quicker one.
 * First the report's arithmetic, on made-up runs.
 */

/** A run that went right, with `takeovers` and the sends as given. */
function reportWith(overrides: Partial<FaultReport>): FaultReport {
  const none = { kills: 0, ms: [], clearMs: [], unhandled: 0 };
  return {
    seed: 1,
    claimIdleMs: undefined,
    ordersAccepted: 10,
    retriedRequests: 0,
    kills: 2,
    terms: 1,
    pauses: 1,
    takeovers: { fixed: none, perStart: none },
    redisRestarts: 1,
    redisTrouble: false,
    oomWindows: 0,
    stalls: 0,
    outages: 1,
    paymentTimeoutMs: 30_000,
    finalAfterMs: 12_000,
    trouble: [],
    troubleFailures: [],
    payments: { 1: 10 },
    mails: { 1: 10 },
    sms: { 1: 10 },
    states: { PAID: 10 },
    mismatches: [],
    lost: 0,
    strays: 0,
    sends: { 1: 20 },
    notificationKills: 0,
    notificationPauses: 0,
    sendsInFlightPerKill: 32,
    badStops: [],
    pending: {},
    deadLetters: {},
    deadLetterReasons: [],
    durationMs: 1_000,
    ...overrides,
  };
}

const perStart = (clearMs: number[]) => ({ kills: 1, ms: clearMs, clearMs, unhandled: 0 });

describe('summary', () => {
  it('gives nothing for no values', () => {
    expect(summary([])).toBeUndefined();
  });

  it('gives percentiles by nearest rank, whatever the order of the values', () => {
    const values = Array.from({ length: 200 }, (_, i) => 200 - i);

    expect(summary(values)).toEqual({ count: 200, p50: 100, p99: 198, max: 200 });
  });

  it('gives the one value of a single one as every percentile', () => {
    expect(summary([7])).toEqual({ count: 1, p50: 7, p99: 7, max: 7 });
  });
});

describe('TakeoverWatch', () => {
  it("watches the killed consumer's pending entries, and only its own, until each is acked", async () => {
    const server = await startRedisServer();
    const redis = new Redis(server.url);
    const watch = new TakeoverWatch(redis, 20);
    try {
      const [stream, group] = [`test-${randomUUID()}`, 'g'];
      await redis.xgroup('CREATE', stream, group, '0', 'MKSTREAM');
      const ids = [];
      for (let n = 0; n < 3; n += 1) ids.push((await redis.xadd(stream, '*', 'n', String(n)))!);
      await redis.xreadgroup('GROUP', group, 'dead', 'COUNT', 2, 'STREAMS', stream, '>');
      await redis.xreadgroup('GROUP', group, 'alive', 'COUNT', 1, 'STREAMS', stream, '>');
      const killedAt = Date.now();

      const held = await watch.killed('payment-service', 'dead', 'perStart', [[stream, group]], killedAt);
      watch.start();
      await redis.xack(stream, group, ids[0]!);
      await new Promise((resolve) => setTimeout(resolve, 200));
      const entries = await watch.stop();

      expect(held).toBe(2);
      expect(entries.map((entry) => [entry.id, entry.handledAt !== undefined])).toEqual([
        [ids[0], true],
        [ids[1], false],
      ]);
      expect(entries[0]!.handledAt! - killedAt).toBeLessThan(200);
    } finally {
      redis.disconnect();
      await server.stop();
    }
  });
});

describe('takeoversOf', () => {
  const entry = (
    killedAt: number,
    handledAt: number | undefined,
    naming: HeldEntry['naming'],
    service = 'payment-service',
  ) => ({
    service,
    stream: 's',
    group: 'g',
    id: '1-0',
    naming,
    killedAt,
    ...(handledAt === undefined ? {} : { handledAt }),
  });

  it('times each entry from its kill, apart by naming, and leaves out of the clear times those that waited through trouble', () => {
    const entries = [
      entry(1_000, 1_500, 'perStart'),
      entry(1_000, 3_000, 'perStart'), // waited through the trouble at 2-2.5 s
      entry(2_600, 2_700, 'perStart'),
      entry(1_000, undefined, 'perStart'),
      entry(4_000, 4_200, 'fixed'),
    ];

    const takeovers = takeoversOf(entries, { fixed: 1, perStart: 3 }, [[2_000, 2_500]]);

    expect(takeovers.perStart).toEqual({
      kills: 3,
      ms: [500, 2_000, 100],
      clearMs: [500, 100],
      unhandled: 1,
    });
    expect(takeovers.fixed).toEqual({ kills: 1, ms: [200], clearMs: [200], unhandled: 0 });
  });

  it('leaves out of the clear times the entries whose service had no instance up to take over all through their wait', () => {
    const entries = [
      entry(1_000, 1_500, 'perStart', 'payment-service'),
      entry(1_000, 1_500, 'perStart', 'notification-service'),
    ];
    const peerUp = (service: string) => service === 'payment-service';

    const takeovers = takeoversOf(entries, { fixed: 0, perStart: 2 }, [], peerUp);

    expect(takeovers.perStart.ms).toEqual([500, 500]);
    expect(takeovers.perStart.clearMs).toEqual([500]);
  });
});

describe('problemsOf', () => {
  describe('on where the orders ended', () => {
    it('accepts orders cancelled after their payment timed out, each charge refunded', () => {
      const report = reportWith({
        states: { PAID: 8, 'CANCELLED payment-timeout': 2 },
        payments: { 0: 1, 1: 9 },
      });

      expect(problemsOf(report)).toEqual([]);
    });

    it('names orders not settled, orders charged twice, and orders whose effects do not match', () => {
      const report = reportWith({
        states: { PAID: 8, PENDING: 1, missing: 1 },
        payments: { 1: 9, 2: 1 },
        mismatches: ['o-1 CANCELLED payment-timeout: 1 charges, 0 refunds, 0 declines, 2 mails, 1 SMS'],
      });

      expect(problemsOf(report)).toEqual([
        'payments per order: {"1":9,"2":1}',
        'orders not settled: {"PENDING":1,"missing":1}',
        'orders whose effects do not match where they ended: o-1 CANCELLED payment-timeout: 1 charges, 0 refunds, 0 declines, 2 mails, 1 SMS',
      ]);
    });
  });

  describe('on the payment-service outage and how soon the orders ended', () => {
    it('names a run without its outage, and one whose orders were final later than the payment timeout plus 10 s, or never', () => {
      expect(problemsOf(reportWith({ outages: 0 }))).toEqual(['0 payment-service outages, not 1']);
      expect(problemsOf(reportWith({ finalAfterMs: 40_000 }))).toEqual([]);
      expect(problemsOf(reportWith({ finalAfterMs: 40_001 }))).toEqual([
        'orders final 40.0 s after the faults stopped, over PAYMENT_TIMEOUT_MS plus 10 s (40.0 s)',
      ]);
      expect(problemsOf(reportWith({ finalAfterMs: undefined }))).toEqual([
        'orders final never after the faults stopped, over PAYMENT_TIMEOUT_MS plus 10 s (40.0 s)',
      ]);
    });
  });

  describe('without a takeover bound', () => {
    it('says nothing of slow takeovers', () => {
      const report = reportWith({ takeovers: { fixed: perStart([]), perStart: perStart([90_000]) } });

      expect(problemsOf(report)).toEqual([]);
    });
  });

  describe('with a takeover bound', () => {
    it('passes a run whose per-start p99 is within it', () => {
      const times = [...Array.from({ length: 99 }, () => 1_000), 60_000];
      const report = reportWith({ takeovers: { fixed: perStart([]), perStart: perStart(times) } });

      expect(problemsOf(report, { takeoverBoundMs: 5_000 })).toEqual([]);
    });

    it('names a per-start p99 over it', () => {
      const times = [...Array.from({ length: 98 }, () => 1_000), 6_000, 6_000];
      const report = reportWith({ takeovers: { fixed: perStart([]), perStart: perStart(times) } });

      expect(problemsOf(report, { takeoverBoundMs: 5_000 })).toEqual([
        "takeover of a per-start instance's entries: p99 6000 ms, over the bound of 5000 ms",
      ]);
    });

    it('does not hold the fixed-name instances to it', () => {
      const report = reportWith({ takeovers: { fixed: perStart([60_000]), perStart: perStart([1_000]) } });

      expect(problemsOf(report, { takeoverBoundMs: 5_000 })).toEqual([]);
    });

    it('has nothing to say of a run whose per-start takeovers all met Redis trouble', () => {
      const takeovers = { fixed: perStart([]), perStart: { ...perStart([]), ms: [60_000] } };

      expect(problemsOf(reportWith({ takeovers }), { takeoverBoundMs: 5_000 })).toEqual([]);
    });
  });

  describe('when a notification was recorded but never reached the sender', () => {
    const sends = { 0: 3, 1: 17 };

    it('allows one per send in flight at each SIGKILL of a notification instance (lines still waiting for the pipe)', () => {
      expect(problemsOf(reportWith({ sends, notificationKills: 1, sendsInFlightPerKill: 3 }))).toEqual([]);
    });

    it('names them without such a SIGKILL, pauses included', () => {
      expect(problemsOf(reportWith({ sends, notificationPauses: 2, sendsInFlightPerKill: 32 }))).toEqual([
        '3 notifications never seen reaching the sender',
      ]);
    });
  });

  describe('when notifications were sent twice', () => {
    const sends = { 1: 10, 2: 20 };

    it('allows a repeat per send in flight at each pause of a notification instance, as at a SIGKILL', () => {
      const report = reportWith({ sends, notificationPauses: 1, sendsInFlightPerKill: 32 });

      expect(problemsOf(report)).toEqual([]);
    });

    it('allows none without a SIGKILL or a pause of a notification instance', () => {
      expect(problemsOf(reportWith({ sends }))).toEqual([
        '20 repeated sends, more than the 0 SIGKILLs and 0 pauses could cause (0)',
      ]);
    });
  });
});

it('settles every accepted order exactly once, paid or else cancelled with its charge refunded, and every order within the payment timeout plus 10 s of the last fault, while consumers are killed, stopped or paused, every payment-service instance is down longer than the timeout, and Redis runs out of memory, stalls and restarts', async () => {
  const orders = Number(process.env.FAULT_ORDERS ?? 3_000);
  const report = await runFault({ orders });
  console.log(formatReport(report));

  expect(report.claimIdleMs).toBeUndefined();
  expect(report.kills).toBeGreaterThan(0);
  expect(report.terms).toBeGreaterThan(0);
  expect(report.pauses).toBeGreaterThan(0);
  expect(report.redisRestarts).toBe(1);
  expect(report.oomWindows).toBe(1);
  expect(report.stalls).toBe(3);
  expect(report.outages).toBe(1);
  // Orders placed while payment-service was down timed out.
  expect(report.states['CANCELLED payment-timeout']).toBeGreaterThan(0);
  expect(report.ordersAccepted).toBe(orders);
  // Takeover times are printed, not yet bounded: at the 60 s claim time they are a minute or more.
  expect(problemsOf(report)).toEqual([]);
}, 480_000);
