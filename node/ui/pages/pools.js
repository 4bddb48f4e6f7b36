// Pools: the keys in each pool with weights and priorities, the strategy,
// the fallback pool, downgrade rules and the budgets on the pool; edited
// with If-Match so that two operators cannot overwrite each other.
import { api, can, get } from '../api.js';
import { h, clear, table, toast, field, badge } from '../dom.js';

const STRATEGIES = ['priority', 'weighted', 'least_inflight', 'lowest_latency'];

function budgetsOf(pool, budgets) {
  return budgets.filter((b) => b.scope_kind === 'pool' && b.scope_target === pool.id)
    .map((b) => h('div', {}, `${b.policy}/${b.budget}: $${Number(b.spent_usd).toFixed(4)} of $${Number(b.limit_usd).toFixed(2)} (${b.kind}, ${b.window})`));
}

function memberRow(keys, m = { key: '', weight: 1, priority: 0 }) {
  const row = h('tr', { class: 'member' },
    h('td', {}, h('select', { name: 'key', 'aria-label': 'Key', required: true },
      keys.map((k) => h('option', { value: k.id, selected: k.id === m.key }, k.id)))),
    h('td', {}, h('input', { name: 'weight', type: 'number', min: 1, max: 1000, value: m.weight ?? 1, 'aria-label': 'Weight', required: true })),
    h('td', {}, h('input', { name: 'priority', type: 'number', min: 0, max: 1000, value: m.priority ?? 0, 'aria-label': 'Priority', required: true })),
    h('td', {}, h('button', { type: 'button', class: 'small secondary', onclick: () => row.remove() }, 'Remove')));
  return row;
}

function editor(view, p, pools, keys) {
  const isNew = !p;
  p = p || { id: '', strategy: 'priority', members: [], downgrades: [] };
  const rows = h('tbody', {}, p.members.map((m) => memberRow(keys, m)));
  const downs = h('textarea', { name: 'downgrades', rows: 3, placeholder: 'gpt-4o -> gpt-4o-mini' },
    (p.downgrades || []).map((d) => `${d.from} -> ${d.to}`).join('\n'));
  const idInput = h('input', { name: 'id', required: true, value: p.id, readonly: !isNew, pattern: '[A-Za-z0-9._:\\-]+' });
  const form = h('form', { class: 'card editor', 'data-testid': 'pool-editor' },
    h('h2', {}, isNew ? 'New pool' : `Edit ${p.id}`),
    h('div', { class: 'grid' },
      field('Pool id', idInput),
      field('Strategy', h('select', { name: 'strategy' }, STRATEGIES.map((s) => h('option', { value: s, selected: s === p.strategy }, s)))),
      field('Fallback pool', h('select', { name: 'fallback' }, h('option', { value: '' }, '(none)'),
        pools.filter((x) => x.id !== p.id).map((x) => h('option', { value: x.id, selected: x.id === p.fallback }, x.id))))),
    h('div', { class: 'members-wrap' }, h('table', { class: 'members' }, h('caption', {}, 'Members'),
      h('thead', {}, h('tr', {}, h('th', {}, 'Key'), h('th', {}, 'Weight'), h('th', {}, 'Priority'), h('th', {}, ''))), rows)),
    h('button', { type: 'button', class: 'small secondary', onclick: () => rows.append(memberRow(keys)) }, 'Add member'),
    field('Downgrades (one "from -> to" a line)', downs),
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: () => render(view) }, 'Cancel'),
      h('button', { type: 'submit' }, 'Save')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(form).entries());
    const members = [...rows.querySelectorAll('tr')].map((tr) => ({
      key: tr.querySelector('[name=key]').value,
      weight: Number(tr.querySelector('[name=weight]').value),
      priority: Number(tr.querySelector('[name=priority]').value),
    }));
    const downgrades = [];
    for (const line of v.downgrades.split('\n').map((l) => l.trim()).filter(Boolean)) {
      const m = line.match(/^(\S+)\s*->\s*(\S+)$/);
      if (!m) { toast(`downgrades: "${line}" is not "from -> to"`, true); return; }
      downgrades.push({ from: m[1], to: m[2] });
    }
    const body = { strategy: v.strategy, members, downgrades };
    if (v.fallback) body.fallback = v.fallback;
    try {
      await api('PUT', `pools/${encodeURIComponent(v.id)}`, body,
        isNew ? { 'If-None-Match': '*' } : { 'If-Match': `"${p.version}"` });
      toast(`${v.id}: saved`);
      await render(view);
    } catch (e) {
      toast(e.message, true);
    }
  });
  clear(view, form);
  form.querySelector('input:not([readonly]), select').focus();
}

export async function render(view, live = () => true) {
  const [pools, keys, budgets] = await Promise.all([
    get('pools?limit=5000'), get('keys?limit=5000'),
    can('read_usage') ? get('budgets').catch(() => ({ items: [] })) : { items: [] },
  ]);
  if (!live()) return;
  const edit = can('operate');
  const cards = pools.items.map((p) => h('article', { class: 'card pool', 'data-pool': p.id },
    h('div', { class: 'page-head' }, h('h2', {}, p.id),
      edit ? h('button', { type: 'button', class: 'small', onclick: () => editor(view, p, pools.items, keys.items) }, `Edit ${p.id}`) : null),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Strategy'), h('dd', {}, p.strategy),
      h('dt', {}, 'Fallback'), h('dd', {}, p.fallback || '—'),
      h('dt', {}, 'Downgrades'), h('dd', {}, (p.downgrades || []).length ? p.downgrades.map((d) => h('div', {}, `${d.from} → ${d.to}`)) : '—'),
      h('dt', {}, 'Budgets'), h('dd', {}, budgetsOf(p, budgets.items).length ? budgetsOf(p, budgets.items) : '—')),
    table([
      { key: 'key', label: 'Key', get: (m) => m.key },
      { key: 'weight', label: 'Weight', get: (m) => String(m.weight), cls: 'num' },
      { key: 'priority', label: 'Priority', get: (m) => String(m.priority), cls: 'num' },
      { key: 'status', label: 'Key status', get: (m) => { const k = keys.items.find((x) => x.id === m.key); return k ? badge(k.status) : null; } },
    ], p.members, { empty: 'No members.' })));
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Pools'),
      edit ? h('button', { type: 'button', onclick: () => editor(view, null, pools.items, keys.items) }, 'New pool') : null),
    cards.length ? cards : h('p', { class: 'empty' }, 'No pools yet.'));
}
