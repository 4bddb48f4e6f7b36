// Cluster: members, the leader, roles, replication lag, meter lag and
// spool sizes, as the node asked sees them (it polls every member).
import { get } from '../api.js';
import { h, clear, table, badge, num } from '../dom.js';

function bytes(n) {
  if (n === undefined || n === null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0, v = n;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${u[i]}`;
}

export async function render(view, live = () => true) {
  const [c, members] = await Promise.all([get('cluster'), get('members?limit=5000')]);
  if (!live()) return;
  // Node ids are 64-bit: JSON numbers lose digits in script, so match by name.
  const meter = new Map(members.items.map((m) => [m.id, m.meter]));
  const leader = c.members.find((m) => m.leader);
  const top = leader && leader.commit_index !== undefined ? leader.commit_index : c.commit_index;
  const cols = [
    { key: 'name', label: 'Member', get: (m) => h('strong', {}, m.name || '(not in the registry)') },
    { key: 'leader', label: 'Leader', get: (m) => (m.leader ? badge('leader') : '') },
    { key: 'role', label: 'Raft role', get: (m) => m.role },
    { key: 'meter', label: 'Meter', get: (m) => (meter.get(m.name) ? 'yes' : 'no') },
    { key: 'state', label: 'State', get: (m) => (m.reachable ? m.state : badge('unreachable')) },
    { key: 'address', label: 'Raft / control', get: (m) => `${m.address} / ${m.control_address || '—'}` },
    { key: 'applied', label: 'Applied index', cls: 'num', get: (m) => num(m.applied_index) },
    { key: 'lag', label: 'Replication lag', cls: 'num', get: (m) => (m.applied_index === undefined ? null : `${num(Math.max(0, top - m.applied_index))} entries`) },
    { key: 'meter_lag', label: 'Meter lag', cls: 'num', get: (m) => (m.meter_lag_ms === undefined ? null : `${(m.meter_lag_ms / 1000).toFixed(1)} s`) },
    { key: 'spool', label: 'Spool', cls: 'num', get: (m) => (m.spool ? `${bytes(m.spool.bytes)} of ${bytes(m.spool.cap_bytes)}, ${m.spool.segments_waiting} waiting` : null) },
    { key: 'contact', label: 'Answered in', cls: 'num', get: (m) => (m.reachable ? `${m.last_contact_ms} ms` : m.error) },
  ];
  clear(view,
    h('div', { class: 'page-head' }, h('h1', {}, 'Cluster'),
      h('button', { type: 'button', class: 'secondary', onclick: () => render(view) }, 'Refresh')),
    h('dl', { class: 'facts card' },
      h('dt', {}, 'Cluster'), h('dd', {}, h('code', {}, c.cluster_id || '—')),
      h('dt', {}, 'Leader'), h('dd', { 'data-testid': 'leader' }, leader ? (leader.name || '(not in the registry)') : 'none (election in progress?)'),
      h('dt', {}, 'Term'), h('dd', {}, String(c.term)),
      h('dt', {}, 'Commit index'), h('dd', {}, num(c.commit_index)),
      h('dt', {}, 'Asked'), h('dd', {}, `this node, a ${c.state}`)),
    table(cols, c.members, { testid: 'members', id: (m) => m.name, empty: 'No members.' }));
}
