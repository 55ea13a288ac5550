// @ts-check
/* global document, window, performance, sessionStorage, fetch, EventSource, ResizeObserver, URLSearchParams, HTMLElement, HTMLInputElement, HTMLSelectElement, HTMLButtonElement */
/*
 * The stream board's page: the flow of streams, groups and consumers, their figures, charts of the
 * last 15 minutes, a dead-letter search with replay and discard, and one entity's timeline. It
 * reads the API of ../api.ts at URLs relative to the page (the router can be mounted anywhere),
 * and never writes server data as markup: entry fields are whatever producers put in them.
 */

/** @typedef {import('../api.ts').Overview} Overview */
/** @typedef {import('../api.ts').StreamView} StreamView */
/** @typedef {import('../api.ts').GroupView} GroupView */
/** @typedef {import('../api.ts').ConsumerView} ConsumerView */
/** @typedef {import('../api.ts').Sample} Sample */
/** @typedef {import('../api.ts').DeadLetterView} DeadLetterView */
/** @typedef {import('../api.ts').DeadLetterPage} DeadLetterPage */
/** @typedef {import('../api.ts').Timeline} Timeline */
/** @typedef {import('../api.ts').TimelineEntry} TimelineEntry */
/** @typedef {import('uplot')} UPlot */
/**
 * What replay and discard answer; `more` (the "all matching" limit stopped it) comes besides.
 * @typedef {{ replayed?: { id: string, entryId?: string }[], dropped?: { id: string, dropped: boolean }[], more?: boolean }} ActionResult
 */
/**
 * A dead-letter search as the form gave it; `from` and `to` are ISO times or ''.
 * @typedef {{ stream: string, entity: string, reason: string, from: string, to: string }} Search
 */

/**
 * uPlot, once its classic script has run: loaded after the groups are first drawn, so that the
 * numbers do not wait for the chart library (the charts draw when it arrives).
 * @type {typeof import('uplot') | undefined}
 */
let uPlot;

function loadCharts() {
  const script = document.createElement('script');
  script.src = 'assets/uPlot.iife.min.js';
  script.addEventListener('load', () => {
    uPlot = /** @type {any} */ (globalThis).uPlot;
    renderCharts();
  });
  document.head.append(script);
}

const HISTORY_MS = 15 * 60_000;
const IDLE_MS = 60_000;
const TIMELINE_REFRESH_MS = 2_000;
const RECONNECT_MS = 5_000;
const TOKEN_KEY = 'board-token';

// ---- DOM ----------------------------------------------------------------------------------------

/**
 * @template {HTMLElement} T
 * @param {string} id
 * @param {{ new (): T, prototype: T }} type
 * @returns {T}
 */
function byId(id, type) {
  const found = document.getElementById(id);
  if (!(found instanceof type)) throw new Error(`the page has no ${type.name} #${id}`);
  return found;
}
const $ = (/** @type {string} */ id) => byId(id, HTMLElement);
const $input = (/** @type {string} */ id) => byId(id, HTMLInputElement);
const $button = (/** @type {string} */ id) => byId(id, HTMLButtonElement);

/** @typedef {Record<string, string | number | boolean | undefined>} Attrs */
/** @typedef {Node | string | number | null | undefined | false} Child */

/**
 * Sets attributes and appends children; strings become text nodes, never markup.
 * @template {Element} E
 * @param {E} node
 * @param {Attrs} attrs
 * @param {Child[]} children
 */
function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs))
    if (value !== undefined && value !== false) node.setAttribute(name, value === true ? '' : String(value));
  for (const child of children)
    if (child !== null && child !== undefined && child !== false)
      node.append(typeof child === 'number' ? String(child) : child);
  return node;
}

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attrs} [attrs]
 * @param {Child[]} children
 */
const h = (tag, attrs = {}, ...children) => fill(document.createElement(tag), attrs, children);

/**
 * @param {string} tag
 * @param {Attrs} [attrs]
 * @param {Child[]} children
 */
const svg = (tag, attrs = {}, ...children) =>
  fill(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, children);

/** A table cell; `field` names it for scripts and tests (`data-field`). */
const td = (/** @type {Child} */ content, /** @type {string} */ className = '', field = '') =>
  h('td', { class: className || undefined, 'data-field': field || undefined }, content);

const emptyRow = (/** @type {number} */ columns, /** @type {string} */ text) =>
  h('tr', { class: 'empty' }, h('td', { colspan: columns }, text));

/** Writes text only when it changed: a live region announces every write. */
function setText(/** @type {Element} */ node, /** @type {string} */ text) {
  if (node.textContent !== text) node.textContent = text;
}

/** Writes a status message even when unchanged, so that it is announced again. */
function announce(/** @type {string} */ id, /** @type {string} */ text) {
  $(id).textContent = text;
}

// ---- Formatting ---------------------------------------------------------------------------------

