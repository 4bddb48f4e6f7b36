// The control API from the page: the session cookie authenticates (the
// browser sends it; script never sees it), every change carries the
// session's CSRF token. Errors become exceptions with the API's message.

export const session = { csrf: null, role: null, tokenId: null, perms: new Set() };

// Behind a load balancer the read after a change may reach a follower that
// has not applied it yet: for a while after each change, registry reads ask
// for ?consistent=true (answered by the leader after a barrier). Usage comes
// from the meters, not the registry, and sessions are no change.
const CONSISTENT_FOR_MS = 10000;
let consistentUntil = 0;
const registry = (path) => !/^(\/admin\/v1\/)?(usage|session)\b/.test(path);

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export async function api(method, path, body, headers = {}) {
  const h = { Accept: 'application/json', ...headers };
  const read = method === 'GET' || method === 'HEAD';
  if (read && Date.now() < consistentUntil && registry(path)) {
    path += (path.includes('?') ? '&' : '?') + 'consistent=true';
  }
  if (body !== undefined) h['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && session.csrf) h['X-CSRF-Token'] = session.csrf;
  const res = await fetch(path.startsWith('/') ? path : '/admin/v1/' + path, {
    method, headers: h, body: body === undefined ? undefined : JSON.stringify(body),
    credentials: 'same-origin', cache: 'no-store',
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const e = data && data.error ? data.error : {};
    if (res.status === 401 && path !== '/admin/v1/session') window.dispatchEvent(new Event('kp-signed-out'));
    throw new ApiError(res.status, e.code || 'error', e.message || `${method} ${path}: HTTP ${res.status}`);
  }
  if (!read && registry(path)) consistentUntil = Date.now() + CONSISTENT_FOR_MS;
  if (data && res.headers.get('ETag')) Object.defineProperty(data, '_etag', { value: res.headers.get('ETag') });
  return data;
}

export const get = (p) => api('GET', p);

export function can(perm) {
  return session.perms.has(perm);
}

export function setSession(s) {
  session.csrf = s ? s.csrf_token || null : null;
  session.role = s ? s.role : null;
  session.tokenId = s ? s.token_id : null;
  session.perms = new Set(s ? s.permissions : []);
}

// Run @fn over @items, at most @n at once.
export async function pool(items, n, fn) {
  const out = new Array(items.length);
  let i = 0;
  const work = async () => { while (i < items.length) { const k = i++; out[k] = await fn(items[k]); } };
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, work));
  return out;
}
