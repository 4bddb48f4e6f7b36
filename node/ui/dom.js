// Small DOM helpers: elements built in code (no innerHTML with data), a
// confirmation dialog, a toast, and the formats every page uses.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// A table from column definitions {label, get(row) -> text or Node, cls}.
export function table(columns, rows, opts = {}) {
  const head = h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.cls }, c.label)));
  const body = rows.map((r) => h('tr', { 'data-id': opts.id ? opts.id(r) : undefined },
    columns.map((c) => { const v = c.get(r); return h('td', { class: c.cls, 'data-col': c.key, 'data-label': c.label }, v === undefined || v === null || v === '' ? '—' : v); })));
  if (rows.length === 0) {
    body.push(h('tr', {}, h('td', { colspan: columns.length, class: 'empty' }, opts.empty || 'Nothing to show.')));
  }
  return h('div', { class: 'table-wrap' },
    h('table', { 'data-testid': opts.testid }, opts.caption ? h('caption', {}, opts.caption) : null,
      h('thead', {}, head), h('tbody', {}, body), opts.foot ? h('tfoot', {}, opts.foot) : null));
}

// A modal dialog; resolves with the form's values, or null when cancelled.
export function dialog(title, body, confirmLabel = 'Confirm', danger = false) {
  return new Promise((resolve) => {
    const form = h('form', { method: 'dialog', class: 'dialog-form' },
      h('h2', {}, title), body,
      h('div', { class: 'actions' },
        h('button', { type: 'button', value: 'cancel', class: 'secondary', onclick: () => dlg.close('cancel') }, 'Cancel'),
        h('button', { type: 'submit', value: 'ok', class: danger ? 'danger' : '' }, confirmLabel)));
    const dlg = h('dialog', { 'aria-label': title }, form);
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      if (!form.reportValidity()) return;
      const values = Object.fromEntries(new FormData(form).entries());
      dlg.close('ok');
      resolve(values);
      // wipe what was typed (a secret must not stay in the page)
      form.querySelectorAll('input').forEach((i) => { i.value = ''; });
    });
    dlg.addEventListener('close', () => {
      if (dlg.returnValue !== 'ok') resolve(null);
      dlg.remove();
    });
    document.body.append(dlg);
    dlg.showModal();
    const first = form.querySelector('input, select, textarea, button[type=submit]');
    if (first) first.focus();
  });
}

export function confirm(title, text, label, danger = true) {
  return dialog(title, h('p', {}, text), label, danger).then((v) => v !== null);
}

let toastTimer;
export function toast(msg, isError = false) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.className = 'toast show' + (isError ? ' error' : '');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = 'toast'; }, isError ? 8000 : 3500);
}

export function field(label, input, hint) {
  const id = input.id || ('f-' + Math.random().toString(36).slice(2));
  input.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('small', {}, hint) : null);
}

// nano-USD (integer) to "$1.234567"
export function usd(nano, digits = 6) {
  if (nano === undefined || nano === null) return '—';
  return '$' + (Number(nano) / 1e9).toFixed(digits);
}

export function num(n) {
  return n === undefined || n === null ? '—' : Number(n).toLocaleString('en-US');
}

export function when(ms) {
  if (!ms) return '—';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function badge(text, kind) {
  return h('span', { class: 'badge ' + (kind || text) }, text);
}