// No digit grouping: figures stay plain numbers, to copy or compare.
const decimal = new Intl.NumberFormat('en', { maximumFractionDigits: 1, useGrouping: false });
const num = (/** @type {number} */ n) => decimal.format(n);
const rate = (/** @type {number | undefined} */ n) => `${n === undefined ? '?' : num(n)}/s`;
const plural = (/** @type {number} */ n, /** @type {string} */ word) => `${n} ${word}${n === 1 ? '' : 's'}`;
const pad = (/** @type {number} */ n) => String(n).padStart(2, '0');
const idleText = (/** @type {ConsumerView} */ consumer) => `idle ${Math.round(consumer.idleMs / 1000)} s`;
const entityName = () => overview?.features.entity || 'order';
const valueText = (/** @type {unknown} */ value) =>
  typeof value === 'string' ? value : value === undefined ? '' : JSON.stringify(value);

/** Local time as `2026-11-27 06:00:05`: the same in every locale, and it sorts as text. */
function timeText(/** @type {number} */ ms) {
  const d = new Date(ms);
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${date} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Amber once the oldest undelivered entry has waited over 10 s, red over a minute. */
const lagLevel = (/** @type {number} */ lagSeconds) =>
  lagSeconds > 60 ? 'lag-red' : lagSeconds > 10 ? 'lag-amber' : '';

// ---- API ----------------------------------------------------------------------------------------

class ApiError extends Error {
  /** @param {number} status 0 when no answer came. @param {string} message @param {string} [field] */
  constructor(status, message, field) {
    super(message);
    this.status = status;
    this.field = field;
  }
}

/**
 * The JSON answer at `path`, or an ApiError carrying the answer's `{ error, field }`.
 * @param {string} path
 * @param {RequestInit} [init]
 * @returns {Promise<any>}
 */
async function request(path, init) {
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'the board cannot be reached');
  }
  const body = await res.json().catch(() => undefined);
  if (!res.ok)
    throw new ApiError(res.status, body?.error ?? (res.statusText || 'request failed'), body?.field);
  return body;
}

const get = (/** @type {string} */ path) => request(path, { headers: { Accept: 'application/json' } });

/** POSTs JSON with the board token, which every write needs. */
function post(/** @type {string} */ path, /** @type {unknown} */ body) {
  /** @type {Record<string, string>} */
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  const token = $input('token').value;
  if (token) headers.Authorization = `Bearer ${token}`;
  return request(path, { method: 'POST', headers, body: JSON.stringify(body) });
}

function errorText(/** @type {unknown} */ err) {
  if (!(err instanceof ApiError)) return String(err);
  return err.status ? `${err.message} (HTTP ${err.status})` : err.message;
}

// ---- Overview and the live connection -----------------------------------------------------------

/** @type {Overview | undefined} */
let overview;
/** @type {Sample[]} */
let samples = [];
let streamOpen = false;

/** The mark set once the groups are first drawn. */
const DRAWN_MARK = 'board:drawn';

function renderOverview(/** @type {Overview} */ next) {
  overview = next;
  renderLive();
  renderServices(next.services);
  renderFeatures(next);
  renderFlow();
  renderStreams(next.streams);
  renderGroups(next.streams);
  renderStreamSelect(next.streams);
  // The first draw, for anyone timing the page (devtools' Performance panel, `pnpm bench --only board`).
  if (performance.getEntriesByName(DRAWN_MARK).length === 0) {
    performance.mark(DRAWN_MARK);
    loadCharts();
  }
}

function renderLive() {
  const redisDown = streamOpen && overview?.redisUp === false;
  const live = $('live');
  setText(live, !streamOpen ? 'reconnecting…' : redisDown ? 'Redis unreachable' : 'live');
  live.dataset.state = !streamOpen ? 'down' : redisDown ? 'error' : 'up';
}

/** Whether each service's /metrics answered: without it, its run times are missing. */
function renderServices(/** @type {Overview['services']} */ services) {
  const item = (/** @type {Overview['services'][number]} */ { name, up }) =>
    h(
      'li',
      { 'data-up': String(up) },
      name,
      h('span', { class: up ? 'sr-only' : 'down' }, ` metrics ${up ? 'up' : 'down'}`),
    );
  $('services').replaceChildren(...services.map(item));
}

function renderFeatures(/** @type {Overview} */ { features, entityField, writable }) {
  const Entity = entityName().charAt(0).toUpperCase() + entityName().slice(1);
  $('read-only').hidden = writable;
  for (const button of document.querySelectorAll('button.write'))
    if (button instanceof HTMLButtonElement) button.disabled = !writable;
  $('order-section').hidden = !features.timeline;
  setText($('order-heading'), Entity);
  setText($('tl-label'), `${Entity} id`);
  $('tl-order-status').setAttribute('aria-label', `${Entity} status`);
  $('place-section').hidden = !features.place;
  // Without an entity field the server ignores an id: no point asking for one.
  $('dl-entity-field').hidden = !entityField;
  setText($('dl-entity-label'), `Search by ${entityName()} id`);
}

/** Merges samples in by time, and keeps the last 15 minutes. */
function addSamples(/** @type {readonly Sample[]} */ incoming) {
  const byAt = new Map(samples.map((sample) => [sample.at, sample]));
  for (const sample of incoming) byAt.set(sample.at, sample);
  const sorted = [...byAt.values()].sort((a, b) => a.at - b.at);
  // Against the newest sample, on Redis's clock: a skewed laptop clock must not empty the charts.
  const cutoff = (sorted.at(-1)?.at ?? 0) - HISTORY_MS;
  samples = sorted.filter((sample) => sample.at >= cutoff);
  renderCharts();
}

