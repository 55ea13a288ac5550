/**
 * Latency rows (section 4 of the issue): one hop through stream-kit beside a hand-written ioredis
 * loop (hop.ts), then the three services as real processes, end to end, at a fixed offered rate,
 * and the highest rate they sustain (services-load.ts). Every load is an open loop: sends go out
 * on a schedule, whatever became of the earlier ones, as independent clients would send them.
 */
import { availableParallelism } from 'node:os';
import { Redis } from 'ioredis';
import type { RedisServer } from '../../harness/redis-server.ts';
import { hops, rawPair, streamKitPair } from './hop.ts';
import { judge, Probe, runLoad, settle, startServices, type Services } from './services-load.ts';
import { percentiles, type BenchOptions, type Row } from './support.ts';

const SECTION = '4. latency';
const RAW_HOP = 'ioredis blocking loop: XADD → XREADGROUP BLOCK';

export async function latencyRows(server: RedisServer, { quick }: BenchOptions): Promise<Row[]> {
  const rows: Row[] = [];
  const latencyRow = (name: string, samples: number[], more: Partial<Row>) => {
    const figures = percentiles(samples);
    rows.push({ section: SECTION, name, value: figures.p99, unit: 'ms', percentiles: figures, ...more });
  };

  // A: one hop, both at the same rate for the same time.
  const hopLoad = { rate: 1_000, seconds: quick ? 3 : 10, rounds: quick ? 6 : 20, warmUp: 0.5 };
  const [raw, streamKit] = await hops(
    [(seen) => rawPair(server.url, seen), (seen) => streamKitPair(server.url, seen)],
    hopLoad,
  );
  const turn = hopLoad.seconds / hopLoad.rounds;
  const offered = `${hopLoad.rate.toLocaleString('en')}/s for ${hopLoad.seconds} s, open loop`;
  const hopNote = `${offered}, in turns of ${turn} s with the other row`;
  latencyRow(RAW_HOP, raw!, { note: hopNote });
  latencyRow('stream-kit publish → subscribe handler', streamKit!, {
    note: `${hopNote}; subscribe() defaults (count 10)`,
    vs: [{ baseline: RAW_HOP, target: 1.5 }],
  });

  // B and C: the services, started once for both.
  const admin = new Redis(server.url);
  let probe: Probe | undefined;
  let services: Services | undefined;
  try {
    probe = await Probe.open(admin, server.url);
    services = await startServices(server.url);

    const rate = 200;
    const seconds = quick ? 3 : 15;
    const b = await runLoad(admin, probe, services, { tag: 'fixed', rate, seconds, drainMs: 10_000 });
    if (!b.drained) throw new Error(`latency: orders lost at ${rate}/s: ${b.missing.join(', ')}`);
    // The first half second opens connections and warms the services' JIT.
    const skip = rate / 2;
    const note = `${rate}/s offered over HTTP for ${seconds} s (the first 0.5 s not counted), open loop; three services as processes`;
    latencyRow('services: order → 202 accepted', b.accepted.slice(skip), { note });
    latencyRow('services: order → payment published', b.paid.slice(skip), { note });
    latencyRow('services: order → SMS recorded (whole chain)', b.sms.slice(skip), { note });

    // C: the rate ladder, up to the first step that does not hold.
    const ladder = quick
      ? [1_000, 2_000, 4_000]
      : [250, 500, 1_000, 1_500, 2_000, 3_000, 4_000, 6_000, 8_000];
    const stepSeconds = quick ? 2 : 8;
    const drainMs = quick ? 1_000 : 2_000;
    let sustained = 0;
    let held = '';
    let failure = `every step held, up to ${ladder.at(-1)}/s (the highest tried)`;
    const heldOnSecondRun: number[] = [];
    for (const step of ladder) {
      let why: string | undefined;
      let sms: number[] = [];
      let runs = 0;
      // A step that fails runs once more (full run only) if the services catch up quickly: on a
      // shared machine a neighbour's burst can spoil one step, and leaves no lasting backlog.
      for (let attempt = 1; attempt <= (quick ? 1 : 2); attempt += 1) {
        const result = await runLoad(admin, probe, services, {
          tag: `rate-${step}-${attempt}`,
          rate: step,
          seconds: stepSeconds,
          drainMs,
        });
        why = judge(result, step, drainMs);
        sms = result.sms;
        runs = attempt;
        if (!why || quick || !(await settle(result.load, services, 3_000))) break;
      }
      if (why) {
        failure = `${step}/s failed${runs > 1 ? ' twice' : ''}: ${why}`;
        break;
      }
      if (runs > 1) heldOnSecondRun.push(step);
      sustained = step;
      held = `order → SMS p50 ${percentiles(sms).p50.toFixed(1)} ms at ${step}/s`;
    }
    rows.push({
      section: SECTION,
      name: 'services: highest sustained rate (order → SMS)',
      value: sustained,
      unit: 'per second',
      note:
        `steps of ${stepSeconds} s (${ladder.join(', ')}/s); ${held ? `${held}; ` : ''}${failure}; ` +
        (heldOnSecondRun.length ? `held only on a second run: ${heldOnSecondRun.join(', ')}/s; ` : '') +
        `the load generator runs in this process, on the same ${availableParallelism()} cores as the three services and Redis`,
    });
    return rows;
  } finally {
    await services?.stop();
    probe?.close();
    admin.disconnect();
  }
}
