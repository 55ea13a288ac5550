/**
 * Section 8: the board on a big stream. The time to the first draw of the page (navigation start
 * to the consumer groups drawn, on the browser's own clock, in headless Chromium, a fresh context
 * each time) and what one tick costs Redis, with order-events holding 10,000 and then a million
 * entries laid out alike (a group at the start, one in the middle holding a thousand pending, one
 * at the end; a thousand dead letters). The board scans no stream, so neither may grow with it. A
 * bare HTML page from the same server is the browser's own floor on this machine.
 */
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createBoard } from '@msa/stream-kit/board';
import { OrderEvents, streams } from '@msa/stream-kit/events';
import express from 'express';
import { Redis } from 'ioredis';
import type { Browser } from 'playwright-core';
import { launchBrowser } from '../../harness/browser.ts';
import type { RedisServer } from '../../harness/redis-server.ts';
import { consumersOf } from '../../services.ts';
import { fillOrders, median, type BenchOptions, type Row } from './support.ts';

const SECTION = '8. the board on a big stream';
/** The mark board.js sets when it first draws the groups. */
const DRAWN_MARK = 'board:drawn';

/** ms from navigation start to `ready` (in the page), median of `runs` loads in fresh contexts. */
async function firstDraw(
  browser: Browser,
  url: string,
  runs: number,
  ready: 'drawn' | 'dom',
): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i += 1) {
    const context = await browser.newContext({ viewport: { width: 1366, height: 900 } });
    const page = await context.newPage();
    await page.goto(url);
    if (ready === 'drawn')
      await page.waitForFunction((mark) => performance.getEntriesByName(mark).length > 0, DRAWN_MARK);
    times.push(
      await page.evaluate(
        ([mark, which]) =>
          which === 'drawn'
            ? performance.getEntriesByName(mark)[0]!.startTime
            : (
                performance.getEntriesByType('navigation' as never)[0] as unknown as {
                  domContentLoadedEventEnd: number;
                }
              ).domContentLoadedEventEnd,
        [DRAWN_MARK, ready] as const,
      ),
    );
    await context.close();
  }
  return median(times);
}

/**
 * Redis's own time per tick of the board, in ms: every command's time (INFO commandstats) over a
 * few seconds of ticking, divided by the ticks (each sends TIME once).
 */
async function redisTimePerTick(redis: Redis, seconds: number): Promise<number> {
  await redis.config('RESETSTAT');
  await new Promise((resolve) => setTimeout(resolve, seconds * 1_000));
  const stats = await redis.info('commandstats');
  let usec = 0;
  let ticks = 0;
  for (const [, command, calls, total] of stats.matchAll(/^cmdstat_(\S+):calls=(\d+),usec=(\d+)/gm)) {
    // Leave out this function's own INFO and CONFIG.
    if (command === 'info' || command!.startsWith('config')) continue;
    usec += Number(total);
    if (command === 'time') ticks = Number(calls);
  }
  return usec / 1_000 / Math.max(ticks, 1);
}

/** order-events with `entries`, its groups at the start, the middle (1,000 pending) and the end, and 1,000 dead letters. */
async function layOut(redis: Redis, entries: number): Promise<void> {
  await redis.flushall();
  await fillOrders(redis, OrderEvents.name, entries);
  const [start, middle, end] = consumersOf(OrderEvents.name).map(({ group }) => group);
  const info = (await redis.xinfo('STREAM', OrderEvents.name)) as unknown[];
  const firstMs = Number(String((info[info.indexOf('first-entry') + 1] as string[])[0]).split('-')[0]);
  const lastMs = Number(String(info[info.indexOf('last-generated-id') + 1]).split('-')[0]);
  await redis.xgroup('CREATE', OrderEvents.name, start!, '0');
  await redis.xgroup('CREATE', OrderEvents.name, middle!, `${Math.floor((firstMs + lastMs) / 2)}-0`);
  await redis.xreadgroup('GROUP', middle!, 'holder', 'COUNT', 1_000, 'STREAMS', OrderEvents.name, '>');
  await redis.xgroup('CREATE', OrderEvents.name, end!, '$');
  await fillOrders(redis, `${OrderEvents.name}:dlq`, 1_000);
}

export async function boardRows(server: RedisServer, { quick }: BenchOptions): Promise<Row[]> {
  const big = quick ? 100_000 : 1_000_000;
  const bigLabel = quick ? '100k' : '1M';
  const runs = quick ? 3 : 9;
  const tickSeconds = quick ? 3 : 10;
  const redis = new Redis(server.url);
  const board = createBoard({ redis, streams });
  const app = express()
    .get('/bare', (_req, res) => res.type('html').send('<!doctype html><title>bare</title><p>bare</p>'))
    .use(board.router);
  const http = app.listen(0, '127.0.0.1');
  await once(http, 'listening');
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}/`;
  const browser = await launchBrowser();
  // Two ticks after a layout, so that the page finds the state read after it.
  const ticked = () => new Promise((resolve) => setTimeout(resolve, 2_100));
  try {
    const bare = await firstDraw(browser, `${url}bare`, runs, 'dom');
    await layOut(redis, 10_000);
    await ticked();
    const smallDraw = await firstDraw(browser, url, runs, 'drawn');
    const smallTick = await redisTimePerTick(redis, tickSeconds);
    await layOut(redis, big);
    await ticked();
    const bigDraw = await firstDraw(browser, url, runs, 'drawn');
    const bigTick = await redisTimePerTick(redis, tickSeconds);

    const drawn = (label: string) => `first draw, ${label} entries`;
    const tick = (label: string) => `Redis's time per tick, ${label} entries`;
    return [
      {
        section: SECTION,
        name: 'bare page, DOM ready',
        value: bare,
        unit: 'ms',
        note: `a one-line page from the same server: the browser's floor; median of ${runs}`,
      },
      {
        section: SECTION,
        name: drawn('10k'),
        value: smallDraw,
        unit: 'ms',
        vs: [{ baseline: 'bare page, DOM ready' }],
      },
      {
        section: SECTION,
        name: drawn(bigLabel),
        value: bigDraw,
        unit: 'ms',
        vs: [{ baseline: drawn('10k'), target: 1.5 }, { baseline: 'bare page, DOM ready' }],
        note: `navigation start to the groups drawn; median of ${runs}`,
      },
      { section: SECTION, name: tick('10k'), value: smallTick, unit: 'ms' },
      {
        section: SECTION,
        name: tick(bigLabel),
        value: bigTick,
        unit: 'ms',
        vs: [{ baseline: tick('10k'), target: 1.5 }],
        note: 'INFO commandstats: every command the board sends Redis each second',
      },
    ];
  } finally {
    await browser.close();
    await board.close();
    http.close();
    await redis.quit();
  }
}
