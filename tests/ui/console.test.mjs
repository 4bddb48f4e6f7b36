// End-to-end test of the web console (/ui/): playwright-core drives
// Debian's chromium (headless) against a real keyplaned and keyplane-mock
// that tests/cluster/test_console.py started and set up.
//
// Environment (all set by test_console.py):
//   KP_CONTROL        the node's control URL (http://127.0.0.1:PORT)
//   KP_GATEWAY        its gateway URL
//   KP_MOCK           keyplane-mock's URL
//   KP_ADMIN_TOKEN, KP_FINANCE_TOKEN, KP_APP_TOKEN
//   KP_KEY_A          the secret of key-a (already in pool "default")
//   KP_MODEL          a priced model
//   KP_CHROMIUM       the browser (default: chromium on PATH)
//   KP_SHOTS          where screenshots go (one per page, desktop and narrow)
//
// Each check prints "ok - NAME" or "FAIL - NAME: why" (shared.mjs: run);
// the steps depend on each other, so the first failure stops the run. The last line is
// "N passed, M failed"; the exit code is 0 only when nothing failed.
import { readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';
import {
  ADMIN, ADMIN_PAGES, CONTROL, DESKTOP, KEY_A, MOCK, MODEL, SECRET, TIMEOUT, adminApi, adminJson, assert, chat,
  checkTabOrder, checkUsagePage, env, fp, meteredUsage, mockReset, mockStats, navLinks, open, refusals, run,
  shooter, waitFor, watch,
} from './shared.mjs';

const FINANCE = env('KP_FINANCE_TOKEN');
const shoot = shooter((page, vp) => page.setViewportSize(vp));

const steps = [];
const step = (name, fn) => steps.push([name, fn]);
let browser, admin, finance;

step('the console is served with a strict policy', async () => {
  for (const path of ['/ui/', '/ui/app.js', '/ui/style.css']) {
    const res = await fetch(CONTROL + path);
    assert(res.status === 200, `${path}: ${res.status}`);
    const csp = res.headers.get('content-security-policy') || '';
    assert(/script-src 'self'/.test(csp) && /frame-ancestors 'none'/.test(csp) && !/unsafe-inline/.test(csp), `${path}: CSP ${csp}`);
    assert(res.headers.get('x-content-type-options') === 'nosniff', `${path}: nosniff`);
    assert(res.headers.get('x-frame-options') === 'DENY', `${path}: X-Frame-Options`);
    assert(res.headers.get('etag'), `${path}: ETag`);
  }
  const js = await fetch(CONTROL + '/ui/app.js');
  assert(js.headers.get('content-type').startsWith('text/javascript'), 'app.js Content-Type');
});

step('a wrong token is refused at sign-in', async () => {
  admin = await browser.newPage({ viewport: DESKTOP, acceptDownloads: true });
  watch(admin, 'admin');
  await admin.goto(CONTROL + '/ui/');
  await admin.waitForSelector('#signin:not([hidden])');
  assert(await admin.isHidden('#signout') && await admin.isHidden('#nav'), 'sign-out or the pages offered before signing in');
  await shoot(admin, 'signin');
  refusals.expected = true;
  await admin.fill('#token', 'kp_aaaaaaaaaaaa_' + 'A'.repeat(38));
  await admin.press('#token', 'Enter');
  await admin.waitForSelector('#signin-error:not(:empty)');
  refusals.expected = false;
  assert(await admin.isHidden('#nav'), 'the navigation is shown without a session');
});

step('sign in with the keyboard; the token is not kept by the page', async () => {
  await admin.focus('#token');
  await admin.keyboard.type(ADMIN);
  await admin.keyboard.press('Enter');
  await admin.waitForSelector('#nav:not([hidden]) a[data-page=keys]');
  const links = await navLinks(admin);
  assert(links.join() === ADMIN_PAGES, `admin sees ${links}`);
  const cookies = await admin.context().cookies();
  const c = cookies.find((x) => x.name === 'kp_session');
  assert(c && c.httpOnly && c.sameSite === 'Strict' && c.path === '/', `cookie ${JSON.stringify(c)}`);
  const stored = await admin.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie + document.documentElement.outerHTML);
  assert(!stored.includes(ADMIN), 'the token text is readable by script');
  // keyboard: the first Tab reaches the skip link, then the navigation
  await admin.goto(CONTROL + '/ui/#/keys');
  await admin.reload();
  await admin.waitForSelector('section.page[data-page=keys][aria-busy=false]');
  await checkTabOrder(admin);
});

