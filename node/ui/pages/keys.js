// Keys: what each provider key is and how it is doing; add, disable,
// enable, rotate and revoke (each confirmed). A secret is typed once and
// sent; the page shows only its fingerprint afterwards.
import { api, can, get, pool } from '../api.js';
import { h, clear, table, dialog, confirm, toast, field, badge, when } from '../dom.js';

function primary(k) {
  return (k.secrets || []).find((s) => s.state === 'primary') || (k.secrets || [])[0];
}

function budgetUsed(k, budgets) {
  const mine = budgets.filter((b) => b.scope_kind === 'key' && b.scope_target === k.id);
  if (mine.length === 0) return null;
  return h('span', {}, mine.map((b) => {
    const pct = b.limit_nanousd > 0 ? Math.round((100 * b.spent_nanousd) / b.limit_nanousd) : 0;
    return h('div', { title: `${b.policy}/${b.budget}` },
      `$${Number(b.spent_usd).toFixed(4)} of $${Number(b.limit_usd).toFixed(2)} (${pct}%, ${b.window})`);
  }));
}

async function act(view, k, what) {
  const path = `keys/${encodeURIComponent(k.id)}/${what}`;
  const labels = {
    disable: ['Disable key', `Disable ${k.id}? Routers stop using it at once.`, 'Disable'],
    enable: ['Enable key', `Enable ${k.id}? Routers may use it again.`, 'Enable'],
    revoke: ['Revoke key', `Revoke ${k.id}? This is final: its secrets are erased and it can never be used again.`, 'Revoke'],
  };
  const [title, text, label] = labels[what];
  if (!(await confirm(title, text, label, what !== 'enable'))) return;
  try {
    await api('POST', path);
    toast(`${k.id}: ${what}d`);
  } catch (e) {
    toast(e.message, true);
  }
  await render(view);
}

async function rotate(view, k) {
  const v = await dialog(`Rotate ${k.id}`, [
    h('p', {}, 'The new secret becomes primary; the old one stays usable for the grace period.'),
    field('New secret', h('input', { name: 'secret', type: 'password', required: true, autocomplete: 'off', spellcheck: 'false' })),
    field('Grace (seconds)', h('input', { name: 'grace', type: 'number', min: 0, value: 3600, required: true })),
  ], 'Rotate', true);
  if (!v) return;
  try {
    await api('POST', `keys/${encodeURIComponent(k.id)}/secret`, { secret: v.secret, grace_seconds: Number(v.grace) });
    toast(`${k.id}: rotated`);
  } catch (e) {
    toast(e.message, true);
  }
  await render(view);
}

function addForm(view, providers) {
  const secret = h('input', { name: 'secret', type: 'password', required: true, autocomplete: 'off', spellcheck: 'false' });
  const form = h('form', { class: 'inline-form', 'data-testid': 'add-key', 'aria-label': 'Add a key' },
    field('Key id', h('input', { name: 'id', required: true, pattern: '[A-Za-z0-9._:\\-]+', placeholder: 'openai-prod-1' })),
    field('Provider', h('select', { name: 'provider', required: true }, providers.map((p) => h('option', { value: p.id }, p.id)))),
    field('Owner', h('input', { name: 'owner', placeholder: 'team or person' })),
    field('Tags', h('input', { name: 'tags', placeholder: 'prod, eu' })),
    field('Secret', secret, 'Sent once; never shown again.'),
    h('button', { type: 'submit' }, 'Add key'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = Object.fromEntries(new FormData(form).entries());
    secret.value = '';
    const body = { provider: v.provider, secret: v.secret };
    if (v.owner) body.owner = v.owner;
    const tags = (v.tags || '').split(',').map((t) => t.trim()).filter(Boolean);
    if (tags.length) body.tags = tags;
    try {
      await api('PUT', `keys/${encodeURIComponent(v.id)}`, body, { 'If-None-Match': '*' });
      toast(`${v.id}: added`);
      await render(view);
    } catch (e) {
      toast(e.message, true);
    }
  });
  return h('details', { class: 'card' }, h('summary', {}, 'Add a key'), form);
}

export async function render(view, live = () => true) {
  const [keys, providers, budgets] = await Promise.all([
    get('keys?limit=5000'),
    get('providers?limit=5000'),
    can('read_usage') ? get('budgets').catch(() => ({ items: [] })) : { items: [] },
  ]);
  const healths = await pool(keys.items, 6, (k) => get(`keys/${encodeURIComponent(k.id)}/health`).catch(() => null));
  if (!live()) return;
  const health = new Map(keys.items.map((k, i) => [k.id, healths[i] || {}]));
  const operate = can('operate'), change = can('change');
  const cols = [
    { key: 'id', label: 'Key', get: (k) => h('strong', {}, k.id) },
    { key: 'provider', label: 'Provider', get: (k) => k.provider },
    { key: 'tags', label: 'Tags', get: (k) => (k.tags || []).map((t) => badge(t, 'tag')) },
    { key: 'owner', label: 'Owner', get: (k) => k.owner },
    { key: 'status', label: 'Status', get: (k) => badge(k.status) },
    { key: 'health', label: 'Health', get: (k) => badge(health.get(k.id).status || 'healthy') },
    { key: 'last_error', label: 'Last error', get: (k) => {
      const x = health.get(k.id);
      return x.last_error_class ? `${x.last_error_class} (${when(x.last_change_ms)})` : null;
    } },
    { key: 'budget', label: 'Budget used', get: (k) => budgetUsed(k, budgets.items) },
    { key: 'fingerprint', label: 'Fingerprint', get: (k) => { const p = primary(k); return p ? h('code', {}, p.fingerprint) : null; } },
  ];
  if (operate || change) {
    cols.push({ key: 'actions', label: 'Actions', cls: 'actions', get: (k) => {
      if (k.status === 'revoked') return null;
      const b = [];
      if (operate && k.status === 'active') b.push(h('button', { type: 'button', class: 'small', onclick: () => act(view, k, 'disable') }, 'Disable'));
      if (operate && k.status === 'disabled') b.push(h('button', { type: 'button', class: 'small', onclick: () => act(view, k, 'enable') }, 'Enable'));
      if (operate) b.push(h('button', { type: 'button', class: 'small', onclick: () => rotate(view, k) }, 'Rotate'));
      if (change) b.push(h('button', { type: 'button', class: 'small danger', onclick: () => act(view, k, 'revoke') }, 'Revoke'));
      return b;
    } });
  }
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Keys'),
      h('button', { type: 'button', class: 'secondary', onclick: () => render(view) }, 'Refresh')),
    change && providers.items.length ? addForm(view, providers.items) : null,
    table(cols, keys.items, { testid: 'keys', id: (k) => k.id, empty: 'No keys yet.' }));
}
