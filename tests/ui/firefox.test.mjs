// End-to-end test of the web console (/ui/) in Firefox: puppeteer-core
// drives Debian's firefox-esr (headless) over WebDriver BiDi, which Firefox
// speaks natively (Playwright needs its own patched Firefox build), against
// a real keyplaned and keyplane-mock that tests/cluster/test_console_firefox.py
// started and set up. The essential flow of console.test.mjs (which runs in
// chromium), and the helpers it shares with it (shared.mjs):
// signing in by keyboard, every page an admin sees, adding and disabling a
// key, usage totals equal to the admin API's, signing out; each page also
// at 390 px without sideways scrolling; no console error on any page.
//
// Environment (all set by test_console_firefox.py):
//   KP_CONTROL, KP_GATEWAY, KP_MOCK, KP_ADMIN_TOKEN, KP_APP_TOKEN, KP_KEY_A,
//   KP_MODEL, KP_SHOTS  as for console.test.mjs
//   KP_FIREFOX          the browser (default: firefox-esr on PATH)
// Screenshots are KP_SHOTS/firefox-PAGE-{desktop,narrow}.png.
import puppeteer from 'puppeteer-core';
import {
  ADMIN, ADMIN_PAGES, CONTROL, DESKTOP, KEY_A, SECRET, TIMEOUT, adminApi, adminJson, assert, chat,
  checkTabOrder, checkUsagePage, fp, meteredUsage, navLinks, open, run, shooter, watch,
} from './shared.mjs';

const shoot = shooter((page, vp) => page.setViewport(vp), 'firefox-');
const visible = { visible: true, timeout: TIMEOUT };
const focused = (page) => page.evaluate(() => {
  const e = document.activeElement;
  return e && e !== document.body ? (e.id || e.className || e.tagName) : '';
});
const session = async (page) => (await page.cookies()).find((c) => c.name === 'kp_session');

const steps = [];
const step = (name, fn) => steps.push([name, fn]);
let admin;

step('sign in with the keyboard: Tab to the token field, type it, Enter', async (browser) => {
  admin = await browser.newPage();
  watch(admin, 'admin');
  await admin.setViewport(DESKTOP);
  await admin.goto(CONTROL + '/ui/');
  await admin.waitForSelector('#signin:not([hidden]) #token', visible);
  assert(await admin.$eval('#nav', (n) => n.hidden), 'the pages are offered before signing in');
  await shoot(admin, 'signin');
  // The page focuses the field itself; start from the top of the document
  // instead (Firefox starts sequential navigation where the selection is).
  await admin.evaluate(() => {
    document.activeElement.blur();
    window.getSelection().collapse(document.body, 0);
  });
  const path = [];
  while (path.at(-1) !== 'token') {
    assert(path.length < 4, `Tab does not reach the token field: ${path.join(' -> ')}`);
    await admin.keyboard.press('Tab');
    path.push(await focused(admin));
  }
  assert(path[0] === 'skip', `the first Tab reaches ${path[0]}, not the skip link`);
  await admin.keyboard.type(ADMIN);
  await admin.keyboard.press('Enter');
  await admin.waitForSelector('#nav:not([hidden]) a[data-page=keys]', visible);
  const links = await navLinks(admin);
  assert(links.join() === ADMIN_PAGES, `admin sees ${links}`);
  const c = await session(admin);
  assert(c && c.httpOnly && c.sameSite === 'Strict' && c.path === '/', `cookie ${JSON.stringify(c)}`);
  const stored = await admin.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie + document.documentElement.outerHTML);
  assert(!stored.includes(ADMIN), 'the token text is readable by script');
  // A fresh load with the session: Tab reaches the skip link, then the pages.
  await admin.goto(CONTROL + '/ui/#/keys');
  await admin.reload();
  await admin.waitForSelector('section.page[data-page=keys][aria-busy=false]', visible);
  await checkTabOrder(admin);
});

step('keys: the seeded key with its fingerprint, not its secret', async () => {
  await open(admin, '#/keys', '[data-testid=keys] tr[data-id=key-a]');
  const row = await admin.$eval('tr[data-id=key-a]', (e) => e.textContent);
  assert(row.includes(fp(KEY_A)) && row.includes('mock'), `key-a's row: ${row}`);
  assert(!(await admin.content()).includes(KEY_A), 'the secret is in the page');
  await shoot(admin, 'keys');
});

