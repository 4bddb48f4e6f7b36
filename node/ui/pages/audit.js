// Audit: the tamper-evident chain, filtered by actor, target, action and
// time, with the result of verifying the whole chain.
import { get } from '../api.js';
import { h, clear, table, field, when } from '../dom.js';

let filters = { actor: '', target: '', action: '', since: '', until: '' };

function verifyBanner(v) {
  if (v.ok) {
    return h('p', { class: 'banner ok', 'data-testid': 'audit-verify' },
      `Chain verified: ${v.checked} entries, head #${v.head.seq} ${v.head.hash.slice(0, 16)}…`);
  }
  return h('p', { class: 'banner bad', role: 'alert', 'data-testid': 'audit-verify' },
    `Chain BROKEN at entry #${v.broken_seq}: ${v.message}`);
}

export async function render(view, live = () => true) {
  const q = new URLSearchParams({ limit: '1000' });
  for (const k of ['actor', 'target', 'action']) if (filters[k]) q.set(k, filters[k]);
  if (filters.since) q.set('since_ms', String(Date.parse(filters.since + 'T00:00:00Z')));
  if (filters.until) q.set('until_ms', String(Date.parse(filters.until + 'T00:00:00Z') + 86400e3));
  // The API lists oldest first from the start of the range; page to the end
  // and show the newest first.
  let entries = [], after = null, head = null;
  for (let i = 0; i < 20; i++) {
    if (after !== null) q.set('after_seq', String(after));
    const page = await get('audit?' + q.toString());
    head = page.head;
    entries = entries.concat(page.entries);
    if (page.entries.length < 1000) break;
    after = page.entries[page.entries.length - 1].seq;
  }
  const verify = await get('audit/verify').catch((e) => ({ ok: false, broken_seq: '?', message: e.message }));
  if (!live()) return;
  entries.reverse();
  const form = h('form', { class: 'card controls', 'aria-label': 'Filter the audit chain' },
    ['actor', 'target', 'action'].map((k) => field(k[0].toUpperCase() + k.slice(1), h('input', { name: k, value: filters[k] }))),
    field('Since (UTC date)', h('input', { name: 'since', type: 'date', value: filters.since })),
    field('Until (UTC date)', h('input', { name: 'until', type: 'date', value: filters.until })),
    h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    filters = Object.fromEntries(new FormData(form).entries());
    render(view);
  });
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Audit')),
    verifyBanner(verify),
    form,
    h('p', { class: 'muted' }, `${entries.length} entr${entries.length === 1 ? 'y' : 'ies'} shown; chain head #${head ? head.seq : '?'}`),
    table([
      { key: 'seq', label: '#', cls: 'num', get: (e) => String(e.seq) },
      { key: 'ts', label: 'When', get: (e) => when(e.ts) },
      { key: 'actor', label: 'Actor', get: (e) => e.actor },
      { key: 'role', label: 'Role', get: (e) => e.role },
      { key: 'action', label: 'Action', get: (e) => e.action },
      { key: 'target', label: 'Target', get: (e) => e.target },
      { key: 'result', label: 'Result', get: (e) => e.result },
      { key: 'source', label: 'Source', get: (e) => e.source },
      { key: 'hash', label: 'Hash', get: (e) => h('code', { title: e.hash }, e.hash.slice(0, 12)) },
    ], entries, { testid: 'audit', empty: 'No entry matches.' }));
}
