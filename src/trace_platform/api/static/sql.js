// Trace console, SQL page: run a query (a background query run: timer, cancel, history), page
// through its rows, chart them (uPlot, vendored), download CSV or Parquet, and save, open and
// run saved queries with their typed parameters. Values are inserted as text, never as HTML.
"use strict";
(() => {
  const form = document.querySelector("form#sql[data-page=sql]");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  const PAGE = 100; // rows a page of the table shows
  const MAX_POINTS = 2000; // drawn per series; more are down-sampled
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
  const state = { result: null, page: 0, run: null, saved: null };

  async function api(method, path, body, signal) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") { headers["Content-Type"] = "application/json"; headers["X-CSRF-Token"] = csrf(); }
    const r = await fetch(path, {
      method, credentials: "same-origin", headers, signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = {};
    try { data = await r.json(); } catch (_) { /* no JSON body */ }
    return { ok: r.ok, status: r.status, data };
  }
  const why = (res) => `${res.status}: ${res.data.detail || res.data.error || "failed"}`;
  const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

  function say(text, bad) {
    const el = $("sql-status");
    el.textContent = text;
    el.className = bad ? "error" : "muted";
  }

  // -- running ---------------------------------------------------------------------------
  function started(cancel) {
    const t0 = performance.now();
    const timer = setInterval(() => { $("sql-timer").textContent = `${((performance.now() - t0) / 1000).toFixed(1)} s`; }, 100);
    state.run = { cancel, t0, timer };
    $("sql-run").disabled = true;
    $("sql-cancel").disabled = false;
    say("running…");
  }

  function finished() {
    const run = state.run;
    state.run = null;
    if (run) {
      clearInterval(run.timer);
      $("sql-timer").textContent = `${((performance.now() - run.t0) / 1000).toFixed(2)} s`;
    }
    $("sql-run").disabled = false;
    $("sql-cancel").disabled = true;
    return run ? performance.now() - run.t0 : 0;
  }

  function usingSaved() {
    return state.saved && form.sql.value === state.saved.sql ? state.saved : null;
  }

  function paramValues() {
    const values = {};
    for (const input of $("sql-params").querySelectorAll("input[data-param]")) {
      if (input.value !== "") values[input.dataset.param] = input.value;
    }
    return values;
  }

  async function runSaved(saved, limit) {
    // a query run of the saved query (its values bound by the server; Cancel: DELETE)
    const path = `/v1/saved-queries/${encodeURIComponent(saved.name)}/runs`;
    await runInBackground(path, { params: paramValues(), limit, format: "json" });
  }

  async function runAdhoc(limit) {
    const body = { sql: form.sql.value, limit, format: "json" };
    if (form.dataset.job) body.job = form.dataset.job;
    await runInBackground("/v1/query-runs", body);
  }

  async function runInBackground(path, body) {
    const res = await api("POST", path, body);
    if (!res.ok) { say(why(res), true); return; }
    const id = res.data.run_id;
    let canceled = false;
    started(async () => { canceled = true; await api("DELETE", `/v1/query-runs/${id}`); });
    try {
      for (;;) {
        await sleep(150);
        const st = await api("GET", `/v1/query-runs/${id}`);
        if (!st.ok) { finished(); say(why(st), true); return; }
        const s = st.data;
        if (s.status === "succeeded") {
          const got = await fetch(s.url, { credentials: "same-origin" });
          const ms = finished();
          if (!got.ok) { say(`${got.status}: the result could not be read`, true); return; }
          show(await got.json(), ms);
          return;
        }
        if (s.status === "failed" || s.status === "canceled") {
          finished();
          say(s.status === "canceled" ? "canceled" : `failed: ${s.error_detail || s.error_code}`, true);
          return;
        }
        if (canceled) continue; // the DELETE's answer settles it
        say(`${s.status}…`);
      }
    } finally {
      history();
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (state.run) return;
    const limit = Number($("sql-limit").value);
    const saved = usingSaved();
    if (saved) runSaved(saved, limit); else runAdhoc(limit);
  });
  form.sql.addEventListener("keydown", (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === "Enter") { ev.preventDefault(); form.requestSubmit(); }
  });
  form.sql.addEventListener("input", () => { if (!usingSaved()) $("sql-params").replaceChildren(); });
  $("sql-cancel").addEventListener("click", async () => {
    if (!state.run) return;
    say("canceling…");
    await state.run.cancel();
  });

  // -- the result: table, pages, chart ---------------------------------------------------
  function show(result, ms) {
    state.result = result;
    state.page = 0;
    const n = result.rows.length;
    const limit = Number($("sql-limit").value);
    say(`${n.toLocaleString()} row(s) in ${Math.round(ms)} ms` + (result.truncated ? ` — more rows than ${limit.toLocaleString()}: raise the limit, or download CSV or Parquet for all of them` : ""));
    for (const b of document.querySelectorAll("button[data-download]")) b.disabled = false;
    table();
    chartControls();
    chart();
  }

  function table() {
    const { columns, rows } = state.result;
    const out = $("sql-result");
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    const from = state.page * PAGE;
    const t = document.createElement("table");
    t.className = "list results";
    const head = t.insertRow();
    for (const c of columns) { const th = document.createElement("th"); th.textContent = c.name; th.title = c.type; head.appendChild(th); }
    for (const row of rows.slice(from, from + PAGE)) {
      const tr = t.insertRow();
      for (const v of row) tr.insertCell().textContent = v === null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v);
    }
    out.replaceChildren(t);
    $("sql-pager").hidden = rows.length <= PAGE;
    $("page-info").textContent = rows.length ? `rows ${from + 1}–${Math.min(rows.length, from + PAGE)} of ${rows.length.toLocaleString()} · page ${state.page + 1} of ${pages}` : "";
    $("page-prev").disabled = state.page === 0;
    $("page-next").disabled = state.page >= pages - 1;
  }
  $("page-prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); table(); });
  $("page-next").addEventListener("click", () => { state.page += 1; table(); });

  function kindOf(values) {
    const seen = values.filter((v) => v !== null && v !== undefined).slice(0, 200);
    if (!seen.length) return "number";
    if (seen.every((v) => typeof v === "number" || (typeof v === "string" && v.trim() !== "" && !Number.isNaN(Number(v))))) return "number";
    if (seen.every((v) => typeof v === "string" && /^\d{4}-\d\d-\d\d/.test(v) && !Number.isNaN(Date.parse(v)))) return "time";
    return "category";
  }

  function chartControls() {
    const { columns, rows } = state.result;
    const box = $("sql-chart-box");
    box.hidden = !rows.length || !columns.length;
    if (box.hidden) return;
    const fill = (sel, withNone) => {
      const keep = sel.value;
      sel.replaceChildren();
      if (withNone) sel.add(new Option("(none)", ""));
      columns.forEach((c, i) => sel.add(new Option(c.name, String(i))));
      if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
    };
    fill($("chart-x"), false);
    fill($("chart-y"), false);
    fill($("chart-series"), true);
    const numeric = columns.map((_, i) => kindOf(rows.map((r) => r[i])) === "number");
    if (Number($("chart-y").value) === Number($("chart-x").value) || !numeric[Number($("chart-y").value)]) {
      const y = numeric.findIndex((ok, i) => ok && i !== Number($("chart-x").value));
      if (y >= 0) $("chart-y").value = String(y);
    }
  }
  for (const id of ["chart-kind", "chart-x", "chart-y", "chart-series"]) $(id).addEventListener("change", () => chart());

  function chart() {
    const el = $("sql-chart");
    el.replaceChildren();
    const result = state.result;
    if (!result || !result.rows.length || typeof uPlot === "undefined") return;
    const { columns, rows } = result;
    const xi = Number($("chart-x").value), yi = Number($("chart-y").value);
    const si = $("chart-series").value === "" ? -1 : Number($("chart-series").value);
    const kind = $("chart-kind").value;
    const xKind = kindOf(rows.map((r) => r[xi]));
    const labels = [];
    const index = new Map();
    const toX = (v) => {
      if (v === null || v === undefined) return null;
      if (xKind === "number") return Number(v);
      if (xKind === "time") return Date.parse(v) / 1000;
      const key = String(v);
      if (!index.has(key)) { index.set(key, labels.length); labels.push(key); }
      return index.get(key);
    };
    const toY = (v) => { const n = v === null || v === undefined ? NaN : Number(v); return Number.isFinite(n) ? n : null; };
    // one series per value of the series column (the 8 with most rows), else one
    const groups = new Map();
    for (const r of rows) {
      const key = si < 0 ? columns[yi].name : String(r[si]);
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push([toX(r[xi]), toY(r[yi])]);
    }
    const names = [...groups.keys()].sort((a, b) => groups.get(b).length - groups.get(a).length).slice(0, COLORS.length);
    let xs = [...new Set(names.flatMap((k) => groups.get(k).map((p) => p[0])).filter((x) => x !== null))].sort((a, b) => a - b);
    const total = xs.length;
    if (xs.length > MAX_POINTS) { // every k-th x: the shape at a size a screen can show
      const step = Math.ceil(xs.length / MAX_POINTS);
      xs = xs.filter((_, i) => i % step === 0);
    }
    const at = new Map(xs.map((x, i) => [x, i]));
    const data = [xs];
    for (const k of names) {
      const ys = new Array(xs.length).fill(null);
      for (const [x, y] of groups.get(k)) if (at.has(x) && ys[at.get(x)] === null) ys[at.get(x)] = y;
      data.push(ys);
    }
    const series = [{}].concat(names.map((name, i) => {
      const color = COLORS[i];
      const s = { label: name, stroke: color, width: 2, spanGaps: true, points: { show: kind === "scatter", size: 6, fill: color } };
      if (kind === "bar") { s.paths = uPlot.paths.bars({ size: [0.8, 60] }); s.fill = color + "bb"; }
      if (kind === "scatter") s.paths = () => null;
      if (kind === "area") s.fill = color + "33";
      return s;
    }));
    const axes = [{}, { size: 70 }]; // room for wide numbers
    if (xKind === "category") axes[0] = { values: (_u, splits) => splits.map((v) => (Number.isInteger(v) && labels[v] !== undefined ? labels[v] : "")) };
    const width = Math.max(320, el.clientWidth || form.clientWidth || 800);
    const plot = new uPlot({ width, height: 300, scales: { x: { time: xKind === "time" } }, series, axes, legend: { show: names.length > 1 || si >= 0 } }, data, el);
    el.dataset.series = String(names.length);
    el.dataset.points = String(xs.length);
    $("chart-note").textContent = total > xs.length ? `down-sampled: ${xs.length.toLocaleString()} of ${total.toLocaleString()} points drawn` : `${xs.length.toLocaleString()} points`;
    return plot;
  }

  // -- downloads -------------------------------------------------------------------------
  for (const btn of document.querySelectorAll("button[data-download]")) {
    btn.addEventListener("click", async () => {
      const fmt = btn.dataset.download;
      const saved = usingSaved();
      const path = saved ? `/v1/saved-queries/${encodeURIComponent(saved.name)}/run` : "/v1/query";
      const body = saved ? { params: paramValues(), format: fmt } : { sql: form.sql.value, format: fmt };
      if (!saved && form.dataset.job) body.job = form.dataset.job;
      btn.disabled = true;
      try {
        const r = await fetch(path, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
          body: JSON.stringify(body),
        });
        if (!r.ok) { let d = {}; try { d = await r.json(); } catch (_) { /* */ } say(`${r.status}: ${d.detail || "download failed"}`, true); return; }
        const url = URL.createObjectURL(await r.blob());
        const a = document.createElement("a");
        a.href = url;
        a.download = `${saved ? saved.name : "query"}.${fmt}`;
        document.body.appendChild(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10_000);
      } finally {
        btn.disabled = false;
      }
    });
  }

  // -- saved queries ---------------------------------------------------------------------
  async function savedList() {
    const res = await api("GET", "/v1/saved-queries");
    const ul = $("saved-list");
    ul.replaceChildren();
    if (!res.ok) { const li = document.createElement("li"); li.textContent = why(res); li.className = "error"; ul.appendChild(li); return; }
    if (!res.data.saved_queries.length) { const li = document.createElement("li"); li.className = "muted"; li.textContent = "none yet"; ul.appendChild(li); }
    for (const q of res.data.saved_queries) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.className = "link saved";
      b.dataset.saved = q.name;
      b.textContent = q.name;
      b.addEventListener("click", () => openSaved(q.name));
      li.appendChild(b);
      const p = q.parameters.map((x) => x.name).join(", ");
      if (p || q.description) { const s = document.createElement("span"); s.className = "muted"; s.textContent = ` ${p ? `(${p})` : ""} ${q.description}`; li.appendChild(s); }
      ul.appendChild(li);
    }
  }

  async function openSaved(name) {
    const res = await api("GET", `/v1/saved-queries/${encodeURIComponent(name)}`);
    if (!res.ok) { say(why(res), true); return; }
    const q = res.data;
    state.saved = { name: q.name, sql: q.sql, parameters: q.parameters };
    form.sql.value = q.sql;
    if ($("save-name")) { $("save-name").value = q.name; $("save-description").value = q.description || ""; }
    const box = $("sql-params");
    box.replaceChildren();
    for (const p of q.parameters) {
      const label = document.createElement("label");
      label.textContent = `${p.name} `;
      const input = document.createElement("input");
      input.dataset.param = p.name;
      input.name = `param-${p.name}`;
      input.placeholder = p.type + (p.default !== null ? ` = ${p.default}` : "");
      label.appendChild(input);
      box.appendChild(label);
    }
    say(`opened ${q.name}`);
  }

  const saveForm = $("sql-save");
  if (saveForm) {
    saveForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const name = $("save-name").value.trim();
      const body = { sql: form.sql.value, description: $("save-description").value };
      if (form.dataset.job) body.job = form.dataset.job;
      let res = await api("POST", "/v1/saved-queries", { name, ...body });
      if (res.status === 409) res = await api("PUT", `/v1/saved-queries/${encodeURIComponent(name)}`, body);
      const status = $("save-status");
      status.textContent = res.ok ? `saved ${name}` : why(res);
      status.className = res.ok ? "ok" : "error";
      if (res.ok) { await savedList(); await openSaved(name); }
    });
  }

  // -- history ---------------------------------------------------------------------------
  async function history() {
    const res = await api("GET", "/v1/query-runs?limit=10");
    const runs = (res.ok ? res.data.runs : [])
      .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at))).slice(0, 10);
    const t = $("run-history");
    while (t.rows.length > 1) t.deleteRow(1);
    for (const r of runs) {
      const tr = t.insertRow();
      tr.className = "run";
      const named = r.name || r.saved_query;
      tr.insertCell().textContent = r.status + (named ? ` · ${named}` : "");
      tr.insertCell().textContent = r.rows === null || r.rows === undefined ? "" : Number(r.rows).toLocaleString();
      tr.insertCell().textContent = r.duration_ms === null || r.duration_ms === undefined ? "" : `${r.duration_ms} ms`;
      tr.insertCell().textContent = new Date(r.created_at).toLocaleTimeString();
      tr.cells[0].className = r.status;
    }
  }

  window.addEventListener("resize", () => { if (state.result) chart(); });
  savedList();
  history();
})();