async function loadHistory() {
  try {
    addSamples((await get('api/history')).samples);
    renderFlow();
  } catch (err) {
    showLoadError(`history: ${errorText(err)}`);
  }
}

function showLoadError(/** @type {string} */ text) {
  $('load-error').hidden = false;
  announce('load-error', text);
}

function connect() {
  const source = new EventSource('api/events');
  source.addEventListener('open', () => {
    streamOpen = true;
    $('load-error').hidden = true;
    renderLive();
    // What ticked while the stream was down comes only with the history.
    loadHistory();
  });
  source.addEventListener('error', () => {
    streamOpen = false;
    renderLive();
    // EventSource retries by itself, except after an answer that is not an event stream.
    if (source.readyState === EventSource.CLOSED) window.setTimeout(connect, RECONNECT_MS);
  });
  source.addEventListener('sample', (event) => {
    /** @type {{ overview: Overview, sample?: Sample }} */
    const { overview: next, sample } = JSON.parse(event.data);
    // The first tick after the board starts has no rates yet.
    if (sample) addSamples([sample]);
    renderOverview(next);
    refreshTimeline();
  });
}

// ---- Flow ---------------------------------------------------------------------------------------

const ROW = 32;
const NODE_H = 24;
const NODE_W = 220;
const LEFT = 96;
const PAD = 12;
const CHAR_W = 6.8;
/** Room for an edge's label. */
const LABEL_W = 120;

/**
 * Rows of the flow: each consumer gets one, a group sits amid its consumers and a stream amid its
 * groups, so that no two edges cross.
 * @param {readonly StreamView[]} streams
 */
function layoutFlow(streams) {
  let row = 0;
  const placed = streams.map((stream, index) => {
    if (index > 0) row += 0.5;
    const first = row;
    const groups = stream.groups.map((group) => {
      const start = row;
      const consumers = group.consumers.map((consumer) => ({ consumer, row: row++ }));
      if (consumers.length === 0) row++;
      return { group, consumers, row: (start + row - 1) / 2 };
    });
    if (groups.length === 0) row++;
    return { stream, groups, row: (first + row - 1) / 2 };
  });
  return { rows: row, streams: placed };
}

/**
 * A box with a name (cut to fit, whole in its tooltip) and a figure on its right.
 * @param {{ x: number, y: number, name: string, detail: string, kind: string, tooltip: string }} node
 */
function flowNode({ x, y, name, detail, kind, tooltip }) {
  const room = Math.floor((NODE_W - 20 - detail.length * CHAR_W) / CHAR_W);
  const shown = name.length > room ? `${name.slice(0, Math.max(1, room - 1))}…` : name;
  return svg(
    'g',
    { class: `node ${kind}`, transform: `translate(${x} ${y - NODE_H / 2})` },
    svg('title', {}, tooltip),
    svg('rect', { width: NODE_W, height: NODE_H, rx: 4 }),
    svg('text', { x: 8, y: NODE_H / 2 + 4, class: 'name' }, shown),
    svg('text', { x: NODE_W - 7, y: NODE_H / 2 + 4, class: 'detail', 'text-anchor': 'end' }, detail),
  );
}

/**
 * An edge that bends, then runs level into its target with its label above that level stretch:
 * labels of edges into different rows then never collide, nor sit on a curve.
 * @param {{ x1: number, y1: number, x2: number, y2: number, label: string, kind: string }} edge
 */
function flowEdge({ x1, y1, x2, y2, label, kind }) {
  const level = Math.max(x1, x2 - LABEL_W);
  const mid = (x1 + level) / 2;
  const d = `M${x1} ${y1} C${mid} ${y1} ${mid} ${y2} ${level} ${y2} L${x2 - 2} ${y2}`;
  return [
    svg('path', { d, class: `edge ${kind}`, 'marker-end': 'url(#flow-arrow)' }),
    svg('text', { x: x2 - 10, y: y2 - 5, class: `edge-label ${kind}`, 'text-anchor': 'end' }, label),
  ];
}

