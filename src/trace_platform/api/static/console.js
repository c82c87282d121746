// Trace console: refresh the live part of a page in place, run actions through /v1/* with
// the session's CSRF token, and the SQL editor. Values are inserted as text, never as HTML.
"use strict";
const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

function flash(text, bad) {
  const el = document.getElementById("flash");
  if (!el) return;
  el.textContent = text;
  el.className = bad ? "error" : "ok";
}

async function refresh() {
  const live = document.getElementById("live");
  if (!live || !live.dataset.refresh || document.hidden) return;
  const url = new URL(location.href);
  url.searchParams.set("fragment", "1");
  try {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
    if (r.ok) live.innerHTML = await r.text(); // server-rendered and autoescaped
  } catch (_) { /* offline for a moment: try again next tick */ }
}
setInterval(refresh, 1000);

async function post(path, body) {
  const r = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: body || "{}",
  });
  let data = {};
  try { data = await r.json(); } catch (_) { /* a redirect or an empty answer */ }
  return { ok: r.ok || r.redirected, status: r.status, data };
}

document.addEventListener("click", async (ev) => {
  const btn = ev.target.closest("button[data-post]");
  if (!btn) return;
  ev.preventDefault();
  if (btn.dataset.confirm && !confirm(btn.dataset.confirm)) return;
  btn.disabled = true;
  const res = await post(btn.dataset.post, btn.dataset.body);
  btn.disabled = false;
  if (btn.dataset.then && res.ok) { location.href = btn.dataset.then; return; }
  flash(res.ok ? "done" : `${res.status}: ${res.data.detail || res.data.error || "failed"}`, !res.ok);
  const live = document.getElementById("live");
  if (live) { live.dataset.refresh = "1"; refresh(); }
});

document.addEventListener("submit", async (ev) => {
  const form = ev.target.closest("form#sql:not([data-page])"); // the SQL page has sql.js
  if (!form) return;
  ev.preventDefault();
  const status = document.getElementById("sql-status");
  const out = document.getElementById("sql-result");
  status.textContent = "running…";
  const t0 = performance.now();
  const body = { sql: form.sql.value, limit: 1000 };
  if (form.dataset.dataset) body.dataset = form.dataset.dataset;
  if (form.dataset.job) body.job = form.dataset.job;
  const res = await post("/v1/query", JSON.stringify(body));
  out.replaceChildren();
  if (!res.ok) {
    status.textContent = `${res.status}: ${res.data.detail || res.data.error}`;
    status.className = "error";
    return;
  }
  const { columns, rows, truncated } = res.data;
  status.className = "muted";
  status.textContent = `${rows.length} row(s)${truncated ? " (truncated)" : ""} in ${Math.round(performance.now() - t0)} ms`;
  const table = document.createElement("table");
  table.className = "list results";
  const head = table.insertRow();
  for (const c of columns) { const th = document.createElement("th"); th.textContent = c.name; head.appendChild(th); }
  for (const row of rows) {
    const tr = table.insertRow();
    for (const v of row) tr.insertCell().textContent = v === null ? "NULL" : String(v);
  }
  out.appendChild(table);
});
