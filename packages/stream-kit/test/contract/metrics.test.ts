import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { freePort } from '../../../../harness/net.ts';
import { parseSamples, sampleValue, type Sample } from '../../../../harness/metrics.ts';
import { waitFor } from '../../../../harness/wait.ts';
import { createPublisher } from '../../src/index.ts';
import { createMetrics, type ServiceMetrics } from '../../src/service.ts';
import { contractSuite, testStream } from './setup.ts';

/*
 * createMetrics (`@msa/stream-kit/service`): what a subscription and a publisher given `metrics`
 * count, what is read from Redis at scrape time (for every group of the streams consumed, its
 * peers' included), and the HTTP timings, as `GET /metrics` would print them.
 */

const suite = contractSuite();
const { start, publishRange, pendingCount, groupCreated } = suite;

const clients: Redis[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.quit().catch(() => client.disconnect())));
});

/** Metrics on a client of this file's server (`cacheMs` 0 unless told: every scrape reads Redis). */
function metricsOnSuite(cacheMs = 0): ServiceMetrics {
  const redis = new Redis(suite.url);
  clients.push(redis);
  return createMetrics({ redis, cacheMs });
}

async function scrape(metrics: ServiceMetrics): Promise<Sample[]> {
  return parseSamples(await metrics.registry.metrics());
}

describe('a subscription given metrics', () => {
  it("counts each run of its handler by outcome, with the run's duration and the entry's latency", async () => {
    const stream = testStream();
    const metrics = metricsOnSuite();
    const failedOnce = new Set<number>();
    start(
      stream,
      (event) => {
        if (event.n === 1 && !failedOnce.has(1)) {
          failedOnce.add(1);
          throw new Error('first run fails');
        }
      },
      { metrics },
    );
    await suite.redis.xadd(stream.name, '*', 'n', 'not-a-number');
    await publishRange(stream, 3);

    const labels = { stream: stream.name, group: 'g' };
    const consumed = (outcome: string) =>
      scrape(metrics).then((samples) =>
        sampleValue(samples, 'messaging_client_consumed_messages_total', { ...labels, outcome }),
      );
    await waitFor(async () => (await consumed('acked')) === 3, { what: 'three entries acked' });
    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'nothing pending' });

    const samples = await scrape(metrics);
    expect(await consumed('retried')).toBe(1);
    expect(await consumed('dead-lettered')).toBe(1);
    const runs = (outcome: string, suffix: string, more: Record<string, string> = {}) =>
      sampleValue(samples, `messaging_process_duration_seconds_${suffix}`, { ...labels, outcome, ...more });
    expect(runs('acked', 'count')).toBe(3);
    expect(runs('acked', 'bucket', { le: '+Inf' })).toBe(3);
    expect(runs('acked', 'sum')).toBeGreaterThan(0);
    expect(runs('retried', 'count')).toBe(1);
    expect(runs('dead-lettered', 'count')).toBe(1);
    // Cumulative buckets: each at least the one below it.
    const buckets = samples
      .filter((s) => s.name === 'messaging_process_duration_seconds_bucket' && s.labels.outcome === 'acked')
      .filter((s) => s.labels.stream === stream.name)
      .map((s) => s.value);
    expect(buckets).toEqual([...buckets].sort((a, b) => a - b));
    // The latency of the entries done with: three acked and one dead-lettered; the retried run is not one.
    expect(sampleValue(samples, 'stream_delivery_latency_seconds_count', labels)).toBe(4);
    expect(sampleValue(samples, 'stream_delivery_latency_seconds_sum', labels)).toBeLessThan(60);
  });

  it('times the latency from the time in the entry ID, so a backlog shows its age', async () => {
    const stream = testStream();
    const metrics = metricsOnSuite();
    const written = Date.now() - 120_000;
    await suite.redis.xadd(stream.name, `${written}-0`, 'n', '1');
    start(stream, () => {}, { metrics });

    const labels = { stream: stream.name, group: 'g' };
    await waitFor(
      async () => sampleValue(await scrape(metrics), 'stream_delivery_latency_seconds_count', labels) === 1,
      { what: 'the old entry handled' },
    );

    const samples = await scrape(metrics);
    expect(sampleValue(samples, 'stream_delivery_latency_seconds_bucket', { ...labels, le: '60' })).toBe(0);
    expect(sampleValue(samples, 'stream_delivery_latency_seconds_bucket', { ...labels, le: '300' })).toBe(1);
    expect(sampleValue(samples, 'stream_delivery_latency_seconds_sum', labels)).toBeGreaterThanOrEqual(120);
  });
});