function renderFlow() {
  if (!overview) return;
  const sample = samples.at(-1);
  const { rows, streams } = layoutFlow(overview.streams);
  const width = Math.max(960, $('flow').clientWidth);
  const height = Math.max(1, rows) * ROW + 2 * PAD;
  const gap = (width - LEFT - 3 * NODE_W - PAD) / 2;
  const [xs, xg, xc] = [LEFT, LEFT + NODE_W + gap, LEFT + 2 * (NODE_W + gap)];
  const y = (/** @type {number} */ row) => PAD + row * ROW + ROW / 2;
  /** @type {Element[]} */
  const edges = [];
  /** @type {Element[]} */
  const nodes = [];
  for (const { stream, groups, row } of streams) {
    const sy = y(row);
    const { name, length } = stream;
    edges.push(
      ...flowEdge({ x1: PAD, y1: sy, x2: xs, y2: sy, label: rate(sample?.added[name]), kind: 'in' }),
    );
    const tooltip = `${name}: ${length} entries, ${plural(stream.deadLetters, 'dead letter')}`;
    nodes.push(flowNode({ x: xs, y: sy, name, detail: `length ${length}`, kind: 'stream', tooltip }));
    for (const { group, consumers, row: groupRow } of groups) {
      const gy = y(groupRow);
      const label = `${rate(sample?.groups[`${name}/${group.name}`]?.handled)} · lag ${group.lag ?? '?'}`;
      edges.push(
        ...flowEdge({ x1: xs + NODE_W, y1: sy, x2: xg, y2: gy, label, kind: lagLevel(group.lagSeconds) }),
      );
      const detail = `${group.pending} pending`;
      const tip = `${group.name}: ${detail}, lag ${group.lag ?? '?'} (${num(group.lagSeconds)} s)`;
      nodes.push(flowNode({ x: xg, y: gy, name: group.name, detail, kind: 'group', tooltip: tip }));
      for (const { consumer, row: consumerRow } of consumers) {
        const cy = y(consumerRow);
        const idle = consumer.idleMs > IDLE_MS ? 'idle' : '';
        const pending = `${consumer.pending} pending`;
        edges.push(...flowEdge({ x1: xg + NODE_W, y1: gy, x2: xc, y2: cy, label: pending, kind: idle }));
        const [cname, detail] = [consumer.name, idleText(consumer)];
        const tip = `${cname}: ${pending}, ${detail}`;
        nodes.push(flowNode({ x: xc, y: cy, name: cname, detail, kind: `consumer ${idle}`, tooltip: tip }));
      }
    }
  }
  const arrow = { id: 'flow-arrow', viewBox: '0 0 8 8', refX: 7, refY: 4, markerWidth: 7, markerHeight: 7 };
  const picture = svg(
    'svg',
    {
      width,
      height,
      viewBox: `0 0 ${width} ${height}`,
      role: 'img',
      'aria-label': flowSummary(overview, sample),
    },
    svg('defs', {}, svg('marker', { ...arrow, orient: 'auto' }, svg('path', { d: 'M0 0 L8 4 L0 8 z' }))),
    ...edges,
    ...nodes,
    streams.length === 0 && svg('text', { x: PAD, y: ROW / 2 + PAD, class: 'empty' }, 'no streams read yet'),
  );
  $('flow').replaceChildren(picture);
}

/** What the picture shows, for whoever cannot see it. */
function flowSummary(/** @type {Overview} */ { streams }, /** @type {Sample | undefined} */ sample) {
  const groups = streams.flatMap((stream) => stream.groups);
  const consumers = groups.flatMap((group) => group.consumers);
  const idle = consumers.filter((consumer) => consumer.idleMs > IDLE_MS).length;
  const counts = `${plural(streams.length, 'stream')}, ${plural(groups.length, 'group')}, ${plural(consumers.length, 'consumer')} (${idle} idle over 60 s)`;
  const perStream = streams.map((stream) =>
    [
      `${stream.name} gets ${rate(sample?.added[stream.name])}`,
      ...stream.groups.map((group) => {
        const handled = sample?.groups[`${stream.name}/${group.name}`]?.handled;
        return `${group.name} handles ${rate(handled)}, lag ${group.lag ?? '?'}`;
      }),
    ].join(', '),
  );
  return [counts, ...perStream].join('. ');
}

// ---- Streams and groups -------------------------------------------------------------------------

function renderStreams(/** @type {readonly StreamView[]} */ streams) {
  const rows = streams.flatMap((stream) => [
    h(
      'tr',
      { 'data-stream': stream.name },
      td(
        stream.partitions ? `${stream.name} (${plural(stream.partitions.length, 'partition')})` : stream.name,
        'name',
      ),
      td(stream.length, 'num', 'length'),
      td(stream.deadLetters, `num ${stream.deadLetters > 0 ? 'has-dead' : ''}`, 'dead-letters'),
      td(stream.entriesAdded, 'num', 'entries-added'),
      td(stream.lastId, 'mono', 'last-id'),
    ),
    // A partitioned stream's row sums its partitions; each follows, with its groups' lag and pending.
    ...(stream.partitions ?? []).map((partition) =>
      h(
        'tr',
        { 'data-partition': partition.name, class: 'partition' },
        td(partition.name, 'name'),
        td(partition.length, 'num', 'length'),
        td('', 'num'),
        td('', 'num'),
        td(
          partition.groups.map((g) => `${g.name}: lag ${g.lag ?? '?'}, pending ${g.pending}`).join(' · '),
          '',
          'partition-groups',
        ),
      ),
    ),
  ]);
  $('streams-body').replaceChildren(...(rows.length ? rows : [emptyRow(5, 'no streams read yet')]));
}

function renderGroups(/** @type {readonly StreamView[]} */ streams) {
  const rows = streams.flatMap((stream) => stream.groups.map((group) => groupRow(stream, group)));
  $('groups-body').replaceChildren(...(rows.length ? rows : [emptyRow(7, 'no consumer groups')]));
}

