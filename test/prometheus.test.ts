import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import { parseSamples, sampleValue } from '../harness/metrics.ts';
import { ensurePrometheus, startPrometheus, type RunningPrometheus } from '../harness/prometheus.ts';
import { startRedisServer, type RedisServer } from '../harness/redis-server.ts';
import { startService, type RunningService } from '../harness/services.ts';
import { waitFor } from '../harness/wait.ts';
import { services } from '../services.ts';

/*
 * The metrics as an operator meets them: the repository's scrape config and alert rules checked by
 * promtool, and a real Prometheus scraping the three services (real processes, shipped settings)
 * while payment-service is stopped and started again.
 */

const dir = fileURLToPath(new URL('../prometheus/', import.meta.url));
const promtool = (...args: string[]) => execFileSync('promtool', args, { cwd: dir, encoding: 'utf8' });

beforeAll(() => ensurePrometheus(), 300_000);

describe('prometheus/ (the scrape config and alert rules docker-compose.yml runs)', () => {
  it('passes promtool check config, rule files included', () => {
    expect(promtool('check', 'config', 'prometheus.yml')).toMatch(/SUCCESS: prometheus\.yml is valid/);
  });

  it('fires each alert as its unit tests say (promtool test rules), and there is a test for every alert', () => {
    expect(promtool('test', 'rules', 'alerts.test.yml')).toContain('SUCCESS');
    const alerts = [...readFileSync(`${dir}alerts.yml`, 'utf8').matchAll(/- alert: (\w+)/g)].map((m) => m[1]);
    const tested = new Set(
      [...readFileSync(`${dir}alerts.test.yml`, 'utf8').matchAll(/alertname: (\w+)/g)].map((m) => m[1]),
    );
    expect(alerts.filter((alert) => !tested.has(alert))).toEqual([]);
  });
});

describe('a real Prometheus scraping the three services', () => {
  let redisServer: RedisServer;
  const running = new Map<string, RunningService>();
  let prometheus: RunningPrometheus | undefined;

  beforeAll(async () => {
    redisServer = await startRedisServer();
    for (const { name } of services)
      running.set(name, await startService(name, { REDIS_URL: redisServer.url }));
    // The repository's rules, and its jobs pointed at where the services run here, every second.
    const jobs = [...running.values()]
      .map(
        (service) =>
          `  - job_name: ${service.name}\n    static_configs:\n      - targets: ['${new URL(service.url).host}']`,
      )
      .join('\n');
    prometheus = await startPrometheus(
      `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\nscrape_configs:\n${jobs}\n`,
      { 'alerts.yml': readFileSync(`${dir}alerts.yml`, 'utf8') },
    );
  }, 120_000);

  afterAll(async () => {
    await prometheus?.stop();
    await Promise.all([...running.values()].map((service) => service.stop()));
    await redisServer?.stop();
  });

  afterEach(() => {
    onTestFailed(() => {
      console.error(`--- prometheus ---\n${prometheus?.output()}`);
      for (const service of running.values()) console.error(`--- ${service.name} ---\n${service.output()}`);
    });
  });

  const service = (name: string) => running.get(name)!;

  async function placeOrders(count: number, userId: string) {
    for (let n = 0; n < count; n += 1) {
      const response = await fetch(`${service('order-service').url}/orders`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ userId, productId: 'p1', price: 1000 }),
      });
      expect(response.status).toBe(202);
    }
  }

  /** The value PromQL answers for `promql` once it satisfies `ok`. */
  const until = (promql: string, ok: (values: number[]) => boolean, what: string) =>
    waitFor(
      async () => {
        const values = (await prometheus!.query(promql)).map((sample) => sample.value);
        return ok(values) && values;
      },
      { timeoutMs: 30_000, intervalMs: 250, what },
    );

  it('scrapes every service', async () => {
    await until('up', (values) => values.length === 3 && values.every((v) => v === 1), 'all three up');
    const scraped = await prometheus!.query('count by (job) (stream_redis_up == 1)');

    expect(scraped.map((sample) => sample.labels.job).sort()).toEqual(services.map((s) => s.name).sort());
  });

  it("shows the lag of payment-service's group while it is down, from its peers, and its drop to zero once it is back", async () => {
    await until('up{job="payment-service"}', (values) => values[0] === 1, 'payment-service up');
    const lag = 'max by (group) (stream_group_lag{stream="order-events",group="payment-service-group"})';
    await until(lag, (values) => values[0] === 0, 'no lag at the start');

    await service('payment-service').stop();
    await placeOrders(5, 'prom-lag');

    // Its own job is down: the figures come from order-service and notification-service.
    await until('up{job="payment-service"}', (values) => values[0] === 0, 'payment-service seen down');
    await until(lag, (values) => values[0] === 5, 'a lag of the five orders');
    const [age] = await until(
      'max(stream_group_lag_seconds{group="payment-service-group"})',
      (values) => values[0]! > 0,
      'the lag in seconds',
    );
    expect(age).toBeLessThan(60);
    // The other groups kept up meanwhile.
    await until(
      'max(stream_group_lag{stream="order-events",group="notification-service-group"})',
      (values) => values[0] === 0,
      "notification-service's group caught up",
    );

    running.set('payment-service', await startService('payment-service', { REDIS_URL: redisServer.url }));

    await until(lag, (values) => values[0] === 0, 'the lag back to zero');
    await until(
      'max(stream_group_pending{stream="order-events",group="payment-service-group"})',
      (values) => values[0] === 0,
      'nothing pending',
    );
    // The new instance listens on another port than the one scraped: read it directly.
    const sent = await waitFor(
      async () => {
        const url = `${service('payment-service').url}/metrics`;
        const scraped = parseSamples(await (await fetch(url)).text());
        const value = sampleValue(scraped, 'messaging_client_sent_messages_total', {
          stream: 'payment-events',
        });
        return value !== undefined && value >= 5 && value;
      },
      { what: 'the five payments counted by the new payment-service' },
    );
    expect(sent).toBe(5);
  }, 180_000);

  it("serves the saga counts and the consumers' counts from order-service", async () => {
    await placeOrders(1, 'prom-saga');

    const samples = await waitFor(
      async () => {
        const scraped = parseSamples(await (await fetch(`${service('order-service').url}/metrics`)).text());
        return (sampleValue(scraped, 'orders_status_entered_total', { status: 'PAID' }) ?? 0) >= 1 && scraped;
      },
      { what: 'a paid order counted' },
    );
    expect(sampleValue(samples, 'orders_status_entered_total', { status: 'PENDING' })).toBeGreaterThanOrEqual(
      1,
    );
    expect(
      sampleValue(samples, 'messaging_client_sent_messages_total', { stream: 'order-events' }),
    ).toBeGreaterThanOrEqual(6);
    expect(
      sampleValue(samples, 'http_server_request_duration_seconds_count', {
        method: 'POST',
        route: '/orders',
        status_code: '202',
      }),
    ).toBeGreaterThanOrEqual(6);
  });
});