step('add a key: listed with its fingerprint only', async () => {
  await open(admin, '#/keys', '[data-testid=keys]');
  await admin.click('details.card summary');
  await admin.fill('[data-testid=add-key] [name=id]', 'key-ui');
  await admin.selectOption('[data-testid=add-key] [name=provider]', 'mock');
  await admin.fill('[data-testid=add-key] [name=owner]', 'console test');
  await admin.fill('[data-testid=add-key] [name=tags]', 'ui, e2e');
  await admin.fill('[data-testid=add-key] [name=secret]', SECRET);
  await admin.click('[data-testid=add-key] button[type=submit]');
  await admin.waitForSelector('tr[data-id=key-ui]', { timeout: TIMEOUT });
  const row = await admin.textContent('tr[data-id=key-ui]');
  assert(row.includes(fp(SECRET)), `the row shows no fingerprint ${fp(SECRET)}: ${row}`);
  const html = await admin.content();
  assert(!html.includes(SECRET) && !html.includes(SECRET.slice(-4) + '<'), 'the secret is in the page');
  assert(await admin.inputValue('[data-testid=add-key] [name=secret]') === '', 'the secret stays in its field');
  const key = await adminJson('GET', 'keys/key-ui');
  assert(key.owner === 'console test' && key.tags.join() === 'ui,e2e', `stored ${JSON.stringify(key)}`);
  await shoot(admin, 'keys');
});

step('edit the pool: the new key first', async () => {
  await open(admin, '#/pools', '[data-pool=default]');
  await shoot(admin, 'pools');
  await admin.click('[data-pool=default] button');
  await admin.waitForSelector('[data-testid=pool-editor]');
  await admin.fill('[data-testid=pool-editor] tr.member >> nth=0 >> [name=priority]', '1');
  await admin.click('text=Add member');
  await admin.selectOption('[data-testid=pool-editor] tr.member >> nth=1 >> [name=key]', 'key-ui');
  await admin.fill('[data-testid=pool-editor] tr.member >> nth=1 >> [name=priority]', '0');
  await admin.fill('[data-testid=pool-editor] [name=downgrades]', 'gpt-4o -> ' + MODEL);
  await shoot(admin, 'pool-editor');
  await admin.click('[data-testid=pool-editor] button[type=submit]');
  await admin.waitForSelector('[data-pool=default] >> text=key-ui');
  const p = await adminJson('GET', 'pools/default');
  const m = Object.fromEntries(p.members.map((x) => [x.key, x.priority]));
  assert(m['key-ui'] === 0 && m['key-a'] === 1 && p.downgrades[0].from === 'gpt-4o', `stored ${JSON.stringify(p)}`);
  await waitFor(async () => (await chat()).key === 'key-ui', 'the gateway using key-ui');
  await mockReset();
  for (let i = 0; i < 3; i++) assert((await chat()).status === 200, 'a call failed');
  const s = await mockStats();
  assert(s.keys[fp(SECRET)] === 3, `mock stats ${JSON.stringify(s.keys)}`);
});

