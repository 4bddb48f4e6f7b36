// What the console's browser tests share (console.test.mjs drives chromium
// with playwright-core, firefox.test.mjs drives firefox-esr with
// puppeteer-core over WebDriver BiDi): the environment that the cluster
// test sets, the admin API, gateway and mock helpers, the watch for console
// errors, screenshots with the narrow-width overflow check, opening a page,
// the usage page's checks, and the step runner.
//
// Only what both drivers spell the same is used on a page here: goto,
// waitForSelector (a CSS selector), $eval/$$eval, evaluate, keyboard.press,
// screenshot({path, fullPage}) and the 'console' and 'pageerror' events.
// Resizing differs (setViewportSize / setViewport): the caller passes it.
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

export const env = (k) => {
  if (!process.env[k]) throw new Error(`${k} is not set (run this through tests/cluster/test_console*.py)`);
  return process.env[k];
};
export const CONTROL = env('KP_CONTROL');
export const GATEWAY = env('KP_GATEWAY');
export const MOCK = env('KP_MOCK');
export const ADMIN = env('KP_ADMIN_TOKEN');
export const APP = env('KP_APP_TOKEN');
export const KEY_A = env('KP_KEY_A');
export const MODEL = env('KP_MODEL');
export const SHOTS = env('KP_SHOTS');
export const fp = (s) => 'fp_' + createHash('sha256').update(s).digest('hex').slice(0, 12);
// A secret of this run, never to appear in a page.
export const SECRET = 'sk-console-ui-' + createHash('sha256').update(String(process.pid)).digest('hex').slice(0, 16);

export const DESKTOP = { width: 1366, height: 900 };
export const NARROW = { width: 390, height: 844 };
export const TIMEOUT = 30000 * Number(process.env.KEYPLANE_TIMEOUT_SCALE || 1);

export function assert(cond, msg) { if (!cond) throw new Error(msg); }

