import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { launchBrowser } from '../harness/browser.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { READ_ALL_SCOPE, signToken } from '@msa/stream-kit/service';
import { startBoard, startService, type RunningBoard, type RunningService } from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';
import { consumersOf, services, streams } from '../services.ts';

/*
 * The board as a person meets it: `pnpm board` and the three services as real processes at their
 * shipped settings (the board reads Redis once a second), a real Redis, and Debian's Chromium
 * driven headless by playwright-core. Screenshots go to docs/board/ with UPDATE_SCREENSHOTS=1
 * (the README shows them), elsewhere to a temporary directory.
 */

const TOKEN = 'a-token-for-the-browser-test';
/** The services' AUTH_SECRET, which the board is given too. */
const AUTH_SECRET = 'the-board-test-auth-secret-of-32-characters';
const SHOTS = process.env.UPDATE_SCREENSHOTS
  ? fileURLToPath(new URL('../docs/board/', import.meta.url))
  : mkdtempSync(join(tmpdir(), 'board-shots-'));
const ORDERS = 'order-events';
const PAYMENT_GROUP = 'payment-service-group';

let redisServer: RedisServer;
let admin: Redis;
const running = new Map<string, RunningService>();
let board: RunningBoard;
let browser: Browser;
let page: Page;

beforeAll(async () => {
  mkdirSync(SHOTS, { recursive: true });
  redisServer = await startRedisServer();
  admin = new Redis(redisServer.url);
  // With auth on, as pnpm dev runs them: the board signs its calls to order-service with the secret.
  for (const { name } of services)
    running.set(name, await startService(name, { REDIS_URL: redisServer.url, AUTH_SECRET }));
  board = await startBoard({
    REDIS_URL: redisServer.url,
    AUTH_SECRET,
    BOARD_TOKEN: TOKEN,
    ORDER_SERVICE_URL: running.get('order-service')!.url,
    BOARD_METRICS: [...running.values()].map((service) => `${service.name}=${service.url}/metrics`).join(','),
  });
  browser = await launchBrowser();
  page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  // Chromium logs every 4xx answer as a console error: those the tests ask for are not the page's.
  page.on(
    'console',
    (message) =>
      message.type() === 'error' &&
      !/^Failed to load resource: .* 40[013] /.test(message.text()) &&
      errors.push(message.text()),
  );
  pageErrors = errors;
  await page.goto(`${board.url}/`);
}, 240_000);

let pageErrors: string[] = [];

afterEach(() => {
  onTestFailed(() => {
    console.error(`--- board output ---\n${board?.output()}`);
    console.error(`--- page errors ---\n${pageErrors.join('\n')}`);
  });
});

afterAll(async () => {
  await browser?.close();
  await board?.stop();
  for (const service of running.values()) await service.stop();
  await admin?.quit();
  await redisServer?.stop();
});

/** The text of a cell of the Consumer groups table. */
const groupCell = (stream: string, group: string, field: string) =>
  page
    .getByRole('table', { name: 'Consumer groups' })
    .locator(`tr[data-stream="${stream}"][data-group="${group}"] [data-field="${field}"]`);

async function placeOrder(userId: string): Promise<string> {
  const res = await fetch(`${running.get('order-service')!.url}/orders`, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      authorization: `Bearer ${await signToken(AUTH_SECRET, { userId })}`,
    },
    body: JSON.stringify({ userId, productId: 'p-board', price: 12.5 }),
  });
  expect(res.status).toBe(202);
  return ((await res.json()) as { orderId: string }).orderId;
}