step('disable the key (confirmed): the gateway stops using it', async () => {
  await open(admin, '#/keys', 'tr[data-id=key-ui]');
  await admin.click('tr[data-id=key-ui] button:text-is("Disable")');
  await admin.waitForSelector('dialog[open]');
  await shoot(admin, 'keys-confirm');
  await admin.click('dialog[open] button[type=submit]');
  await admin.waitForSelector('tr[data-id=key-ui] button:text-is("Enable")', { timeout: TIMEOUT });
  assert((await adminJson('GET', 'keys/key-ui')).status === 'disabled', 'not disabled');
  // The workers take the change from the next registry view they see.
  await waitFor(async () => (await chat()).key === 'key-a', 'the gateway leaving key-ui');
  await mockReset();
  for (let i = 0; i < 5; i++) {
    const r = await chat();
    assert(r.status === 200 && r.key === 'key-a', `call ${i}: ${JSON.stringify(r)}`);
  }
  const s = await mockStats();
  assert(!s.keys[fp(SECRET)] && s.keys[fp(KEY_A)] === 5, `mock stats ${JSON.stringify(s.keys)}`);
});

step('usage: totals, charts and CSV match the admin API', async () => {
  for (let i = 0; i < 4; i++) assert((await chat()).status === 200, 'a call failed');
  const { api, query } = await meteredUsage();
  await open(admin, '#/usage?range=today&g=minute&by=key', '[data-testid=usage-rows]');
  await checkUsagePage(admin, api);
  await shoot(admin, 'usage');
  // the CSV: exactly the API's CSV for the same query
  const [dl] = await Promise.all([admin.waitForEvent('download'), admin.click('[data-testid=csv]')]);
  const got = readFileSync(await dl.path(), 'utf8');
  const want = await adminApi('GET', 'usage?' + query + '&format=csv');
  assert(got === want, `CSV differs:\n${got}\n---\n${want}`);
  assert(got.trim().split('\r\n').length === api.rows.length + 1, 'CSV rows');
});

step('a key answering 401 raises an alert, shown with its action; acknowledge it', async () => {
  await fetch(MOCK + '/mock/faults', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ key: KEY_A, faults: '401' }) });
  await chat();
  await waitFor(async () => (await adminJson('GET', 'keys/key-a/health')).status === 'invalid', 'key-a invalid');
  await open(admin, '#/alerts', '[data-testid=alerts]');
  await waitFor(async () => {
    await admin.click('text=Refresh');
    await admin.waitForSelector('section.page[aria-busy=false] [data-testid=alerts]');
    return admin.$('tr[data-id="key:key-a:invalid"]');
  }, 'the key_invalid alert on the page');
  const row = await admin.textContent('tr[data-id="key:key-a:invalid"]');
  assert(row.includes('rotate key key-a') && row.includes('critical'), `row: ${row}`);
  await shoot(admin, 'alerts');
  await admin.click('tr[data-id="key:key-a:invalid"] >> text=Acknowledge');
  await waitFor(async () => (await adminJson('GET', 'alerts/key:key-a:invalid')).acked_ms > 0, 'the ack');
  await fetch(MOCK + '/mock/faults', { method: 'DELETE' });
});

step('rotate, then revoke, the key (each confirmed)', async () => {
  const next = SECRET + '-rotated';
  await open(admin, '#/keys', 'tr[data-id=key-ui]');
  await admin.click('tr[data-id=key-ui] button:text-is("Rotate")');
  await admin.waitForSelector('dialog[open] [name=secret]');
  await admin.fill('dialog[open] [name=secret]', next);
  await admin.fill('dialog[open] [name=grace]', '0');
  await admin.click('dialog[open] button[type=submit]');
  await admin.waitForSelector(`tr[data-id=key-ui] >> text=${fp(next)}`, { timeout: TIMEOUT });
  assert(!(await admin.content()).includes(next), 'the new secret is in the page');
  const k = await adminJson('GET', 'keys/key-ui');
  assert(k.secrets.find((s) => s.state === 'primary').fingerprint === fp(next), `stored ${JSON.stringify(k.secrets)}`);
  await admin.click('tr[data-id=key-ui] button:text-is("Revoke")');
  await admin.waitForSelector('dialog[open]');
  const text = await admin.textContent('dialog[open]');
  assert(/final/.test(text), `the confirmation does not say revoking is final: ${text}`);
  await admin.click('dialog[open] button[type=submit]');
  await admin.waitForSelector('tr[data-id=key-ui] td[data-col=status] >> text=revoked', { timeout: TIMEOUT });
  assert(await admin.$$eval('tr[data-id=key-ui] button', (bs) => bs.length) === 0, 'actions offered on a revoked key');
  assert((await adminJson('GET', 'keys/key-ui')).status === 'revoked', 'not revoked');
});