function groupRow(/** @type {StreamView} */ stream, /** @type {GroupView} */ group) {
  const level = lagLevel(group.lagSeconds);
  return h(
    'tr',
    { 'data-stream': stream.name, 'data-group': group.name },
    td(stream.name, 'name'),
    td(group.name, 'name'),
    td(group.lag === null ? '?' : group.lag, `num ${level}`, 'lag'),
    td(num(group.lagSeconds), `num ${level}`, 'lag-seconds'),
    td(group.pending, 'num', 'pending'),
    td(num(group.oldestPendingSeconds), 'num', 'oldest-pending'),
    td(consumerList(group.consumers), '', 'consumers'),
  );
}

function consumerList(/** @type {readonly ConsumerView[]} */ consumers) {
  if (consumers.length === 0) return h('span', { class: 'note' }, 'none');
  const item = (/** @type {ConsumerView} */ consumer) =>
    h(
      'li',
      { class: consumer.idleMs > IDLE_MS ? 'idle' : undefined, 'data-consumer': consumer.name },
      h('span', { class: 'name' }, consumer.name),
      ` ${consumer.pending} pending, ${idleText(consumer)}`,
    );
  return h('ul', { class: 'consumers' }, ...consumers.map(item));
}

// ---- Charts -------------------------------------------------------------------------------------

const CHART_HEIGHT = 190;
const PALETTE = ['#2563eb', '#dc2626', '#16a34a', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#65a30d'];
/** @type {Map<string, string>} A colour per stream or group, the same in every chart. */
const colours = new Map();

/** @typedef {{ label: string, colour: string, dash?: number[], value: (sample: Sample) => number | null | undefined }} Line */
/** @typedef {{ el: HTMLElement, plot?: UPlot, key: string }} Chart */

/**
 * @param {string} label
 * @param {string} key The stream or group, for its colour.
 * @param {Line['value']} value
 * @param {boolean} [dashed]
 * @returns {Line}
 */
function line(label, key, value, dashed = false) {
  if (!colours.has(key)) colours.set(key, PALETTE[colours.size % PALETTE.length] ?? '#000');
  return { label, colour: colours.get(key) ?? '#000', value, ...(dashed ? { dash: [6, 3] } : {}) };
}

/** @type {Record<'rates' | 'lag' | 'runs', Chart>} */
const charts = {
  rates: { el: $('chart-rates'), key: '' },
  lag: { el: $('chart-lag'), key: '' },
  runs: { el: $('chart-runs'), key: '' },
};

/** The keys of one figure over all samples, in the order they first appear. */
function keysOf(/** @type {(sample: Sample) => object} */ pick) {
  /** @type {Set<string>} */
  const keys = new Set();
  for (const sample of samples) for (const key of Object.keys(pick(sample))) keys.add(key);
  return [...keys];
}

/** A group's name alone, unless a group of another stream has the same name: then `stream/group`. */
function groupLabels(/** @type {string[]} */ keys) {
  const names = keys.map((key) => {
    const stream = overview?.streams.find((candidate) => key.startsWith(`${candidate.name}/`));
    return stream ? key.slice(stream.name.length + 1) : key;
  });
  const twice = new Set(names.filter((name, i) => names.indexOf(name) !== i));
  return new Map(keys.map((key, i) => [key, twice.has(names[i] ?? '') ? key : (names[i] ?? key)]));
}

function renderCharts() {
  const streams = keysOf((sample) => sample.added);
  const groups = keysOf((sample) => sample.groups);
  const handlers = keysOf((sample) => sample.handlers);
  const label = groupLabels([...new Set([...groups, ...handlers])]);
  renderChart(charts.rates, [
    ...streams.map((stream) => line(`${stream} added`, stream, (s) => s.added[stream])),
    ...groups.map((key) => line(`${label.get(key)} handled`, key, (s) => s.groups[key]?.handled, true)),
  ]);
  renderChart(
    charts.lag,
    groups.map((key) => line(`${label.get(key)}`, key, (s) => s.groups[key]?.lag)),
  );
  // Run times come from the services' /metrics; without them this chart would stay empty.
  $('runs-note').hidden = handlers.length > 0;
  charts.runs.el.hidden = handlers.length === 0;
  if (handlers.length === 0) return;
  const ms = (/** @type {number | undefined} */ seconds) => (seconds === undefined ? null : seconds * 1000);
  renderChart(
    charts.runs,
    handlers.flatMap((key) => [
      line(`${label.get(key)} p50`, key, (s) => ms(s.handlers[key]?.p50)),
      line(`${label.get(key)} p99`, key, (s) => ms(s.handlers[key]?.p99), true),
    ]),
  );
}

/** Draws `lines` over the samples: new lines need a new uPlot, new figures only setData. */
function renderChart(/** @type {Chart} */ chart, /** @type {Line[]} */ lines) {
  if (!uPlot) return;
  const data = /** @type {import('uplot').AlignedData} */ ([
    samples.map((sample) => sample.at / 1000),
    ...lines.map((line) => samples.map((sample) => line.value(sample) ?? null)),
  ]);
  const key = lines.map((line) => `${line.label}\t${line.colour}`).join('\n');
  if (chart.plot && chart.key === key) return chart.plot.setData(data);
  chart.plot?.destroy();
  chart.plot = new uPlot(chartOptions(lines, chart.el.clientWidth), data, chart.el);
  chart.key = key;
}

/** @returns {import('uplot').Options} */
function chartOptions(/** @type {Line[]} */ lines, /** @type {number} */ width) {
  const axis = { stroke: '#4b5563', grid: { stroke: '#eef0f3' }, ticks: { stroke: '#d1d5db' } };
  /** @type {(u: UPlot, v: number | null) => string} */
  const value = (_u, v) => (v === null ? '–' : num(v));
  return {
    width: Math.max(240, width),
    height: CHART_HEIGHT,
    // A zoom would be undone by the next tick's setData.
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: [axis, { ...axis, size: 48 }],
    series: [
      { label: 'time', value: (_u, v) => (v === null ? '–' : timeText(v * 1000).slice(11)) },
      ...lines.map(({ label, colour, dash }) => ({
        label,
        stroke: colour,
        width: 1.5,
        points: { show: false },
        // A tick without runs (or without a scrape) leaves a gap: the line goes across it.
        spanGaps: true,
        value,
        ...(dash ? { dash } : {}),
      })),
    ],
  };
}

const chartResizer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const chart = Object.values(charts).find((candidate) => candidate.el === entry.target);
    const width = Math.floor(entry.contentRect.width);
    if (chart?.plot && width > 0 && width !== chart.plot.width)
      chart.plot.setSize({ width, height: CHART_HEIGHT });
  }
});
for (const chart of Object.values(charts)) chartResizer.observe(chart.el);

