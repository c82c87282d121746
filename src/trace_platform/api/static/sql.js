// Trace console, SQL page: run a query with its answer shown as it arrives (POST /v1/query as
// an Arrow IPC stream, read chunk by chunk: the table fills and the chart redraws at most every
// DRAW_EVERY_MS while it comes; Cancel aborts the fetch), or a saved query as a background query
// run (its status, rows and bytes while it runs; drawn when done); page through the rows, chart
// them (uPlot, vendored), download CSV or Parquet, and save, open and run saved queries with
// their typed parameters. Values are inserted as text, never as HTML.
"use strict";
(() => {
  const form = document.querySelector("form#sql[data-page=sql]");
  if (!form) return;
  const $ = (id) => document.getElementById(id);
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  const PAGE = 100; // rows a page of the table shows
  const MAX_POINTS = 2000; // drawn per series; more are down-sampled
  const DRAW_EVERY_MS = 250; // while an answer arrives, the table and chart redraw at most this often
  const ARROW = "application/vnd.apache.arrow.stream";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
  // streamed answers are no query runs: this browser lists them (status, rows, time; no SQL)
  const STREAMED_KEY = `trace.sql.streamed.${form.dataset.user || ""}`;
  const state = { result: null, page: 0, run: null, saved: null, live: null, plot: null };

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

  const count = (n) => `${n.toLocaleString()} row(s)`;
  const size = (b) => (b < 1024 * 1024 ? `${Math.max(1, Math.round(b / 1024))} KB` : `${(b / 1024 / 1024).toFixed(1)} MB`);

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

  async function detailOf(r) {
    let d = {};
    try { d = await r.json(); } catch (_) { /* no JSON body */ }
    return `${r.status}: ${d.detail || d.error || "failed"}`;
  }

  // -- a streamed answer: POST /v1/query as an Arrow IPC stream, shown as it arrives -----
  async function runStreamed(limit) {
    // one row past the limit: its arrival is how a cut is known when the answer streams
    const body = { sql: form.sql.value, limit: limit + 1, format: "arrow" };
    if (form.dataset.job) body.job = form.dataset.job;
    const abort = new AbortController();
    const live = begin(limit);
    const createdAt = new Date().toISOString();
    started(() => { live.canceled = true; abort.abort(); });
    let outcome;
    try {
      const r = await fetch("/v1/query", {
        method: "POST", credentials: "same-origin", signal: abort.signal, body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", Accept: ARROW, "X-CSRF-Token": csrf() },
      });
      if (!r.ok) {
        outcome = { status: "refused", text: await detailOf(r) };
      } else {
        live.result.truncated = r.headers.get("X-Trace-Truncated") === "true";
        outcome = await receive(r, live);
      }
    } catch (err) {
      outcome = live.canceled ? { status: "canceled" } : { status: "failed", text: `failed: ${err.message || err}` };
    }
    const ms = finished();
    settle(live, outcome, ms);
    if (outcome.status !== "refused") { // refused SQL never ran (as a query run it makes no run)
      remember({ status: outcome.status, rows: live.result.rows.length, duration_ms: Math.round(ms), created_at: createdAt });
    }
    history();
  }

  // Reads an Arrow IPC stream's body into live.result as it arrives: {status, text?}.
  async function receive(response, live) {
    const decoder = new TraceArrow.StreamDecoder();
    const reader = response.body.getReader();
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (live.canceled) return { status: "canceled" };
          // the connection closed before the end: the server cut the answer (too many rows, or it failed part-way)
          return { status: "failed", text: `failed: the answer was cut after ${count(live.result.rows.length)} arrived (too many rows, or the query failed part-way); the rows shown are not all of it` };
        }
        if (chunk.done) break;
        live.bytes += chunk.value.length;
        const rows = decoder.push(chunk.value);
        if (decoder.columns && !live.result.columns.length) live.result.columns = decoder.columns;
        add(live, rows);
        // Rows already buffered are read without yielding to the page: when a redraw is due,
        // draw on the next frame and let the browser paint it before reading on.
        if (performance.now() - live.drawnAt >= DRAW_EVERY_MS) await drawOnNextFrame(live);
        else scheduleDraw(live);
      }
    } catch (err) { // a value this page cannot show (the decoder names its column)
      await reader.cancel().catch(() => {});
      return { status: "failed", text: `failed: ${err.message}` };
    }
    if (!decoder.ended) return { status: "failed", text: `failed: the answer ended without its end-of-stream mark after ${count(live.result.rows.length)}; the rows shown are not all of it` };
    return { status: "succeeded" };
  }

  function add(live, rows) {
    const into = live.result.rows;
    let n = rows.length;
    if (into.length + n > live.limit) { live.result.truncated = true; n = Math.max(0, live.limit - into.length); }
    for (let i = 0; i < n; i++) into.push(rows[i]);
  }

  // A fresh result for an answer about to arrive: the last one's table and chart cleared.
  function begin(limit) {
    if (state.live) state.live.done = true;
    const live = { limit, result: { columns: [], rows: [], truncated: false }, bytes: 0, draws: [], drawnAt: -Infinity, pending: 0, controls: false, canceled: false, done: false };
    state.live = live;
    state.result = live.result;
    state.page = 0;
    $("sql-result").replaceChildren();
    if (state.plot) { state.plot.destroy(); state.plot = null; }
    $("sql-chart").replaceChildren();
    $("sql-chart-box").hidden = true;
    $("sql-pager").hidden = true;
    $("chart-note").textContent = "";
    const el = $("sql-chart");
    for (const k of ["liveDraws", "drawnRows", "xMin", "xMax", "points", "series"]) delete el.dataset[k];
    return live;
  }

  // While rows arrive: at most one redraw every DRAW_EVERY_MS, on an animation frame.
  function scheduleDraw(live) {
    if (live.pending || live.done) return;
    const wait = Math.max(0, DRAW_EVERY_MS - (performance.now() - live.drawnAt));
    live.pending = setTimeout(() => requestAnimationFrame(() => {
      live.pending = 0;
      if (!live.done) drawLive(live);
    }), wait);
  }

  // Draws on an animation frame (or after 100 ms: a hidden page has none), resolving in a
  // later task, so the frame is painted before the caller reads more rows.
  function drawOnNextFrame(live) {
    return new Promise((resolve) => {
      let drawn = false;
      const draw = () => {
        if (drawn) return;
        drawn = true;
        if (!live.done) drawLive(live);
        setTimeout(resolve, 0);
      };
      requestAnimationFrame(draw);
      setTimeout(draw, 100);
    });
  }

  function drawLive(live) {
    const n = live.result.rows.length;
    say(`receiving… ${count(n)}, ${size(live.bytes)}`);
    if (!n || n === live.draws[live.draws.length - 1]) return; // nothing new to draw
    live.drawnAt = performance.now();
    render(live);
    live.draws.push(n); // the page's observable record: rows at each redraw made while the answer came
    $("sql-chart").dataset.liveDraws = live.draws.join(",");
  }

  function render(live) {
    table();
    if (!live.controls && live.result.rows.length) { chartControls(); live.controls = true; }
    chart();
  }

  // The answer is complete, canceled or cut: drawn once more, and said truthfully.
  function settle(live, outcome, ms) {
    live.done = true;
    clearTimeout(live.pending);
    const { rows, truncated } = live.result;
    const n = rows.length;
    if (n) render(live);
    if (live.result.columns.length) for (const b of document.querySelectorAll("button[data-download]")) b.disabled = false;
    const limit = Number($("sql-limit").value);
    if (outcome.status === "succeeded") {
      say(`${count(n)} in ${Math.round(ms)} ms` + (truncated ? ` — more rows than ${limit.toLocaleString()}: raise the limit, or download CSV or Parquet for all of them` : ""));
    } else if (outcome.status === "canceled") {
      say(n ? `canceled: ${count(n)} arrived before it stopped (shown; not the whole answer)` : "canceled before any row arrived", true);
    } else {
      say(outcome.text, true);
    }
  }

  // -- a query run (a saved query's): status while it runs, its result read when done ----
  async function runSaved(saved, limit) {
    // a query run of the saved query (its values bound by the server; Cancel: DELETE)
    const path = `/v1/saved-queries/${encodeURIComponent(saved.name)}/runs`;
    await runInBackground(path, { params: paramValues(), limit, format: "arrow" });
  }

  async function runInBackground(path, body) {
    const res = await api("POST", path, body);
    if (!res.ok) { say(why(res), true); return; }
    const id = res.data.run_id;
    const abort = new AbortController();
    let canceled = false, reading = null;
    started(async () => {
      canceled = true;
      if (reading) { reading.canceled = true; abort.abort(); return; } // done already: stop reading it
      await api("DELETE", `/v1/query-runs/${id}`);
    });
    try {
      for (;;) {
        await sleep(150);
        const st = await api("GET", `/v1/query-runs/${id}`);
        if (!st.ok) { finished(); say(why(st), true); return; }
        const s = st.data;
        if (s.status === "succeeded") {
          reading = begin(Infinity); // the run kept at most its limit; it says whether it cut
          let outcome;
          try {
            const got = await fetch(s.url, { credentials: "same-origin", signal: abort.signal });
            if (!got.ok) outcome = { status: "failed", text: `${got.status}: the result could not be read` };
            else { reading.result.truncated = Boolean(s.truncated); outcome = await receive(got, reading); }
          } catch (err) {
            outcome = reading.canceled ? { status: "canceled" } : { status: "failed", text: `failed: ${err.message || err}` };
          }
          settle(reading, outcome, finished());
          return;
        }
        if (s.status === "failed" || s.status === "canceled") {
          finished();
          say(s.status === "canceled" ? "canceled" : `failed: ${s.error_detail || s.error_code}`, true);
          return;
        }
        if (canceled) continue; // the DELETE's answer settles it
        const sizes = [s.rows === null || s.rows === undefined ? "" : count(Number(s.rows)), s.bytes === null || s.bytes === undefined ? "" : size(Number(s.bytes))].filter(Boolean);
        say(`${s.status}…${sizes.length ? ` ${sizes.join(", ")}` : ""}`);
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
    if (saved) runSaved(saved, limit); else runStreamed(limit);
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
  function table() {
    const { columns, rows } = state.result;
    const out = $("sql-result");
    const pages = Math.max(1, Math.ceil(rows.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
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

  const DECIMAL = /^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;
  function kindOf(rows, i) { // a column's kind, from its first 200 values that are not NULL
    const seen = [];
    for (let r = 0; r < rows.length && seen.length < 200; r++) if (rows[r][i] !== null && rows[r][i] !== undefined) seen.push(rows[r][i]);
    if (!seen.length) return "number";
    // text counts as a number only when written in decimal (a wide integer, an exact decimal):
    // Number() also reads "0x…" hex, and a hash or address column would chart as a few huge x
    if (seen.every((v) => typeof v === "number" || (typeof v === "string" && DECIMAL.test(v.trim())))) return "number";
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
    const numeric = columns.map((_, i) => kindOf(rows, i) === "number");
    if (Number($("chart-y").value) === Number($("chart-x").value) || !numeric[Number($("chart-y").value)]) {
      const y = numeric.findIndex((ok, i) => ok && i !== Number($("chart-x").value));
      if (y >= 0) $("chart-y").value = String(y);
    }
  }
  for (const id of ["chart-kind", "chart-x", "chart-y", "chart-series"]) $(id).addEventListener("change", () => chart());

  function chart() {
    const el = $("sql-chart");
    if (state.plot) { state.plot.destroy(); state.plot = null; } // its listeners go with it
    el.replaceChildren();
    const result = state.result;
    if (!result || !result.rows.length || typeof uPlot === "undefined") return;
    const { columns, rows } = result;
    const xi = Number($("chart-x").value), yi = Number($("chart-y").value);
    const si = $("chart-series").value === "" ? -1 : Number($("chart-series").value);
    const kind = $("chart-kind").value;
    const xKind = kindOf(rows, xi);
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
      let g = groups.get(key);
      if (!g) { g = { x: [], y: [] }; groups.set(key, g); }
      g.x.push(toX(r[xi]));
      g.y.push(toY(r[yi]));
    }
    const names = [...groups.keys()].sort((a, b) => groups.get(b).x.length - groups.get(a).x.length).slice(0, COLORS.length);
    const distinct = new Set();
    for (const k of names) for (const x of groups.get(k).x) if (x !== null && !Number.isNaN(x)) distinct.add(x);
    const sorted = Float64Array.from(distinct).sort();
    const total = sorted.length;
    let xs = Array.from(sorted);
    if (xs.length > MAX_POINTS) { // every k-th x (evenly spaced, so bars keep a width): the shape at a size a screen can show
      const step = Math.ceil(xs.length / MAX_POINTS);
      xs = xs.filter((_, i) => i % step === 0);
    }
    const at = new Map(xs.map((x, i) => [x, i]));
    const data = [xs];
    for (const k of names) {
      const g = groups.get(k);
      const ys = new Array(xs.length).fill(null);
      for (let j = 0; j < g.x.length; j++) { const p = at.get(g.x[j]); if (p !== undefined && ys[p] === null) ys[p] = g.y[j]; }
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
    const x = { time: xKind === "time" };
    // down-sampled: the axis still spans every x (bars keep uPlot's own padded range)
    if (total > xs.length && kind !== "bar") x.range = [sorted[0], sorted[total - 1]];
    state.plot = new uPlot({ width, height: 300, scales: { x }, series, axes, legend: { show: names.length > 1 || si >= 0 } }, data, el);
    // what was drawn, for a test to compare with the result
    el.dataset.series = String(names.length);
    el.dataset.points = String(xs.length);
    el.dataset.drawnRows = String(rows.length);
    el.dataset.xMin = total ? String(sorted[0]) : ""; // the span of x the chart covers
    el.dataset.xMax = total ? String(sorted[total - 1]) : "";
    $("chart-note").textContent = total > xs.length ? `down-sampled: ${xs.length.toLocaleString()} of ${total.toLocaleString()} points drawn` : `${xs.length.toLocaleString()} points`;
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

  // -- history: the server's query runs, and the answers this browser streamed -----------
  function streamed() {
    try { return JSON.parse(localStorage.getItem(STREAMED_KEY) || "[]"); } catch (_) { return []; }
  }

  function remember(entry) {
    try { localStorage.setItem(STREAMED_KEY, JSON.stringify([{ ...entry, streamed: true }, ...streamed()].slice(0, 10))); } catch (_) { /* storage off or full: listed no more */ }
  }

  async function history() {
    const res = await api("GET", "/v1/query-runs?limit=10");
    const runs = (res.ok ? res.data.runs : []).concat(streamed())
      .sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at)).slice(0, 10);
    const t = $("run-history");
    while (t.rows.length > 1) t.deleteRow(1);
    for (const r of runs) {
      const tr = t.insertRow();
      tr.className = "run";
      const named = r.name || r.saved_query;
      tr.insertCell().textContent = r.status + (named ? ` · ${named}` : r.streamed ? " · streamed" : "");
      tr.insertCell().textContent = r.rows === null || r.rows === undefined ? "" : Number(r.rows).toLocaleString();
      tr.insertCell().textContent = r.duration_ms === null || r.duration_ms === undefined ? "" : `${r.duration_ms} ms`;
      tr.insertCell().textContent = new Date(r.created_at).toLocaleTimeString();
      tr.cells[0].className = r.status;
    }
  }

  window.addEventListener("resize", () => { if (state.result && state.result.rows.length) chart(); });
  savedList();
  history();
})();
