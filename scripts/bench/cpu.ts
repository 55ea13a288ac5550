/**
 * The CPU time a process has used so far, read from outside it: a Node process from
 * `/proc/<pid>/stat`, a redis-server from `INFO cpu`. For the chain rows (chain.ts), which take
 * the difference of two readings around a window of load.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readlinkSync, realpathSync } from 'node:fs';
import type { Redis } from 'ioredis';

/**
 * utime + stime of `/proc/<pid>/stat`, in clock ticks. Field 2, the command name, is in parentheses
 * and may hold spaces and parentheses of its own: the fields are counted from the last `)`.
 * The figures cover every thread of the process (the JIT, the GC, tsx's loader thread). Throws if
 * the text is not a stat line.
 */
export function ticksOfStat(stat: string): number {
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // After the name: state is field 3, so utime (14) and stime (15) are the 12th and 13th.
  const [utime, stime] = [Number(fields[11]), Number(fields[12])];
  if (!stat.includes(')') || !Number.isInteger(utime) || !Number.isInteger(stime))
    throw new Error(`not a /proc/<pid>/stat line: ${stat.slice(0, 80)}`);
  return utime + stime;
}

let ticksPerSecond: number | undefined;
/** `getconf CLK_TCK`: the unit of `/proc/<pid>/stat`'s times (100 on Linux as built nearly everywhere). */
function clockTicks(): number {
  return (ticksPerSecond ??= Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()));
}

/** The CPU ms process `pid` has used so far (user and system), at the 10 ms grain of a clock tick. */
export function processCpuMs(pid: number): number {
  return (ticksOfStat(readFileSync(`/proc/${pid}/stat`, 'utf8')) * 1_000) / clockTicks();
}

/**
 * Throws unless `pid` is a Node process itself, running this Node's binary: the CPU of a wrapper
 * (pnpm, a shell, `tsx`'s CLI, which runs the script in a child) would not be the service's.
 */
export function assertNodeProcess(pid: number, what: string): void {
  const exe = readlinkSync(`/proc/${pid}/exe`);
  if (exe !== realpathSync(process.execPath))
    throw new Error(`${what}: pid ${pid} runs ${exe}, not node (${process.execPath})`);
}

/** used_cpu_user + used_cpu_sys of `INFO cpu`, as ms: the redis-server's whole process, µs grain. */
export function cpuMsOfInfo(info: string): number {
  const field = (name: string) => {
    const value = new RegExp(`^${name}:([\\d.]+)\\r?$`, 'm').exec(info)?.[1];
    if (value === undefined) throw new Error(`INFO cpu has no ${name}`);
    return Number(value) * 1_000;
  };
  return field('used_cpu_user') + field('used_cpu_sys');
}

export async function redisCpuMs(redis: Redis): Promise<number> {
  return cpuMsOfInfo(await redis.info('cpu'));
}

/** One process's part of the work of a window. */
export interface CpuShare {
  name: string;
  /** CPU ms per order. */
  perOrder: number;
  /** Its part of the whole, 0 to 1. */
  share: number;
}

/** The CPU ms each process used between two readings, by name; throws if a reading is missing or went back. */
export function cpuSpent(
  before: Readonly<Record<string, number>>,
  after: Readonly<Record<string, number>>,
): Record<string, number> {
  return Object.fromEntries(
    Object.keys(before).map((name) => {
      const spent = (after[name] ?? NaN) - before[name]!;
      if (!(spent >= 0)) throw new Error(`no reading of ${name} after the window, or one that went back`);
      return [name, spent];
    }),
  );
}

/** CPU ms per order of each process and of all of them, from the CPU ms each spent on `orders` orders. */
export function cpuShares(
  spent: Readonly<Record<string, number>>,
  orders: number,
): { perOrder: number; shares: CpuShare[] } {
  if (!(orders > 0)) throw new RangeError(`no orders to share the CPU time among (${orders})`);
  const total = Object.values(spent).reduce((sum, ms) => sum + ms, 0);
  return {
    perOrder: total / orders,
    shares: Object.entries(spent).map(([name, ms]) => ({
      name,
      perOrder: ms / orders,
      share: total > 0 ? ms / total : 0,
    })),
  };
}