let flowWidth = 0;
new ResizeObserver(() => {
  if ($('flow').clientWidth === flowWidth) return;
  flowWidth = $('flow').clientWidth;
  renderFlow();
}).observe($('flow'));

// ---- Dead letters -------------------------------------------------------------------------------

/** @type {Search | undefined} The search shown: actions on "all matching" use it, not the form. */
let search;
/** @type {string | undefined} */
let after;
/** @type {DeadLetterPage | undefined} */
let page;
/** @type {Set<string>} */
const selected = new Set();
/** Answers to earlier searches that come late are dropped. */
let searchSeq = 0;
let acting = false;

function renderStreamSelect(/** @type {readonly StreamView[]} */ streams) {
  // Updated in place: rebuilding would lose the choice, and close the list if open.
  const select = byId('dl-stream', HTMLSelectElement);
  const options = new Map([...select.options].map((option) => [option.value, option]));
  for (const stream of streams) {
    let option = options.get(stream.name);
    if (!option) select.append((option = h('option', { value: stream.name })));
    setText(option, `${stream.name} (${plural(stream.deadLetters, 'dead letter')})`);
  }
  if (!search && select.value) startSearch();
}

/** A datetime-local value as ISO: it has no zone, and Date reads it as local time. */
function isoOf(/** @type {string} */ local) {
  const time = local ? new Date(local) : undefined;
  return time && !Number.isNaN(time.getTime()) ? time.toISOString() : '';
}

function startSearch() {
  search = {
    stream: byId('dl-stream', HTMLSelectElement).value,
    entity: $input('dl-entity').value.trim(),
    reason: $input('dl-reason').value.trim(),
    from: isoOf($input('dl-from').value),
    to: isoOf($input('dl-to').value),
  };
  after = undefined;
  selected.clear();
  loadDeadLetters();
}

/** The search as the API names it: the entity id goes under the entity's own field. */
function searchParams(/** @type {Search} */ { entity, reason, from, to }) {
  /** @type {Record<string, string>} */
  const params = {};
  if (entity && overview?.entityField) params[overview.entityField] = entity;
  if (reason) params.reason = reason;
  if (from) params.from = from;
  if (to) params.to = to;
  return params;
}

async function loadDeadLetters() {
  if (!search) return;
  const query = new URLSearchParams({ stream: search.stream, ...searchParams(search) });
  if (after) query.set('after', after);
  const seq = ++searchSeq;
  try {
    const answer = await get(`api/dead-letters?${query}`);
    if (seq === searchSeq) renderLetters(answer);
  } catch (err) {
    if (seq !== searchSeq) return;
    announce('dl-status', errorText(err));
    renderLetters(undefined);
  }
}

function renderLetters(/** @type {DeadLetterPage | undefined} */ answer) {
  page = answer;
  const letters = answer?.letters ?? [];
  const shown = new Set(letters.map((letter) => letter.id));
  for (const id of selected) if (!shown.has(id)) selected.delete(id);
  $('dl-body').replaceChildren(
    ...(letters.length ? letters.map(selectableRow) : [emptyRow(8, 'no dead letters shown')]),
  );
  $('dl-next').hidden = !answer?.next;
  $button('dl-first').disabled = after === undefined;
  setText($('dl-summary'), answer && search ? lettersSummary(answer, search.stream) : '');
  syncSelectAll();
}

