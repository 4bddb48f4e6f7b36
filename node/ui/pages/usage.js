// Usage: cost and tokens over a chosen range, by tenant, project, feature,
// model or key; the burn rate and where it leads by the end of the range;
// the table is the API's rows, and the CSV link asks the API for the same
// query as CSV, so the download is exactly what the table shows.
import { get } from '../api.js';
import { h, clear, table, field, num } from '../dom.js';
import { lineChart } from '../chart.js';

const DIMS = ['tenant', 'project', 'feature', 'model', 'key'];
const RANGES = {
  month: 'This month (UTC)',
  today: 'Today (UTC)',
  '24h': 'Last 24 hours',
  '7d': 'Last 7 days',
  '30d': 'Last 30 days',
  custom: 'Custom dates',
};

function params() {
  const q = new URLSearchParams((location.hash.split('?')[1]) || '');
  return {
    range: RANGES[q.get('range')] ? q.get('range') : 'month',
    by: DIMS.includes(q.get('by')) ? q.get('by') : '',
    g: ['minute', 'hour', 'day'].includes(q.get('g')) ? q.get('g') : '',
    from: q.get('from') || '', to: q.get('to') || '',
    filter: q.get('filter') || '',
  };
}

function span(p, now) {
  const d = new Date(now);
  const day = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
  switch (p.range) {
    case 'today': return [day, day + 86400e3];
    case '24h': return [now - 86400e3, now];
    case '7d': return [now - 7 * 86400e3, now];
    case '30d': return [now - 30 * 86400e3, now];
    case 'custom': {
      const f = Date.parse(p.from + 'T00:00:00Z'), t = Date.parse(p.to + 'T00:00:00Z') + 86400e3;
      if (Number.isFinite(f) && Number.isFinite(t) && t > f) return [f, t];
      return [day, day + 86400e3];
    }
    default: return [Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1), Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)];
  }
}

function autoGranularity(from, to) {
  const hours = (to - from) / 3600e3;
  return hours <= 6 ? 'minute' : hours <= 24 * 8 ? 'hour' : 'day';
}

const iso = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
const money = (v) => '$' + (v >= 1 ? v.toFixed(2) : v >= 0.01 ? v.toFixed(4) : v.toFixed(6));

function controls(p) {
  const form = h('form', { class: 'card controls', 'aria-label': 'Usage query' },
    field('Range', h('select', { name: 'range' }, Object.entries(RANGES).map(([k, v]) => h('option', { value: k, selected: k === p.range }, v)))),
    field('From (UTC date)', h('input', { name: 'from', type: 'date', value: p.from })),
    field('To (UTC date, inclusive)', h('input', { name: 'to', type: 'date', value: p.to })),
    field('Group by', h('select', { name: 'by' }, h('option', { value: '' }, '(nothing)'),
      DIMS.map((d) => h('option', { value: d, selected: d === p.by }, d)))),
    field('Granularity', h('select', { name: 'g' }, h('option', { value: '' }, 'automatic'),
      ['minute', 'hour', 'day'].map((g) => h('option', { value: g, selected: g === p.g }, g)))),
    field('Filter', h('input', { name: 'filter', value: p.filter, placeholder: 'tenant:acme' })),
    h('button', { type: 'submit' }, 'Show'));
  // Typing a date means a custom range.
  form.querySelectorAll('input[type=date]').forEach((i) => i.addEventListener('change', () => {
    form.querySelector('[name=range]').value = 'custom';
  }));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(form).entries());
    const q = new URLSearchParams();
    for (const k of ['range', 'by', 'g', 'filter']) if (v[k]) q.set(k, v[k]);
    if (v.range === 'custom') { q.set('from', v.from); q.set('to', v.to); }
    location.hash = '#/usage?' + q.toString();
  });
  return form;
}

function groupName(row, by) {
  if (!by) return 'all';
  return row[by] === '' ? '(none)' : row[by];
}

