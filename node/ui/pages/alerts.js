// Alerts: open and resolved, what to do about each, and acknowledging one
// (operators and admins).
import { api, can, get } from '../api.js';
import { h, clear, table, toast, badge, when } from '../dom.js';

let state = 'open';

export async function render(view, live = () => true) {
  const data = await get('alerts?state=' + state);
  if (!live()) return;
  const ack = can('operate');
  const cols = [
    { key: 'severity', label: 'Severity', get: (a) => badge(a.severity) },
    { key: 'state', label: 'State', get: (a) => badge(a.state) },
    { key: 'subject', label: 'Subject', get: (a) => h('span', { title: a.id }, a.subject) },
    { key: 'message', label: 'What happened', get: (a) => a.message },
    { key: 'action', label: 'Recommended action', get: (a) => a.action },
    { key: 'started', label: 'Since', get: (a) => when(a.started_ms) },
    { key: 'resolved', label: 'Resolved', get: (a) => when(a.resolved_ms) },
    { key: 'acked', label: 'Acknowledged', get: (a) => (a.acked_ms ? `${when(a.acked_ms)}${a.acked_by ? ' by ' + a.acked_by : ''}` : ack && a.state === 'open'
      ? h('button', { type: 'button', class: 'small', onclick: async () => {
        try { await api('POST', `alerts/${encodeURIComponent(a.id)}/ack`); toast(`${a.id}: acknowledged`); } catch (e) { toast(e.message, true); }
        await render(view);
      } }, 'Acknowledge') : null) },
  ];
  const tabs = h('div', { class: 'tabs', role: 'group', 'aria-label': 'Which alerts' },
    ['open', 'resolved', 'all'].map((s) => h('button', { type: 'button', class: s === state ? 'tab active' : 'tab secondary', 'aria-pressed': String(s === state),
      onclick: () => { state = s; render(view); } }, s)));
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Alerts'),
      h('button', { type: 'button', class: 'secondary', onclick: () => render(view) }, 'Refresh')),
    tabs,
    h('p', { class: 'muted' }, `${data.total} ${state === 'all' ? '' : state + ' '}alert${data.total === 1 ? '' : 's'}`),
    table(cols, data.items, { testid: 'alerts', id: (a) => a.id, empty: `No ${state === 'all' ? '' : state + ' '}alerts.` }));
}