function lettersSummary(/** @type {DeadLetterPage} */ answer, /** @type {string} */ stream) {
  const inAll = `${plural(answer.total, 'dead letter')} in ${stream} in all`;
  if (answer.letters.length > 0) return `${answer.letters.length} shown; ${inAll}`;
  // A search reads a bounded number of dead letters per call: a page can be empty and have a next.
  if (answer.next) return `none matched in the part searched so far: Next page searches on; ${inAll}`;
  return `no dead letters match this search; ${inAll}`;
}

/** A dead letter's row; `lead` is its first cell: a checkbox that selects it, or its stream. */
function letterRow(/** @type {DeadLetterView} */ letter, /** @type {HTMLElement} */ lead) {
  const fields = Object.entries(letter.fields).map(([name, value]) => `${name}=${value}`);
  return h(
    'tr',
    { 'data-id': letter.id },
    lead,
    td(timeText(letter.at), 'time'),
    td(letter.entryId, 'mono'),
    td(letter.group, 'name'),
    td(letter.consumer, 'name'),
    td(letter.deliveries, 'num'),
    td(letter.reason, 'reason'),
    h('td', { title: fields.join('\n') }, h('div', { class: 'fields' }, fields.join(' '))),
  );
}

function selectableRow(/** @type {DeadLetterView} */ letter) {
  const box = h('input', { type: 'checkbox', 'aria-label': `Select dead letter ${letter.id}` });
  box.checked = selected.has(letter.id);
  return letterRow(letter, td(box, 'check'));
}

function syncSelectAll() {
  const ids = page?.letters.map((letter) => letter.id) ?? [];
  const count = ids.filter((id) => selected.has(id)).length;
  $input('dl-all').checked = ids.length > 0 && count === ids.length;
  $input('dl-all').indeterminate = count > 0 && count < ids.length;
}

/** The question to ask before an action, if it needs one: whatever cannot be undone, or is wide. */
function confirmation(/** @type {'replay' | 'discard'} */ kind, /** @type {number | 'all'} */ count) {
  const what =
    count === 'all'
      ? `all dead letters matching this search in ${search?.stream}`
      : `${plural(count, 'dead letter')} of ${search?.stream}`;
  if (kind === 'discard') return `Discard ${what}? Discarded dead letters cannot be replayed.`;
  return count === 'all' ? `Replay ${what}?` : undefined;
}

function outcomeText(/** @type {'replay' | 'discard'} */ kind, /** @type {ActionResult} */ result) {
  // One replayed or discarded meanwhile (by another viewer) comes back without entryId / dropped.
  const list = kind === 'replay' ? (result.replayed ?? []) : (result.dropped ?? []);
  const done = list.filter((item) => ('dropped' in item ? item.dropped : item.entryId)).length;
  const parts = [`${kind === 'replay' ? 'replayed' : 'discarded'} ${plural(done, 'dead letter')}`];
  if (done < list.length) parts.push(`${list.length - done} already gone`);
  if (result.more) parts.push('more match: run it again');
  return parts.join('; ');
}

async function act(/** @type {'replay' | 'discard'} */ kind, /** @type {boolean} */ all) {
  if (!search || acting) return;
  const ids = [...selected];
  if (!all && ids.length === 0) return announce('dl-status', 'select dead letters first');
  const question = confirmation(kind, all ? 'all' : ids.length);
  if (question && !window.confirm(question)) return;
  const { stream } = search;
  const body = all ? { stream, all: true, ...searchParams(search) } : { stream, ids };
  acting = true;
  try {
    announce('dl-status', outcomeText(kind, await post(`api/dead-letters/${kind}`, body)));
    selected.clear();
  } catch (err) {
    announce('dl-status', errorText(err));
  } finally {
    acting = false;
  }
  await loadDeadLetters();
}

$('dl-form').addEventListener('submit', (event) => {
  event.preventDefault();
  announce('dl-status', '');
  startSearch();
});
$('dl-body').addEventListener('change', ({ target }) => {
  const id = target instanceof HTMLInputElement ? target.closest('tr')?.dataset.id : undefined;
  if (!(target instanceof HTMLInputElement) || id === undefined) return;
  if (target.checked) selected.add(id);
  else selected.delete(id);
  syncSelectAll();
});
$input('dl-all').addEventListener('change', () => {
  const all = $input('dl-all').checked;
  for (const { id } of page?.letters ?? []) {
    if (all) selected.add(id);
    else selected.delete(id);
  }
  renderLetters(page);
});
$('dl-next').addEventListener('click', () => {
  after = page?.next;
  loadDeadLetters();
});
$('dl-first').addEventListener('click', () => {
  after = undefined;
  loadDeadLetters();
});
$('dl-replay').addEventListener('click', () => act('replay', false));
$('dl-discard').addEventListener('click', () => act('discard', false));
$('dl-replay-all').addEventListener('click', () => act('replay', true));
$('dl-discard-all').addEventListener('click', () => act('discard', true));

// ---- Timeline -----------------------------------------------------------------------------------

/** The id whose timeline is shown (or was asked for): every tick asks for it again. */
let timelineId = '';
let timelineSeq = 0;
let timelineAskedAt = 0;
let timelineLoading = false;