describe('the board in a browser', () => {
  it('lists every stream and every consumer group of the system', async () => {
    for (const stream of streams)
      for (const { group } of consumersOf(stream.name))
        await groupCell(stream.name, group, 'lag').waitFor({ timeout: 15_000 });

    const rows = page.getByRole('table', { name: 'Consumer groups' }).locator('tr[data-group]');
    expect(await rows.count()).toBe(
      streams.reduce((sum, stream) => sum + consumersOf(stream.name).length, 0),
    );
    expect(pageErrors).toEqual([]);
  });

  it("shows payment-service's lag rising while it is stopped, and falling once it is back", async () => {
    await running.get('payment-service')!.stop();
    for (let i = 0; i < 5; i += 1) await placeOrder(`lag-${i}`);

    await waitFor(async () => Number(await groupCell(ORDERS, PAYMENT_GROUP, 'lag').textContent()) >= 5, {
      timeoutMs: 15_000,
      what: 'a lag of 5 on the page',
    });
    await page.screenshot({ path: join(SHOTS, 'lag.png'), fullPage: true });
    // Where it was, so that the board scrapes its /metrics again.
    const { port } = new URL(running.get('payment-service')!.url);
    running.set(
      'payment-service',
      await startService('payment-service', { REDIS_URL: redisServer.url, PORT: port, AUTH_SECRET }),
    );

    await waitFor(async () => (await groupCell(ORDERS, PAYMENT_GROUP, 'lag').textContent())?.trim() === '0', {
      timeoutMs: 30_000,
      what: 'the lag back to 0 on the page',
    });
  });

  it('finds a poison entry under dead letters, discards one of its dead letters, and replays a fixed one into a paid order', async () => {
    await page.getByLabel('Board token').fill(TOKEN);
    const poisonId = await admin.xadd(ORDERS, '*', 'userId', 'u-poison', 'productId', 'p', 'price', 'free');
    // A dead letter whose cause is fixed now: a valid order that a group gave up on.
    const orderId = randomUUID();
    // prettier-ignore
    await admin.xadd(`${ORDERS}:dlq`, '*',
      'type', 'order-created', 'orderId', orderId, 'userId', 'u-fixed', 'productId', 'p', 'price', '30',
      'dlq:id', '1-1', 'dlq:stream', ORDERS, 'dlq:group', 'order-service-group', 'dlq:consumer', 'gone',
      'dlq:deliveries', '1', 'dlq:reason', 'non-retryable: the read model was down');
    await waitFor(async () => (await admin.xlen(`${ORDERS}:dlq`)) === consumersOf(ORDERS).length + 1, {
      timeoutMs: 15_000,
      what: 'a dead letter of the poison entry from each group',
    });
    const section = page.getByRole('region', { name: 'Dead letters' });
    const rows = page.getByRole('table', { name: 'Dead letters' }).locator('tr[data-id]');

    await page.getByLabel('Stream', { exact: true }).selectOption(ORDERS);
    await page.getByLabel('Reason').fill('PRICE');
    await section.getByRole('button', { name: 'Search', exact: true }).click();
    await waitFor(async () => (await rows.count()) === consumersOf(ORDERS).length, {
      what: 'the poison entry found',
    });
    expect(await rows.first().textContent()).toContain(poisonId);
    // A tick later, the counts above show the dead letters too.
    await new Promise((resolve) => setTimeout(resolve, 1_200));
    await page.screenshot({ path: join(SHOTS, 'dead-letters.png'), fullPage: true });

    const discarded = await rows.first().getAttribute('data-id');
    page.once('dialog', (dialog) => void dialog.accept());
    await page.getByLabel(`Select dead letter ${discarded}`).check();
    await section.getByRole('button', { name: 'Discard selected' }).click();
    await waitFor(async () => (await rows.count()) === consumersOf(ORDERS).length - 1, {
      what: 'one row fewer',
    });
    expect(await section.getByRole('status').textContent()).toMatch(/discarded 1 dead letter/);
    expect(await admin.xrange(`${ORDERS}:dlq`, discarded!, discarded!)).toEqual([]);

    await page.getByLabel('Reason').fill('');
    await page.getByLabel('Search by order id').fill(orderId);
    await section.getByRole('button', { name: 'Search', exact: true }).click();
    await waitFor(async () => (await rows.count()) === 1, {
      what: 'the fixed dead letter found by order id',
    });
    const replayed = await rows.first().getAttribute('data-id');
    await page.getByLabel(`Select dead letter ${replayed}`).check();
    await section.getByRole('button', { name: 'Replay selected' }).click();
    await waitFor(
      async () => /replayed 1 dead letter/.test((await section.getByRole('status').textContent()) ?? ''),
      {
        what: 'the replay reported',
      },
    );
    expect(await admin.xrange(`${ORDERS}:dlq`, replayed!, replayed!)).toEqual([]);

    await page.getByLabel('Order id', { exact: true }).fill(orderId);
    await page.getByRole('button', { name: 'Show timeline' }).click();
    await waitFor(
      async () => (await page.locator('output[aria-label="Order status"]').textContent())?.trim() === 'PAID',
      {
        timeoutMs: 20_000,
        what: 'the replayed order paid on the page',
      },
    );
  });

  it('places an order with the form, and shows it in its timeline as paid, step by step', async () => {
    await page.getByLabel('Board token').fill(TOKEN);
    const form = page.getByRole('region', { name: 'Place an order' });
    await page.getByLabel('User id').fill('u-form');
    await page.getByLabel('Product id').fill('p-form');
    await page.getByLabel('Price').fill('19.90');
    await form.getByRole('button', { name: 'Place order' }).click();

    const placed = await waitFor(
      async () => /placed order (\S+)/.exec((await form.getByRole('status').textContent()) ?? '')?.[1],
      {
        what: 'the order placed',
      },
    );
    await waitFor(
      async () => (await page.locator('output[aria-label="Order status"]').textContent())?.trim() === 'PAID',
      {
        timeoutMs: 20_000,
        what: 'the order paid on the page',
      },
    );
    const timeline = page.getByRole('region', { name: 'Order', exact: true });
    expect(await timeline.textContent()).toContain('payment-completed');
    // Each entry of its life, and every group of its stream done with it.
    const groupsOfBoth = consumersOf(ORDERS).length + consumersOf('payment-events').length;
    await waitFor(
      async () => {
        const states = await timeline
          .locator('[data-state]')
          .evaluateAll((badges) => badges.map((b) => b.getAttribute('data-state')));
        return states.length === groupsOfBoth && states.every((state) => state === 'handled');
      },
      { timeoutMs: 10_000, what: 'every group handled on the timeline' },
    );
    await page.screenshot({ path: join(SHOTS, 'timeline.png'), fullPage: true });
    // The overview after all of the above: rates, lag and run times in the charts.
    await page.mouse.wheel(0, -100_000);
    await page.screenshot({ path: join(SHOTS, 'overview.png') });
    const support = await signToken(AUTH_SECRET, { userId: 'test', scopes: [READ_ALL_SCOPE] });
    const order = (await (
      await fetch(`${running.get('order-service')!.url}/orders/${placed}`, {
        headers: { authorization: `Bearer ${support}` },
      })
    ).json()) as {
      status: string;
    };
    expect(order.status).toBe('PAID');
  });

  it('refuses a write with a wrong token, and says so on the page', async () => {
    await page.getByLabel('Board token').fill('not-the-token');
    const form = page.getByRole('region', { name: 'Place an order' });
    await page.getByLabel('User id').fill('u-wrong');
    await form.getByRole('button', { name: 'Place order' }).click();

    await waitFor(async () => /token/i.test((await form.getByRole('status').textContent()) ?? ''), {
      what: 'the refusal shown',
    });
    expect(pageErrors).toEqual([]);
  });

  it('answers only requests made to localhost, where it listens (no DNS rebinding)', async () => {
    const status = (host: string) =>
      new Promise<number>((resolve, reject) =>
        request(`${board.url}/api/overview`, { headers: { host } }, (res) => {
          res.resume();
          resolve(res.statusCode!);
        })
          .on('error', reject)
          .end(),
      );

    expect(await status('evil.example:8090')).toBe(421);
    expect(await status(new URL(board.url).host)).toBe(200);
    expect(await status(`localhost:${new URL(board.url).port}`)).toBe(200);
  });

  it('saved its screenshots as PNG files', () => {
    for (const name of ['overview', 'lag', 'dead-letters', 'timeline'])
      expect(
        readFileSync(join(SHOTS, `${name}.png`))
          .subarray(1, 4)
          .toString(),
      ).toBe('PNG');
  });
});
