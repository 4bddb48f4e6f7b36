// The console's shell: sign-in, the pages the role may see, hash routing.
import { api, can, session, setSession } from './api.js';
import { h, clear, toast } from './dom.js';
import * as keys from './pages/keys.js';
import * as pools from './pages/pools.js';
import * as usage from './pages/usage.js';
import * as alerts from './pages/alerts.js';
import * as audit from './pages/audit.js';
import * as cluster from './pages/cluster.js';

// Each page and the permission that shows it.
const PAGES = [
  { id: 'keys', title: 'Keys', perm: 'read_registry', mod: keys },
  { id: 'pools', title: 'Pools', perm: 'read_registry', mod: pools },
  { id: 'usage', title: 'Usage', perm: 'read_usage', mod: usage },
  { id: 'alerts', title: 'Alerts', perm: 'read_alerts', mod: alerts },
  { id: 'audit', title: 'Audit', perm: 'read_audit', mod: audit },
  { id: 'cluster', title: 'Cluster', perm: 'read_registry', mod: cluster },
];

const $ = (id) => document.getElementById(id);
let renderSeq = 0;

function allowed() {
  return PAGES.filter((p) => can(p.perm));
}

function showSignin(message) {
  setSession(null);
  $('nav').hidden = true;
  $('who').hidden = true;
  $('signout').hidden = true;
  clear($('page'));
  $('signin').hidden = false;
  $('signin-error').textContent = message || '';
  document.title = 'Sign in · keyplane';
  $('token').focus();
}

function buildNav() {
  const nav = $('nav');
  clear(nav, h('ul', {}, allowed().map((p) =>
    h('li', {}, h('a', { href: '#/' + p.id, 'data-page': p.id }, p.title)))));
  nav.hidden = false;
  $('who').textContent = `${session.tokenId} · ${session.role}`;
  $('who').hidden = false;
  $('signout').hidden = false;
  $('signin').hidden = true;
}

async function route() {
  if (!session.role) return;
  const pages = allowed();
  const want = (location.hash.match(/^#\/([a-z]+)/) || [])[1];
  const page = PAGES.find((p) => p.id === want);
  const root = $('page');
  document.querySelectorAll('#nav a').forEach((a) => {
    if (a.dataset.page === want) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  });
  if (!page) {
    if (pages.length === 0) {
      clear(root, h('section', { class: 'card' }, h('h1', {}, 'Nothing to show'),
        h('p', {}, `Role ${session.role} grants no page of the console.`)));
      return;
    }
    location.replace('#/' + pages[0].id);
    return;
  }
  if (!can(page.perm)) {
    clear(root, h('section', { class: 'card', 'data-testid': 'forbidden' }, h('h1', {}, page.title),
      h('p', {}, `Role ${session.role} may not see ${page.title} (it needs ${page.perm}).`)));
    document.title = `${page.title} · keyplane`;
    return;
  }
  document.title = `${page.title} · keyplane`;
  const seq = ++renderSeq;
  const view = h('section', { class: 'page', 'data-page': page.id, 'aria-busy': 'true' });
  clear(root, view);
  try {
    await page.mod.render(view, () => seq === renderSeq);
  } catch (e) {
    if (seq === renderSeq) view.append(h('p', { class: 'error', role: 'alert' }, e.message));
  } finally {
    view.setAttribute('aria-busy', 'false');
  }
}

async function start() {
  $('signin-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const input = $('token');
    const token = input.value.trim();
    input.value = '';
    try {
      const s = await api('POST', '/admin/v1/session', undefined, { Authorization: 'Bearer ' + token });
      setSession(s);
      buildNav();
      await route();
    } catch (e) {
      showSignin(e.message);
    }
  });
  $('signout').addEventListener('click', async () => {
    try { await api('DELETE', '/admin/v1/session'); } catch { /* signed out either way */ }
    location.hash = '';
    showSignin('Signed out.');
  });
  window.addEventListener('hashchange', route);
  window.addEventListener('kp-signed-out', () => showSignin('Your session ended: sign in again.'));
  try {
    const s = await api('GET', '/admin/v1/session');
    if (!s.token_id) {
      showSignin('');
      return;
    }
    setSession(s);
    buildNav();
    await route();
  } catch (e) {
    showSignin(e.status === 401 ? '' : e.message);
  }
}

export function refresh() {
  return route();
}

window.addEventListener('unhandledrejection', (ev) => {
  ev.preventDefault();
  toast(ev.reason && ev.reason.message ? ev.reason.message : String(ev.reason), true);
});

start();