async function showTimeline(/** @type {string} */ id) {
  timelineId = id;
  timelineAskedAt = Date.now();
  timelineLoading = true;
  const seq = ++timelineSeq;
  try {
    const timeline = await get(`api/timeline/${encodeURIComponent(id)}`);
    if (seq !== timelineSeq) return;
    setText($('tl-status'), '');
    renderTimeline(timeline);
  } catch (err) {
    if (seq !== timelineSeq) return;
    const notFound = err instanceof ApiError && err.status === 404;
    // A passing error leaves the last timeline up; a 404 hides it, and the next ticks ask again
    // (an order just placed may not be known yet).
    if (notFound) $('timeline').hidden = true;
    setText($('tl-status'), notFound ? `no ${entityName()} ${id} found` : errorText(err));
  } finally {
    if (seq === timelineSeq) timelineLoading = false;
  }
}

/** On each tick, at most every 2 s: a pending order turns paid without a reload. */
function refreshTimeline() {
  if (!timelineId || timelineLoading || Date.now() - timelineAskedAt < TIMELINE_REFRESH_MS) return;
  showTimeline(timelineId);
}

function renderTimeline(/** @type {Timeline} */ timeline) {
  const { status, ...rest } = timeline.summary ?? {};
  const statusText = status === undefined ? 'unknown' : valueText(status);
  setText($('tl-order-status'), statusText);
  $('tl-order-status').dataset.status = statusText;
  const facts = Object.entries({ id: timeline.id, ...rest });
  $('tl-summary').replaceChildren(
    ...facts.map(([name, value]) => h('div', {}, h('dt', {}, name), h('dd', {}, valueText(value)))),
  );
  const { entries, deadLetters } = timeline;
  $('tl-body').replaceChildren(
    ...(entries.length ? entries.map(timelineRow) : [emptyRow(6, 'no entries known')]),
  );
  $('tl-dead-none').hidden = deadLetters.length > 0;
  $('tl-dead').hidden = deadLetters.length === 0;
  $('tl-dead-body').replaceChildren(
    ...deadLetters.map((letter) => letterRow(letter, td(letter.stream, 'name'))),
  );
  $('timeline').hidden = false;
}

function timelineRow(/** @type {TimelineEntry} */ entry) {
  const trimmed =
    !entry.fields && h('span', { class: 'note', title: 'retention has trimmed it away' }, ' (trimmed)');
  return h(
    'tr',
    { 'data-stream': entry.stream, 'data-entry-id': entry.entryId },
    td(timeText(entry.at), 'time'),
    td(entry.stream, 'name'),
    h('td', { class: 'mono' }, entry.entryId, trimmed),
    td(entry.event ?? '–', 'name'),
    td(entry.status ?? '–', 'name', 'status'),
    td(h('ul', { class: 'badges' }, ...entry.groups.map(groupBadge))),
  );
}

function groupBadge(/** @type {TimelineEntry['groups'][number]} */ { group, state, consumer, deliveries }) {
  const times =
    deliveries === undefined ? '?' : `${deliveries} ${deliveries === 1 ? 'delivery' : 'deliveries'}`;
  const detail = state === 'pending' ? `pending (${consumer ?? '?'}, ${times})` : state;
  return h(
    'li',
    { class: `badge ${state}`, 'data-group': group, 'data-state': state },
    `${group}: ${detail}`,
  );
}

$('tl-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $input('tl-id').value.trim();
  if (id) showTimeline(id);
});

// ---- Place --------------------------------------------------------------------------------------

$('place-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const inputs = ['place-user', 'place-product', 'place-price'].map($input);
  const [userId, productId, price] = inputs.map((input) => input.value);
  for (const input of inputs) input.removeAttribute('aria-invalid');
  // An empty price goes as null, not as Number('') = 0: the service then says it is missing.
  const body = { userId, productId, price: price ? Number(price) : null };
  try {
    const answer = await post('api/place', body);
    const id = valueText(answer?.orderId ?? answer?.[overview?.entityField ?? ''] ?? '');
    announce('place-status', `placed ${entityName()} ${id}`);
    if (!id || !overview?.features.timeline) return;
    $input('tl-id').value = id;
    showTimeline(id);
  } catch (err) {
    const field = err instanceof ApiError && err.status === 400 ? err.field : undefined;
    inputs.find((input) => field && field.endsWith(input.name))?.setAttribute('aria-invalid', 'true');
    const message = err instanceof ApiError && err.status === 400 ? err.message : errorText(err);
    announce('place-status', field ? `${message} (field: ${field})` : message);
  }
});

// ---- Start --------------------------------------------------------------------------------------

try {
  $input('token').value = sessionStorage.getItem(TOKEN_KEY) ?? '';
  $input('token').addEventListener('input', () => sessionStorage.setItem(TOKEN_KEY, $input('token').value));
} catch {
  // Storage is off (privacy settings): the token then lasts as long as the page.
}

get('api/overview')
  .then(renderOverview)
  .catch((err) => showLoadError(`overview: ${errorText(err)}`));
connect();