step('audit: verified chain, filtered', async () => {
  await open(admin, '#/audit', '[data-testid=audit]');
  const banner = await admin.textContent('[data-testid=audit-verify]');
  assert(banner.startsWith('Chain verified'), banner);
  await admin.fill('form [name=target]', 'key-ui');
  await admin.click('form >> text=Filter');
  const cells = (col) => admin.$$eval(`[data-testid=audit] td[data-col=${col}]`, (tds) => tds.map((t) => t.textContent));
  let targets = [];
  await waitFor(async () => {
    targets = await cells('target');
    return targets.length >= 2 && targets.every((t) => t === 'key-ui');
  }, 'only key-ui entries after filtering').catch((e) => { throw new Error(`${e.message}: ${targets}`); });
  const actors = await cells('actor');
  const me = (await adminJson('GET', 'whoami')).token_id;
  assert(actors.every((a) => a === me), `the console's writes are attributed to ${actors}, not ${me}`);
  await shoot(admin, 'audit');
});

step('cluster: members and the leader', async () => {
  await open(admin, '#/cluster', '[data-testid=members]');
  const leader = await admin.textContent('[data-testid=leader]');
  const c = await adminJson('GET', 'cluster');
  assert(leader === c.members.find((m) => m.leader).name, `leader ${leader}`);
  const spool = await admin.textContent('[data-testid=members] td[data-col=spool]');
  assert(/of .*waiting/.test(spool), `spool ${spool}`);
  await shoot(admin, 'cluster');
});

step('a finance token sees Usage and Alerts, and cannot reach key actions', async () => {
  const ctx = await browser.newContext({ viewport: DESKTOP });
  finance = await ctx.newPage();
  watch(finance, 'finance');
  await finance.goto(CONTROL + '/ui/');
  await finance.fill('#token', FINANCE);
  await finance.click('#signin-form button');
  await finance.waitForSelector('#nav:not([hidden]) a');
  const links = await navLinks(finance);
  assert(links.join() === 'usage,alerts', `finance sees ${links}`);
  await finance.goto(CONTROL + '/ui/#/keys');
  await finance.waitForSelector('[data-testid=forbidden]');
  assert(await finance.$$eval('button', (bs) => bs.filter((b) => /Disable|Rotate|Revoke/.test(b.textContent)).length) === 0, 'key actions offered');
  await shoot(finance, 'finance-keys');
  // Even by hand, with the session's own CSRF token: 403.
  refusals.expected = true;
  const status = await finance.evaluate(async () => {
    const s = await (await fetch('/admin/v1/session')).json();
    const r = await fetch('/admin/v1/keys/key-a/disable', { method: 'POST', headers: { 'X-CSRF-Token': s.csrf_token } });
    return r.status;
  });
  refusals.expected = false;
  assert(status === 403, `finance disabling a key: ${status}`);
  await open(finance, '#/usage?range=today&by=model', '[data-testid=usage-rows]');
  await shoot(finance, 'finance-usage');
  await ctx.close();
});

step('sign out ends the session', async () => {
  await admin.click('#signout');
  await admin.waitForSelector('#signin:not([hidden])');
  const c = (await admin.context().cookies()).find((x) => x.name === 'kp_session');
  assert(!c, 'the cookie is still there');
});

await run(steps, async () => {
  browser = await chromium.launch({
    executablePath: process.env.KP_CHROMIUM || 'chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  return browser;
}, (b) => b.close());