describe('a publisher given metrics', () => {
  it('counts the events it appended, per stream, and none it refused', async () => {
    const stream = testStream();
    const metrics = metricsOnSuite();
    const publisher = createPublisher({ connection: suite.url, metrics });
    try {
      await publisher.publish(stream, { n: 1 });
      await publisher.publishMany(stream, [{ n: 2 }, { n: 3 }]);
      await expect(publisher.publish(stream, { n: -1 } as never)).rejects.toThrow();
    } finally {
      await publisher.close();
    }

    const samples = await scrape(metrics);
    expect(sampleValue(samples, 'messaging_client_sent_messages_total', { stream: stream.name })).toBe(3);
  });
});

describe('the stream gauges, read from Redis at scrape time', () => {
  it('show the lag, its age and the pending entries of every group of a stream consumed here, those whose consumers are all down included', async () => {
    const stream = testStream();
    const metrics = metricsOnSuite();
    // Five entries written a minute ago; group `down` never read any, a consumer of `holding`
    // read two and died.
    const minuteAgo = Date.now() - 60_000;
    for (let n = 0; n < 5; n += 1) await suite.redis.xadd(stream.name, `${minuteAgo + n}-0`, 'n', String(n));
    await suite.redis.xgroup('CREATE', stream.name, 'down', '0');
    await suite.redis.xgroup('CREATE', stream.name, 'holding', '0');
    await suite.redis.xreadgroup('GROUP', 'holding', 'dead', 'COUNT', 2, 'STREAMS', stream.name, '>');
    start(stream, () => {}, { metrics });
    const acked = { stream: stream.name, group: 'g', outcome: 'acked' };
    await waitFor(
      async () => sampleValue(await scrape(metrics), 'messaging_client_consumed_messages_total', acked) === 5,
      { what: 'our own group caught up' },
    );
    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'its acks' });

    const samples = await scrape(metrics);
    const of = (name: string, group: string) => sampleValue(samples, name, { stream: stream.name, group });
    expect(sampleValue(samples, 'stream_redis_up')).toBe(1);
    expect(sampleValue(samples, 'stream_length', { stream: stream.name })).toBe(5);
    expect(of('stream_group_lag', 'down')).toBe(5);
    expect(of('stream_group_lag_seconds', 'down')).toBeGreaterThanOrEqual(59);
    expect(of('stream_group_lag_seconds', 'down')).toBeLessThan(120);
    expect(of('stream_group_pending', 'down')).toBe(0);
    expect(of('stream_group_oldest_pending_seconds', 'down')).toBe(0);
    expect(of('stream_group_lag', 'holding')).toBe(3);
    expect(of('stream_group_pending', 'holding')).toBe(2);
    expect(of('stream_group_oldest_pending_seconds', 'holding')).toBeGreaterThanOrEqual(59);
    expect(of('stream_group_lag', 'g')).toBe(0);
    expect(of('stream_group_lag_seconds', 'g')).toBe(0);
    expect(of('stream_group_pending', 'g')).toBe(0);
  });

  it('count the entries of the dead-letter stream', async () => {
    const stream = testStream();
    const metrics = metricsOnSuite();
    start(stream, () => {}, { metrics });
    await suite.redis.xadd(stream.name, '*', 'n', 'bad');
    await suite.redis.xadd(stream.name, '*', 'n', 'worse');

    await waitFor(
      async () => sampleValue(await scrape(metrics), 'stream_dead_letters', { stream: stream.name }) === 2,
      { what: 'two dead letters counted' },
    );
  });

  it('show a stream that does not exist yet as empty, with no groups', async () => {
    const stream = testStream();
    const metrics = metricsOnSuite();
    metrics.consumer({ stream: stream.name, group: 'g', deadLetterStream: `${stream.name}:dlq` });

    const samples = await scrape(metrics);
    expect(sampleValue(samples, 'stream_redis_up')).toBe(1);
    expect(sampleValue(samples, 'stream_length', { stream: stream.name })).toBe(0);
    expect(samples.filter((s) => s.name === 'stream_group_lag' && s.labels.stream === stream.name)).toEqual(
      [],
    );
  });

  it('are left out, and stream_redis_up says 0, while Redis does not answer; the rest is still served', async () => {
    const redis = new Redis(await freePort(), '127.0.0.1', {
      maxRetriesPerRequest: 0,
      enableOfflineQueue: false,
      retryStrategy: () => null,
      lazyConnect: true,
    });
    clients.push(redis);
    const metrics = createMetrics({ redis, cacheMs: 0 });
    metrics.consumer({ stream: 'some-stream', group: 'g', deadLetterStream: 'some-stream:dlq' });

    const samples = await scrape(metrics);
    expect(sampleValue(samples, 'stream_redis_up')).toBe(0);
    expect(
      samples.filter((s) => s.name.startsWith('stream_length') || s.name.startsWith('stream_group')),
    ).toEqual([]);
    expect(sampleValue(samples, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);
  });

  it('serve the scrapes within cacheMs from one read of Redis', async () => {
    const stream = testStream();
    const metrics = metricsOnSuite(1_000);
    metrics.consumer({ stream: stream.name, group: 'g', deadLetterStream: `${stream.name}:dlq` });
    await suite.redis.xadd(stream.name, '*', 'n', '1');
    const length = async () => sampleValue(await scrape(metrics), 'stream_length', { stream: stream.name });
    expect(await length()).toBe(1);

    await suite.redis.xadd(stream.name, '*', 'n', '2');

    expect(await length()).toBe(1);
    await waitFor(async () => (await length()) === 2, {
      what: 'a fresh read after cacheMs',
      timeoutMs: 3_000,
    });
  });
});

