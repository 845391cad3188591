"""The inspector's page: static HTML and script, no request data in it (pure text).

Everything about requests arrives as JSON over server-sent events and is put into the
DOM with textContent / createElement only, never as markup; the page is served with a
Content-Security-Policy that allows no inline script, so even a mistake here could not
run a request's bytes.
"""

from __future__ import annotations

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>trivpn inspector</title>
<link rel="stylesheet" href="/app.css">
</head><body>
<header><h1>trivpn inspector</h1>
<span id="state">connecting</span> · <span id="count">0</span> requests · <span id="note"></span>
</header>
<table id="requests"><thead><tr>
<th>#</th><th>time</th><th>method</th><th>path</th><th>status</th><th>duration</th><th></th>
</tr></thead><tbody></tbody></table>
<section id="detail"></section>
<script src="/app.js"></script>
</body></html>
"""

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1em; color: #222; }
header h1 { display: inline; font-size: 1.2em; margin-right: 1em; }
table { border-collapse: collapse; width: 100%; margin-top: 1em; }
th, td { text-align: left; padding: 2px 8px; border-bottom: 1px solid #ddd; }
td.path { font-family: monospace; word-break: break-all; }
tr.replay td:first-child::after { content: " ↻"; }
tr.selected { background: #eef; }
tr:hover { background: #f6f6ff; cursor: pointer; }
.s2 { color: #080; } .s3 { color: #068; } .s4 { color: #a60; } .s5, .s0 { color: #c00; }
pre { background: #f6f6f6; padding: 6px; white-space: pre-wrap; word-break: break-all; }
#detail table td:first-child { font-weight: bold; white-space: nowrap; }
"""

SCRIPT = """'use strict';
const MAX_ROWS = 100;
const rows = new Map();
const tbody = document.querySelector('#requests tbody');
const detail = document.getElementById('detail');

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function headersTable(headers) {
  const t = el('table');
  for (const [k, v] of headers) {
    const tr = el('tr');
    tr.append(el('td', k), el('td', v));
    t.append(tr);
  }
  return t;
}

function body(msg) {
  const size = msg.size + ' bytes' + (msg.truncated ? ' (preview)' : '');
  const box = el('div');
  box.append(el('p', 'body: ' + size));
  if (msg.body) box.append(el('pre', msg.body));
  return box;
}

function show(x) {
  for (const tr of tbody.querySelectorAll('tr.selected')) tr.classList.remove('selected');
  const row = tbody.querySelector('tr[data-id="' + Number(x.id) + '"]');
  if (row) row.classList.add('selected');
  detail.replaceChildren();
  detail.append(el('h2', x.method + ' ' + x.target));
  detail.append(el('p', 'from ' + x.peer + ', HTTP/' + x.version + ', ' + x.duration_ms + ' ms'
    + (x.replay_of ? ', replay of #' + x.replay_of : '')));
  if (x.query) {
    const q = el('table');
    for (const [k, v] of new URLSearchParams(x.query)) {
      const tr = el('tr');
      tr.append(el('td', k), el('td', v));
      q.append(tr);
    }
    detail.append(el('h3', 'query'), q);
  }
  detail.append(el('h3', 'request'), headersTable(x.request.headers), body(x.request));
  if (x.response) {
    detail.append(el('h3', 'response ' + x.status + ' ' + x.reason),
      headersTable(x.response.headers), body(x.response));
  } else {
    detail.append(el('h3', 'no response'));
  }
}

async function replay(id) {
  const note = document.getElementById('note');
  note.textContent = 'replaying #' + id + '…';
  try {
    const r = await fetch('/api/replay/' + id,
      {method: 'POST', headers: {'X-Trivpn-Inspector': 'replay'}});
    const j = await r.json();
    note.textContent = r.ok ? 'replayed #' + id + ': ' + j.status + ' (#' + j.id + ')'
      : 'replay failed: ' + j.error;
  } catch (e) {
    note.textContent = 'replay failed: ' + e;
  }
}

function add(x) {
  if (rows.has(x.id)) return;
  rows.set(x.id, x);
  const tr = el('tr', undefined, x.replay_of ? 'replay' : '');
  tr.dataset.id = String(x.id);
  tr.append(el('td', x.id), el('td', new Date(x.at * 1000).toLocaleTimeString()),
    el('td', x.method), el('td', x.target, 'path'),
    el('td', x.status || '—', 's' + String(x.status).charAt(0)),
    el('td', x.duration_ms + ' ms'));
  const cell = el('td');
  const button = el('button', 'Replay');
  button.id = 'replay-' + Number(x.id);
  button.disabled = !x.replayable;
  button.addEventListener('click', (ev) => { ev.stopPropagation(); replay(x.id); });
  cell.append(button);
  tr.append(cell);
  tr.addEventListener('click', () => show(x));
  tbody.prepend(tr);
  while (tbody.rows.length > MAX_ROWS) {
    const last = tbody.rows[tbody.rows.length - 1];
    rows.delete(Number(last.dataset.id));
    last.remove();
  }
  document.getElementById('count').textContent = String(rows.size);
}

const events = new EventSource('/api/events');
events.addEventListener('exchange', (e) => add(JSON.parse(e.data)));
events.onopen = () => { document.getElementById('state').textContent = 'live'; };
events.onerror = () => { document.getElementById('state').textContent = 'reconnecting'; };
"""

#: No inline script or style from anywhere, no framing, no other origin.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