step('add a key: listed with its fingerprint only', async () => {
  await admin.click('details.card summary');
  await admin.waitForSelector('[data-testid=add-key] [name=id]', visible);
  await admin.type('[data-testid=add-key] [name=id]', 'key-ff');
  await admin.select('[data-testid=add-key] [name=provider]', 'mock');
  await admin.type('[data-testid=add-key] [name=owner]', 'firefox test');
  await admin.type('[data-testid=add-key] [name=tags]', 'ui, firefox');
  await admin.type('[data-testid=add-key] [name=secret]', SECRET);
  await admin.click('[data-testid=add-key] button[type=submit]');
  await admin.waitForSelector('tr[data-id=key-ff]', visible);
  const row = await admin.$eval('tr[data-id=key-ff]', (e) => e.textContent);
  assert(row.includes(fp(SECRET)), `the row shows no fingerprint ${fp(SECRET)}: ${row}`);
  assert(!(await admin.content()).includes(SECRET), 'the secret is in the page');
  assert(await admin.$eval('[data-testid=add-key] [name=secret]', (e) => e.value) === '', 'the secret stays in its field');
  const key = await adminJson('GET', 'keys/key-ff');
  assert(key.owner === 'firefox test' && key.tags.join() === 'ui,firefox', `stored ${JSON.stringify(key)}`);
});

step('disable the key (confirmed in a dialog)', async () => {
  await admin.click('tr[data-id=key-ff] button::-p-text(Disable)');
  await admin.waitForSelector('dialog[open] button[type=submit]', visible);
  await shoot(admin, 'keys-confirm');
  await admin.click('dialog[open] button[type=submit]');
  await admin.waitForSelector('tr[data-id=key-ff] button::-p-text(Enable)', visible);
  const status = await admin.$eval('tr[data-id=key-ff] td[data-col=status]', (e) => e.textContent);
  assert(status.includes('disabled'), `status ${status}`);
  assert((await adminJson('GET', 'keys/key-ff')).status === 'disabled', 'not disabled');
});

step('pools: the default pool, its member, the editor', async () => {
  await open(admin, '#/pools', '[data-pool=default]');
  const text = await admin.$eval('[data-pool=default]', (e) => e.textContent);
  assert(text.includes('key-a'), `pool default: ${text}`);
  await shoot(admin, 'pools');
  await admin.click('[data-pool=default] button');
  await admin.waitForSelector('[data-testid=pool-editor] tr.member [name=key]', visible);
  assert(await admin.$eval('[data-testid=pool-editor] tr.member [name=key]', (e) => e.value) === 'key-a', 'the editor does not show key-a');
  await shoot(admin, 'pool-editor');
  await admin.click('[data-testid=pool-editor] button::-p-text(Cancel)');
  await admin.waitForSelector('section.page[data-page=pools] [data-pool=default]', visible);
});

step('usage: totals, charts and the CSV match the admin API', async () => {
  for (let i = 0; i < 3; i++) assert((await chat()).status === 200, 'a call failed');
  const { api, query } = await meteredUsage();
  assert(api.totals.requests >= 3, `usage ${JSON.stringify(api.totals)}`);
  await open(admin, '#/usage?range=today&g=minute&by=key', '[data-testid=usage-rows]');
  await checkUsagePage(admin, api);
  // The CSV link, fetched by the page with its session: the API's CSV.
  const got = await admin.$eval('[data-testid=csv]', async (a) => (await fetch(a.href)).text());
  const want = await adminApi('GET', 'usage?' + query + '&format=csv');
  assert(got === want, `CSV differs:\n${got}\n---\n${want}`);
  await shoot(admin, 'usage');
});

step('alerts: the table of alerts', async () => {
  await open(admin, '#/alerts', '[data-testid=alerts]');
  await shoot(admin, 'alerts');
});

step('audit: verified chain, the console\'s changes listed', async () => {
  await open(admin, '#/audit', '[data-testid=audit]');
  const banner = await admin.$eval('[data-testid=audit-verify]', (e) => e.textContent);
  assert(banner.startsWith('Chain verified'), banner);
  const targets = await admin.$$eval('[data-testid=audit] td[data-col=target]', (tds) => tds.map((t) => t.textContent));
  assert(targets.filter((t) => t === 'key-ff').length >= 2, `no add and disable of key-ff in ${targets}`);
  await shoot(admin, 'audit');
});

step('cluster: members and the leader', async () => {
  await open(admin, '#/cluster', '[data-testid=members]');
  const leader = await admin.$eval('[data-testid=leader]', (e) => e.textContent);
  const c = await adminJson('GET', 'cluster');
  assert(leader === c.members.find((m) => m.leader).name, `leader ${leader}`);
  await shoot(admin, 'cluster');
});

step('sign out ends the session', async () => {
  await admin.click('#signout');
  await admin.waitForSelector('#signin:not([hidden])', visible);
  assert(!(await session(admin)), 'the cookie is still there');
  const s = await admin.evaluate(async () => (await fetch('/admin/v1/session')).json());
  assert(s.session === false, `after signing out: ${JSON.stringify(s)}`);
});

await run(steps, () => puppeteer.launch({
  browser: 'firefox',
  protocol: 'webDriverBiDi',
  executablePath: process.env.KP_FIREFOX || 'firefox-esr',
  headless: true,
  timeout: TIMEOUT,
}), (b) => b.close());