describe('the http middleware', () => {
  it('times each request by method, route pattern and status, and never by the path a client chose', async () => {
    const metrics = metricsOnSuite();
    const app = express();
    app.use(metrics.http);
    app.get('/orders/:id', (_req, res) => void res.json({}));
    app.get('/metrics', metrics.handler);
    app.use((_req, res) => void res.status(404).json({ error: 'not found' }));
    const server = app.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      await fetch(`${base}/orders/o-1`);
      await fetch(`${base}/orders/o-2`);
      await fetch(`${base}/no/such/path-xyz`);
      await fetch(`${base}/orders/o-3`, { method: 'BREW' as string }).catch(() => undefined);
      const response = await fetch(`${base}/metrics`);
      const text = await response.text();

      expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      const samples = parseSamples(text);
      const count = (labels: Record<string, string>) =>
        sampleValue(samples, 'http_server_request_duration_seconds_count', labels);
      expect(count({ method: 'GET', route: '/orders/:id', status_code: '200' })).toBe(2);
      expect(count({ method: 'GET', route: 'unmatched', status_code: '404' })).toBe(1);
      expect(text).not.toContain('o-1');
      expect(text).not.toContain('path-xyz');
    } finally {
      server.close();
    }
  });
});

describe('the series', () => {
  it('are labelled by stream, group, outcome, route, method, status and bucket only: none per consumer, entry or user', async () => {
    const stream = testStream();
    const metrics = metricsOnSuite();
    start(stream, () => {}, { metrics, consumer: 'consumer-1' });
    await groupCreated(stream);
    await publishRange(stream, 3);
    await waitFor(async () => (await pendingCount(stream)) === 0, { what: 'the entries handled' });

    const samples = await scrape(metrics);
    const allowed = new Set(['stream', 'group', 'outcome', 'route', 'method', 'status_code', 'le']);
    const ours = samples.filter((s) => /^(messaging|stream|http)_/.test(s.name));
    expect(ours.length).toBeGreaterThan(0);
    // Node's default metrics label by GC kind, heap space and version: bounded too, and not ours.
    for (const sample of ours)
      expect(Object.keys(sample.labels).filter((key) => !allowed.has(key))).toEqual([]);
    expect(JSON.stringify(samples)).not.toContain('consumer-1');
  });
});
