// Line charts drawn as SVG (no library): time on x, one line per series,
// a dashed series for projections. Every point has a <title> for hover and
// the numbers are also in the page's table, so nothing is only in pixels.
const NS = 'http://www.w3.org/2000/svg';
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#8c564b', '#e377c2'];

function el(tag, attrs, text) {
  const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function timeLabel(ms, span) {
  const iso = new Date(ms).toISOString();
  if (span <= 2 * 86400e3) return iso.slice(11, 16);
  return iso.slice(5, 10);
}

// @opts: {title, series: [{name, points: [[ms, value]], dashed}], yFormat,
// xMin, xMax, testid}
export function lineChart(opts) {
  const W = 720, H = 260, L = 64, R = 16, T = 28, B = 40;
  const all = opts.series.flatMap((s) => s.points);
  const xMin = opts.xMin ?? Math.min(...all.map((p) => p[0]));
  const xMax = opts.xMax ?? Math.max(...all.map((p) => p[0]));
  const yMax = niceMax(Math.max(0, ...all.map((p) => p[1])));
  const fmt = opts.yFormat || ((v) => String(v));
  const x = (t) => L + ((t - xMin) / Math.max(1, xMax - xMin)) * (W - L - R);
  const y = (v) => T + (1 - v / yMax) * (H - T - B);
  const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', role: 'img', 'aria-label': opts.title, 'data-testid': opts.testid || '' });
  svg.append(el('title', {}, opts.title));
  svg.append(el('text', { x: L, y: 16, class: 'chart-title' }, opts.title));
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    svg.append(el('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }));
    svg.append(el('text', { x: L - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, fmt(v)));
  }
  for (let i = 0; i <= 5; i++) {
    const t = xMin + ((xMax - xMin) * i) / 5;
    svg.append(el('text', { x: x(t), y: H - B + 16, class: 'axis', 'text-anchor': 'middle' }, timeLabel(t, xMax - xMin)));
  }
  svg.append(el('line', { x1: L, x2: W - R, y1: y(0), y2: y(0), class: 'axis-line' }));
  if (all.length === 0) {
    svg.append(el('text', { x: W / 2, y: H / 2, class: 'axis', 'text-anchor': 'middle' }, 'no data in this range'));
  }
  opts.series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    if (s.points.length === 0) return;
    const d = s.points.map((p, k) => `${k ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
    svg.append(el('path', { d, class: 'line' + (s.dashed ? ' dashed' : ''), stroke: color, 'data-series': s.name, 'data-points': s.points.length }));
    for (const p of s.points) {
      const c = el('circle', { cx: x(p[0]).toFixed(1), cy: y(p[1]).toFixed(1), r: s.points.length > 60 ? 1.5 : 3, fill: color });
      c.append(el('title', {}, `${s.name} ${new Date(p[0]).toISOString()}: ${fmt(p[1])}`));
      svg.append(c);
    }
  });
  // legend
  let lx = L;
  opts.series.forEach((s, i) => {
    const color = s.color || COLORS[i % COLORS.length];
    svg.append(el('rect', { x: lx, y: H - 14, width: 10, height: 10, fill: color }));
    const label = s.name.length > 24 ? s.name.slice(0, 23) + '…' : s.name;
    svg.append(el('text', { x: lx + 14, y: H - 5, class: 'legend' }, label));
    lx += 24 + label.length * 7;
  });
  return svg;
}

export { COLORS };