export async function render(view, live = () => true) {
  const p = params();
  const now = Date.now();
  const [from, to] = span(p, now);
  const granularity = p.g || autoGranularity(from, to);
  const q = new URLSearchParams({ from: iso(from), to: iso(to), granularity });
  if (p.by) q.set('group_by', p.by);
  if (p.filter) q.set('filter', p.filter);
  const data = await get('usage?' + q.toString());
  if (!live()) return;
  const csv = '/admin/v1/usage?' + q.toString() + '&format=csv';
  const t = data.totals;
  const cost = t.cost_nanousd / 1e9;
  const end = Math.min(now, to);
  const hours = Math.max((end - from) / 3600e3, 1 / 60);
  const burn = cost / hours;
  const projected = to > now ? cost + burn * ((to - now) / 3600e3) : cost;

  // per-bucket sums across groups, cumulative cost, per-group cost
  const buckets = new Map();
  const byGroup = new Map();
  for (const r of data.rows) {
    const ms = Date.parse(r.start);
    const b = buckets.get(ms) || { cost: 0, tin: 0, tout: 0 };
    b.cost += r.cost_nanousd / 1e9; b.tin += r.tokens_in; b.tout += r.tokens_out;
    buckets.set(ms, b);
    const g = groupName(r, p.by);
    const gm = byGroup.get(g) || new Map();
    gm.set(ms, (gm.get(ms) || 0) + r.cost_nanousd / 1e9);
    byGroup.set(g, gm);
  }
  const times = [...buckets.keys()].sort((a, b) => a - b);
  let acc = 0;
  const cumulative = times.map((ms) => [ms, (acc += buckets.get(ms).cost)]);
  const projection = to > now ? [[end, cost], [to, projected]] : [];
  const groups = [...byGroup.entries()].sort((a, b) => [...b[1].values()].reduce((x, y) => x + y, 0) - [...a[1].values()].reduce((x, y) => x + y, 0));
  const top = groups.slice(0, 6);
  if (groups.length > 6) {
    const other = new Map();
    for (const [, gm] of groups.slice(6)) for (const [ms, v] of gm) other.set(ms, (other.get(ms) || 0) + v);
    top.push(['other', other]);
  }
  const xr = { xMin: from, xMax: to };
  const charts = h('div', { class: 'charts' },
    lineChart({ title: 'Cost to date, and projected to the end of the range', testid: 'chart-cumulative', yFormat: money, ...xr,
      series: [{ name: 'cost to date', points: cumulative }, { name: 'projection', points: projection, dashed: true, color: '#888' }] }),
    lineChart({ title: `Cost per ${granularity}` + (p.by ? ` by ${p.by}` : ''), testid: 'chart-cost', yFormat: money, ...xr,
      series: top.map(([g, gm]) => ({ name: g, points: [...gm.entries()].sort((a, b) => a[0] - b[0]) })) }),
    lineChart({ title: `Tokens per ${granularity}`, testid: 'chart-tokens', yFormat: (v) => num(Math.round(v)), ...xr,
      series: [{ name: 'input', points: times.map((ms) => [ms, buckets.get(ms).tin]) },
        { name: 'output', points: times.map((ms) => [ms, buckets.get(ms).tout]) }] }));
  charts.firstChild.dataset.totalCost = t.cost_usd;

  const lat = (r, k) => (r.latency_ms ? r.latency_ms[k].toFixed(3) : '');
  const cols = [
    { key: 'start', label: 'start', get: (r) => r.start },
    ...(data.group_by || []).map((d) => ({ key: d, label: d, get: (r) => r[d] })),
    ...['requests', 'errors', 'retries', 'streamed', 'tokens_in', 'tokens_out', 'tokens_cached']
      .map((k) => ({ key: k, label: k, cls: 'num', get: (r) => String(r[k]) })),
    { key: 'cost_usd', label: 'cost_usd', cls: 'num', get: (r) => r.cost_usd },
    { key: 'latency_p50_ms', label: 'latency_p50_ms', cls: 'num', get: (r) => lat(r, 'p50') },
    { key: 'latency_p95_ms', label: 'latency_p95_ms', cls: 'num', get: (r) => lat(r, 'p95') },
    { key: 'latency_p99_ms', label: 'latency_p99_ms', cls: 'num', get: (r) => lat(r, 'p99') },
  ];
  const stat = (label, value, id) => h('div', { class: 'stat' }, h('span', {}, label), h('strong', { 'data-testid': id }, value));
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Usage'),
      h('a', { class: 'button secondary', href: csv, download: 'usage.csv', 'data-testid': 'csv' }, 'Download CSV')),
    controls(p),
    h('p', { class: 'muted', 'data-testid': 'range' }, `${data.from} to ${data.to}, per ${data.granularity}, from meter ${data.meter}`),
    h('div', { class: 'stats' },
      stat('Requests', num(t.requests), 'total-requests'),
      stat('Errors', num(t.errors), 'total-errors'),
      stat('Tokens in', num(t.tokens_in), 'total-tokens-in'),
      stat('Tokens out', num(t.tokens_out), 'total-tokens-out'),
      stat('Cost', '$' + t.cost_usd, 'total-cost'),
      stat('Burn rate', money(burn) + '/h', 'burn-rate'),
      stat(to > now ? `Projected by ${iso(to).slice(0, 10)}` : 'Range total', money(projected), 'projected')),
    charts,
    table(cols, data.rows, { testid: 'usage-rows', caption: 'Rows (what the CSV holds)', empty: 'No usage in this range.' }));
}