export async function waitFor(fn, what, timeout = TIMEOUT) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? ': ' + last.message : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function adminApi(method, path, body) {
  const res = await fetch(CONTROL + '/admin/v1/' + path, {
    method, headers: { Authorization: 'Bearer ' + ADMIN, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text;
}
export const adminJson = async (method, path, body) => JSON.parse(await adminApi(method, path, body));
export const mockStats = async () => (await fetch(MOCK + '/mock/stats')).json();
export const mockReset = () => fetch(MOCK + '/mock/reset', { method: 'POST' });

export async function chat() {
  const res = await fetch(GATEWAY + '/v1/chat/completions', {
    method: 'POST', headers: { Authorization: 'Bearer ' + APP, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hello from the console test' }] }),
  });
  await res.arrayBuffer();
  return { status: res.status, key: res.headers.get('x-keyplane-key') };
}

// Console errors and uncaught exceptions of every page. While
// refusals.expected is set, the browser's own note of a 401 or 403 answer
// (chromium logs one as an error) is not a problem.
export const problems = [];
export const refusals = { expected: false };
export function watch(page, label) {
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (refusals.expected && /status of 40[13]/.test(m.text())) return;
    problems.push(`${label} console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${label} page error: ${e.message || e}`));
}

// How much wider than the window the page is (0: no horizontal scrolling).
export const overflow = (page) => page.evaluate(() => {
  const d = document.documentElement;
  return Math.max(d.scrollWidth, document.body.scrollWidth) - d.clientWidth;
});

// A function that saves a screenshot of the page as it is, desktop and
// narrow (SHOTS/PREFIXNAME-desktop.png, -narrow.png), after checking that
// at the narrow width the page does not scroll sideways. resize(page,
// viewport) is the driver's.
export function shooter(resize, prefix = '') {
  return async function shoot(page, name) {
    for (const [size, vp] of [['desktop', DESKTOP], ['narrow', NARROW]]) {
      await resize(page, vp);
      if (size === 'narrow') {
        const over = await overflow(page);
        assert(over <= 0, `${name} at ${vp.width} px is ${over} px wider than the window`);
      }
      await page.screenshot({ path: join(SHOTS, `${prefix}${name}-${size}.png`), fullPage: true });
    }
    await resize(page, DESKTOP);
  };
}

// Go to a page of the console (a same-document navigation when only the
// hash changes) and wait until that page has rendered.
export async function open(page, hash, ready) {
  const id = hash.match(/^#\/(\w+)/)[1];
  await page.goto(`${CONTROL}/ui/${hash}`);
  await page.waitForSelector(`section.page[data-page=${id}][aria-busy=false]${ready ? ' ' + ready : ''}`, { timeout: TIMEOUT });
}

// The links of the navigation, by page id.
export const navLinks = (page) => page.$$eval('#nav a', (as) => as.map((a) => a.dataset.page));
export const ADMIN_PAGES = 'keys,pools,usage,alerts,audit,cluster';

// On a freshly loaded page the first Tab reaches the skip link, the next
// one the navigation.
export async function checkTabOrder(page) {
  await page.keyboard.press('Tab');
  assert(await page.evaluate(() => document.activeElement.classList.contains('skip')), 'Tab does not reach the skip link');
  await page.keyboard.press('Tab');
  assert(await page.evaluate(() => document.activeElement.closest('nav') !== null), 'Tab does not reach the navigation');
}

// Today's usage by key per minute from the admin API, once the meter has
// counted every call the gateway answered: { api, query }.
export async function meteredUsage() {
  const day = new Date();
  const from = Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate());
  const iso = (ms) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
  const query = new URLSearchParams({ from: iso(from), to: iso(from + 86400e3), granularity: 'minute', group_by: 'key' }).toString();
  const calls = (await fetch(CONTROL + '/admin/v1/usage/recent?limit=10000', { headers: { Authorization: 'Bearer ' + ADMIN } }).then((r) => r.json())).events.length;
  const api = await waitFor(async () => {
    const u = await adminJson('GET', 'usage?' + query);
    return u.totals.requests >= calls ? u : null;
  }, `the meter counting all ${calls} calls`, TIMEOUT * 2);
  return { api, query };
}

// The usage page (#/usage?range=today&g=minute&by=key, rendered) shows the
// API's totals, chart points and rows.
export async function checkUsagePage(page, api) {
  const text = async (id) => (await page.$eval(`[data-testid=${id}]`, (e) => e.textContent)).trim();
  const attr = (sel, name) => page.$eval(sel, (e, n) => e.getAttribute(n), name);
  assert(await text('total-requests') === api.totals.requests.toLocaleString('en-US'), `requests ${await text('total-requests')} vs ${api.totals.requests}`);
  assert(await text('total-cost') === '$' + api.totals.cost_usd, `cost ${await text('total-cost')} vs ${api.totals.cost_usd}`);
  assert(await text('total-tokens-in') === api.totals.tokens_in.toLocaleString('en-US'), 'tokens in');
  assert(await text('total-tokens-out') === api.totals.tokens_out.toLocaleString('en-US'), 'tokens out');
  const total = await attr('[data-testid=chart-cumulative]', 'data-total-cost');
  assert(total === api.totals.cost_usd, `chart total ${total}`);
  const buckets = new Set(api.rows.map((r) => r.start)).size;
  const pts = await attr('[data-testid=chart-cumulative] path[data-series="cost to date"]', 'data-points');
  assert(Number(pts) === buckets, `chart points ${pts} vs ${buckets} buckets`);
  const keysCharted = await page.$$eval('[data-testid=chart-cost] path[data-series]', (ps) => ps.map((p) => p.dataset.series).sort());
  const keysApi = [...new Set(api.rows.map((r) => r.key))].sort();
  assert(keysCharted.join() === keysApi.join(), `charted ${keysCharted} vs ${keysApi}`);
  const projected = await text('projected');
  assert(/^\$/.test(projected), `projection ${projected}`);
  const rows = await page.$$eval('[data-testid=usage-rows] tbody tr', (trs) => trs.length);
  assert(rows === api.rows.length, `table rows ${rows} vs ${api.rows.length}`);
}

// Steps run in order; each prints "ok - NAME" or "FAIL - NAME: why". They
// depend on each other, so the first failure stops the run. The last line
// is "N passed, M failed"; the exit code is 0 only when nothing failed.
// The last step checks that no page logged an error.
export async function run(steps, launch, close) {
  let passed = 0;
  let failed = 0;
  const all = [...steps, ['no console errors on any page', async () => {
    assert(problems.length === 0, problems.join('\n'));
  }]];
  mkdirSync(SHOTS, { recursive: true });
  console.log(`screenshots: ${SHOTS}`);
  const browser = await launch();
  try {
    for (const [name, fn] of all) {
      try {
        await fn(browser);
        passed++;
        console.log(`ok - ${name}`);
      } catch (e) {
        failed++;
        console.log(`FAIL - ${name}: ${e.stack || e.message}`);
        break;
      }
    }
  } finally {
    await close(browser);
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}
