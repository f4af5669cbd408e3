// The liteq dashboard page: hash routes, JSON from /api/, live counts from /api/events (SSE).
// No build step: plain ES2017 for current browsers. Text is always inserted escaped.
(function () {
  "use strict";

  const STATES = ["pending", "scheduled", "running", "succeeded", "failed", "cancelled", "expired"];
  const main = document.getElementById("main");
  let session = null;
  let overview = null;
  let page = null; // {name, render, cleanup}
  let timers = [];
  let charts = [];

  // -- helpers -----------------------------------------------------------------------------------

  function esc(v) {
    return String(v === null || v === undefined ? "" : v)
      .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }
  function num(n) { return (n || 0).toLocaleString(); }
  function when(ts) {
    if (ts === null || ts === undefined) return "–";
    const d = new Date(ts * 1000);
    return d.toLocaleString(undefined, { year: "numeric", month: "short", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  function short(ts) {
    if (ts === null || ts === undefined) return "–";
    const d = new Date(ts * 1000);
    const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    if (d.toDateString() === new Date().toDateString()) return time;
    return d.toLocaleDateString(undefined, { month: "short", day: "2-digit" }) + " " + time;
  }
  function dur(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return (s * 1000).toFixed(0) + " ms";
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + " s";
    if (s < 3600) return (s / 60).toFixed(1) + " min";
    if (s < 86400) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  function ago(ts) { return ts ? dur(Math.max(Date.now() / 1000 - ts, 0)) + " ago" : "–"; }
  function badge(state, text) { return `<span class="badge ${esc(state)}">${esc(text || state)}</span>`; }
  function taskLink(id, text) { return `<a class="mono" href="#/task/${encodeURIComponent(id)}">${esc(text || id)}</a>`; }
  function toast(text, bad) {
    const t = document.getElementById("toast");
    t.textContent = text;
    t.className = "toast" + (bad ? " bad" : "");
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 4000);
  }
  function every(ms, fn) { timers.push(setInterval(fn, ms)); }

  async function get(path) {
    const r = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { location.href = "/login"; throw new Error("not logged in"); }
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    return body;
  }
  async function post(path, body) {
    const r = await fetch(path, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": session.csrf },
      body: JSON.stringify(body || {}),
    });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.statusText);
    return data;
  }
  function confirmIt(title, text) {
    const dlg = document.getElementById("confirm");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
      dlg.returnValue = "";
      dlg.showModal();
    });
  }
  async function act(button, fn, done) {
    button.disabled = true;
    try { const r = await fn(); if (done) done(r); } catch (e) { toast(e.message, true); } finally { button.disabled = false; }
  }

  // -- live counts -------------------------------------------------------------------------------

  function connect() {
    const live = document.getElementById("live");
    const es = new EventSource("/api/events");
    es.addEventListener("overview", (ev) => {
      const data = JSON.parse(ev.data);
      if (data.error) { live.className = "live off"; live.textContent = "store error"; return; }
      overview = data;
      live.className = "live on";
      live.textContent = "live";
      if (page && page.onOverview) page.onOverview(data);
    });
    es.onerror = () => { live.className = "live off"; live.textContent = "reconnecting"; };
  }

  // -- overview ----------------------------------------------------------------------------------

  function renderOverview() {
    main.innerHTML = `
      <div class="cards" id="cards"></div>
      <div class="card section"><div class="section-head"><h2>Queues</h2><span class="muted legend-note">tasks per queue and state</span></div><div id="queues" class="table-card"></div></div>
      <div class="section-head"><h2>History</h2><div class="seg" id="window"><button data-w="hour" class="on">Last hour</button><button data-w="day">Last day</button></div></div>
      <div class="grid2">
        <div class="card"><h3>Throughput <span class="muted legend-note" id="tp-unit"></span></h3><div id="chart-tp" class="chart"></div></div>
        <div class="card"><h3>End-to-end latency</h3><div id="chart-lat" class="chart"></div></div>
      </div>
      <div class="card section"><div class="section-head"><h2>Failures per task</h2><span class="muted legend-note" id="fail-window">last hour</span></div><div id="failures" class="table-card"></div></div>`;
    let win = "hour";
    document.querySelectorAll("#window button").forEach((b) => b.addEventListener("click", () => {
      win = b.dataset.w;
      document.querySelectorAll("#window button").forEach((x) => x.classList.toggle("on", x === b));
      loadHistory();
    }));
    async function loadHistory() {
      try { drawHistory(await get("/api/history?window=" + win)); } catch (e) { toast(e.message, true); }
    }
    loadHistory();
    every(15000, loadHistory);
    if (overview) fillOverview(overview);
    get("/api/overview").then(fillOverview).catch((e) => toast(e.message, true));
    return { onOverview: fillOverview };
  }

  function fillOverview(o) {
    const cards = document.getElementById("cards");
    if (!cards) return;
    const t = o.totals;
    const oldest = o.oldest_pending;
    const w = o.workers;
    const stat = (cls, label, value, title) =>
      `<div class="card stat ${cls}" ${title ? `title="${esc(title)}"` : ""}><div class="label">${esc(label)}</div><div class="value" data-stat="${esc(cls)}">${value}</div></div>`;
    cards.innerHTML =
      ["pending", "scheduled", "running", "succeeded", "failed"].map((s) => stat(s, s, num(t[s]))).join("") +
      stat("rate", "finished / min", num(o.finished_last_minute)) +
      stat("oldest", "oldest pending", oldest ? dur(oldest.age) : "–", oldest ? oldest.name + " in " + oldest.id : "") +
      stat("workers", "workers", num(w.total) + (w.stale ? ` <span class="badge stale">${w.stale} stale</span>` : "") +
        (w.degraded ? ` <span class="badge degraded">${w.degraded} degraded</span>` : ""));
    const queues = Object.keys(o.queues);
    document.getElementById("queues").innerHTML = queues.length ? `<table id="queue-table"><thead><tr><th>queue</th>${
      STATES.map((s) => `<th class="num">${esc(s)}</th>`).join("")}<th class="num">oldest pending</th></tr></thead><tbody>${
      queues.map((q) => `<tr data-queue="${esc(q)}"><td><a href="#/tasks?queue=${encodeURIComponent(q)}">${esc(q)}</a></td>${
        STATES.map((s) => { const n = o.queues[q][s]; return `<td class="num" data-state="${esc(s)}">${n ? `<a href="#/tasks?queue=${encodeURIComponent(q)}&state=${s}">${num(n)}</a>` : '<span class="zero">0</span>'}</td>`; }).join("")
      }<td class="num">${o.oldest_pending_by_queue[q] ? dur(o.oldest_pending_by_queue[q].age) : "–"}</td></tr>`).join("")}</tbody></table>`
      : `<div class="empty">No tasks yet.</div>`;
    const f = o.failures_last_hour;
    document.getElementById("failures").innerHTML = f.length ? `<table><thead><tr><th>task</th><th class="num">failed</th><th class="num">finished</th><th class="num">failure rate</th></tr></thead><tbody>${
      f.map((r) => `<tr><td><a href="#/tasks?state=failed&name=${encodeURIComponent(r.name)}">${esc(r.name)}</a></td><td class="num">${num(r.failed)}</td><td class="num">${num(r.finished)}</td><td class="num">${(100 * r.failed / Math.max(r.finished, 1)).toFixed(1)}%</td></tr>`).join("")}</tbody></table>`
      : `<div class="empty">No failures in the last hour.</div>`;
  }

  function drawHistory(h) {
    charts.forEach((c) => c.destroy());
    charts = [];
    const s = h.series;
    document.getElementById("tp-unit").textContent = h.bucket === 60 ? "tasks per minute" : `tasks per ${h.bucket / 60} minutes`;
    const width = (id) => Math.max(document.getElementById(id).clientWidth - 8, 300);
    const axes = (label, fmt) => [{}, { label: label, size: 64, values: fmt ? (u, vals) => vals.map(fmt) : undefined }];
    const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
    charts.push(new uPlot({
      width: width("chart-tp"), height: 220, axes: axes("tasks"), scales: { x: { time: true } },
      series: [{}, { label: "succeeded", stroke: "#1f9d55", fill: "rgba(31,157,85,.25)", paths: bars },
        { label: "failed", stroke: "#d64545", fill: "rgba(214,69,69,.35)", paths: bars },
        { label: "cancelled/expired", stroke: "#8a94a3", fill: "rgba(138,148,163,.25)", paths: bars }],
    }, [s.t, s.succeeded, s.failed, s.other], document.getElementById("chart-tp")));
    charts.push(new uPlot({
      width: width("chart-lat"), height: 220, axes: axes("", dur), scales: { x: { time: true } },
      series: [{}, { label: "mean", stroke: "#2f6fde", width: 2, spanGaps: false, points: { show: true, size: 5 }, value: (u, v) => dur(v) },
        { label: "max", stroke: "#c98a00", dash: [4, 4], spanGaps: false, points: { show: true, size: 4 }, value: (u, v) => dur(v) }],
    }, [s.t, s.latency_mean, s.latency_max], document.getElementById("chart-lat")));
    const fw = document.getElementById("fail-window");
    if (fw) fw.textContent = "last hour";
  }

  // -- workers -----------------------------------------------------------------------------------

  function renderWorkers() {
    main.innerHTML = `<h1>Workers</h1><div class="card table-card" id="workers"></div>`;
    async function load() {
      const data = await get("/api/workers");
      const rows = data.workers;
      document.getElementById("workers").innerHTML = rows.length ? `<table id="worker-table"><thead><tr><th>worker</th><th>host</th><th class="num">pid</th><th class="num">concurrency</th><th>queues</th><th class="num">tasks done</th><th>state</th><th>started</th><th>last heartbeat</th></tr></thead><tbody>${
        rows.map((w) => {
          const health = w.state === "ok" ? badge("ok", "ok")
            : badge("degraded", "degraded") + `<span class="muted">: ${esc(w.state_reason || "no reason given")}${w.state_since ? " since " + esc(short(w.state_since)) : ""}</span>`;
          return `<tr class="${w.stale ? "stale" : ""}"><td class="mono">${esc(w.id)}</td><td>${esc(w.host)}</td><td class="num">${w.pid}</td><td class="num">${w.concurrency}</td><td>${esc(w.queues.join(", "))}</td><td class="num">${num(w.tasks_done)}</td><td>${health}</td><td title="${esc(when(w.started_at))}">${esc(short(w.started_at))}</td><td>${esc(ago(w.heartbeat_at))} ${w.stale ? badge("stale", "stale") : ""}</td></tr>`;
        }).join("")}</tbody></table><p class="muted legend-note" style="padding:8px 12px">A worker not heard from for ${data.stale_after} s is marked stale.</p>`
        : `<div class="empty">No worker has registered with this store.</div>`;
    }
    load().catch((e) => toast(e.message, true));
    every(5000, () => load().catch(() => {}));
    return {};
  }

  // -- tasks -------------------------------------------------------------------------------------

  function params() {
    const q = location.hash.split("?")[1] || "";
    return new URLSearchParams(q);
  }
  function toLocalInput(ts) {
    if (!ts) return "";
    const d = new Date(ts * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function renderTasks() {
    const p = params();
    main.innerHTML = `<div class="title-row"><h1>Tasks</h1><div class="actions">${session.read_only ? "" : '<button class="btn danger small" id="purge">Purge matching…</button>'}</div></div>
      <form class="filters card" id="filters">
        <label>State<select name="state"><option value="">any</option>${STATES.map((s) => `<option ${p.get("state") === s ? "selected" : ""}>${s}</option>`).join("")}</select></label>
        <label>Task name<input name="name" value="${esc(p.get("name") || "")}" placeholder="any"></label>
        <label>Queue<input name="queue" value="${esc(p.get("queue") || "")}" placeholder="any"></label>
        <label>Enqueued after<input type="datetime-local" name="since" value="${toLocalInput(p.get("since"))}"></label>
        <label>Enqueued before<input type="datetime-local" name="until" value="${toLocalInput(p.get("until"))}"></label>
        <button class="btn primary" type="submit">Apply</button>
        <a class="btn" href="#/tasks">Reset</a>
      </form>
      <div class="card table-card" id="task-list"></div>
      <div class="pager"><button class="btn small" id="newer" disabled>← Newer</button><button class="btn small" id="older" disabled>Older →</button></div>`;
    document.getElementById("filters").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const f = new FormData(ev.target);
      const q = new URLSearchParams();
      for (const k of ["state", "name", "queue"]) if (f.get(k)) q.set(k, f.get(k));
      for (const k of ["since", "until"]) if (f.get(k)) q.set(k, String(new Date(f.get(k)).getTime() / 1000));
      location.hash = "#/tasks" + (q.toString() ? "?" + q : "");
    });
    const filter = new URLSearchParams();
    for (const k of ["state", "name", "queue", "since", "until"]) if (p.get(k)) filter.set(k, p.get(k));
    const stack = [];
    let cursor = null;
    let next = null;
    async function load() {
      const q = new URLSearchParams(filter);
      q.set("limit", "50");
      if (cursor) q.set("before", cursor);
      const data = await get("/api/tasks?" + q);
      next = data.next;
      document.getElementById("older").disabled = !next;
      document.getElementById("newer").disabled = stack.length === 0;
      document.getElementById("task-list").innerHTML = data.tasks.length ? `<table id="tasks-table"><thead><tr><th>id</th><th>task</th><th>queue</th><th>state</th><th class="num">attempts</th><th>enqueued</th><th>started</th><th>finished</th><th>reason</th></tr></thead><tbody>${
        data.tasks.map((t) => `<tr data-id="${esc(t.id)}"><td>${taskLink(t.id)}</td><td>${esc(t.name)}</td><td>${esc(t.queue)}</td><td>${badge(t.state)}</td><td class="num">${t.attempts}/${t.max_attempts}</td><td title="${esc(when(t.enqueued_at))}">${esc(short(t.enqueued_at))}</td><td>${esc(short(t.started_at))}</td><td>${esc(short(t.finished_at))}</td><td class="muted">${esc(t.reason || "")}</td></tr>`).join("")}</tbody></table>`
        : `<div class="empty">No task matches.</div>`;
    }
    document.getElementById("older").addEventListener("click", () => { stack.push(cursor); cursor = next; load().catch((e) => toast(e.message, true)); });
    document.getElementById("newer").addEventListener("click", () => { cursor = stack.pop() || null; load().catch((e) => toast(e.message, true)); });
    const purge = document.getElementById("purge");
    if (purge) purge.addEventListener("click", async () => {
      if (!filter.get("state")) { toast("Choose a state to purge (e.g. failed) first.", true); return; }
      const what = Array.from(filter.entries()).map(([k, v]) => `${k}=${k === "since" || k === "until" ? when(Number(v)) : v}`).join(", ");
      if (!(await confirmIt("Purge tasks?", `Delete every task matching ${what}, with its result and errors. This cannot be undone.`))) return;
      act(purge, () => post("/api/purge", Object.fromEntries(filter.entries())), (r) => { toast(`Deleted ${num(r.deleted)} tasks`); load(); });
    });
    load().catch((e) => toast(e.message, true));
    return {};
  }

  // -- one task ----------------------------------------------------------------------------------

  function pretty(v) { return esc(JSON.stringify(v, null, 2)); }
  function links(rows) {
    return rows.length ? rows.map((t) => `<div>${taskLink(t.id)} ${esc(t.name)} ${badge(t.state)}</div>`).join("") : '<span class="muted">–</span>';
  }

  function renderTask(id) {
    main.innerHTML = `<p class="muted">Loading task…</p>`;
    async function load() {
      let t;
      try { t = await get("/api/tasks/" + encodeURIComponent(id)); } catch (e) {
        main.innerHTML = `<div class="card"><h1>Task not found</h1><p class="muted">${esc(e.message)}</p><a href="#/tasks">All tasks</a></div>`;
        return;
      }
      const canRetry = ["failed", "cancelled", "expired"].includes(t.state);
      const canCancel = ["pending", "scheduled", "running"].includes(t.state) && !t.cancel_requested;
      const actions = session.read_only ? "" :
        (canRetry ? '<button class="btn primary" id="retry">Retry</button>' : "") +
        (canCancel ? '<button class="btn danger" id="cancel">Cancel</button>' : "");
      const kv = (k, v) => `<dt>${esc(k)}</dt><dd>${v}</dd>`;
      const progress = t.progress ? `<span class="progress"><span style="width:${Math.round(100 * t.progress.fraction)}%"></span></span> ${Math.round(100 * t.progress.fraction)}% ${esc(t.progress.message)}` : "–";
      main.innerHTML = `
        <div class="title-row"><h1 class="mono" id="task-id">${esc(t.id)}</h1><span id="task-state">${badge(t.state)}</span>${t.cancel_requested ? badge("degraded", "cancel requested") : ""}<div class="actions">${actions}</div></div>
        <div class="grid2">
          <div class="card"><h2>Task</h2><dl class="kv">
            ${kv("name", esc(t.name))}${kv("queue", esc(t.queue))}${kv("priority", esc(t.priority))}
            ${kv("attempts", `${t.attempts} of ${t.max_attempts}`)}${kv("reason", esc(t.reason || "–"))}
            ${kv("progress", progress)}
            ${kv("lease", t.lease ? `${esc(t.lease.owner)} until ${esc(when(t.lease.deadline))}` : "–")}
            ${t.idempotency_key ? kv("idempotency key", esc(t.idempotency_key)) : ""}${t.unique_key ? kv("unique key", esc(t.unique_key)) : ""}${t.lock_key ? kv("lock", esc(t.lock_key)) : ""}
          </dl></div>
          <div class="card"><h2>Timings</h2><dl class="kv">
            ${kv("enqueued", esc(when(t.enqueued_at)))}${kv("run at", esc(when(t.run_at)))}${kv("started", esc(when(t.started_at)))}
            ${kv("finished", esc(when(t.finished_at)))}${kv("waited", esc(dur(t.waited)))}${kv("ran", esc(dur(t.ran)))}
            ${kv("end to end", esc(dur(t.total)))}${kv("expires", esc(when(t.expires_at)))}${kv("result kept until", esc(when(t.result_expires_at)))}
          </dl></div>
        </div>
        <div class="grid2">
          <div class="card"><h2>Arguments</h2>${t.undecoded ? `<p class="muted">${esc(t.undecoded)}</p>` : `<div class="muted legend-note">args</div><pre class="light" id="args">${pretty(t.args)}</pre><div class="muted legend-note" style="margin-top:8px">kwargs</div><pre class="light" id="kwargs">${pretty(t.kwargs)}</pre>`}</div>
          <div class="card"><h2>Result</h2>${t.state === "succeeded" ? `<pre class="light" id="result">${pretty(t.result)}</pre>` : `<p class="muted">${t.finished ? "No result: the task did not succeed." : "Not finished yet."}</p>`}</div>
        </div>
        <div class="card section"><h2>Attempts and errors</h2>${t.errors.length ? t.errors.map((e, i) => `<div class="attempt"><div class="error-line">Error ${i + 1}: ${esc(e.type)}: ${esc(e.message)}</div>${e.traceback ? `<pre class="traceback">${esc(e.traceback)}</pre>` : ""}</div>`).join("") : `<p class="muted">No error recorded (${t.attempts} attempt${t.attempts === 1 ? "" : "s"}).</p>`}</div>
        <div class="card section"><h2>Canvas</h2><dl class="kv">
          ${kv("parent", t.parent ? links([t.parent]) : (t.parent_id ? `<span class="mono">${esc(t.parent_id)}</span> (pruned)` : "–"))}
          ${kv("next steps", links(t.children))}
          ${t.chord_members.length ? kv("chord members", links(t.chord_members)) : ""}
        </dl></div>`;
      const retry = document.getElementById("retry");
      if (retry) retry.addEventListener("click", async () => {
        if (!(await confirmIt("Retry this task?", `Run ${t.name} (${t.id}) again with a fresh attempt budget.`))) return;
        act(retry, () => post(`/api/tasks/${encodeURIComponent(t.id)}/retry`), () => { toast("Queued again"); load().then((n) => { current = n; }); });
      });
      const cancel = document.getElementById("cancel");
      if (cancel) cancel.addEventListener("click", async () => {
        if (!(await confirmIt("Cancel this task?", `Cancel ${t.name} (${t.id}). A running task is asked to stop.`))) return;
        act(cancel, () => post(`/api/tasks/${encodeURIComponent(t.id)}/cancel`), () => { toast("Cancelled"); load().then((n) => { current = n; }); });
      });
      return t;
    }
    let current = null;
    const shown = (t) => t ? [t.state, t.attempts, t.cancel_requested, JSON.stringify(t.progress)].join("|") : "";
    load().then((t) => { current = t; });
    // Follow a task that is still moving (not while a confirmation is open).
    every(2000, () => {
      if (!current || document.getElementById("confirm").open) return;
      get("/api/tasks/" + encodeURIComponent(id)).then((n) => {
        if (shown(n) !== shown(current)) load().then((t) => { current = t; });
      }).catch(() => {});
    });
    return {};
  }

  // -- periodic ----------------------------------------------------------------------------------

  function renderPeriodic() {
    main.innerHTML = `<h1>Periodic schedules</h1><div class="card table-card" id="periodic"></div>`;
    async function load() {
      const rows = (await get("/api/periodic")).schedules;
      const el = document.getElementById("periodic");
      el.innerHTML = rows.length ? `<table id="periodic-table"><thead><tr><th>schedule</th><th>task</th><th>when</th><th>state</th><th>last fired</th><th>next fire</th><th>last task</th><th></th></tr></thead><tbody>${
        rows.map((s) => `<tr data-name="${esc(s.name)}"><td>${esc(s.name)}</td><td>${esc(s.task || "–")}</td><td class="mono">${esc(s.cron ? s.cron : s.every ? "every " + dur(s.every) : "–")}${s.tz ? " " + esc(s.tz) : ""}</td><td>${s.paused ? badge("paused", "paused") : badge("ok", "active")}</td><td>${esc(when(s.last_fired_at))}</td><td>${s.paused ? '<span class="muted">paused</span>' : esc(when(s.next_slot))}</td><td>${s.last_task_id ? taskLink(s.last_task_id, s.last_task_id.slice(0, 12) + "…") : "–"}</td><td>${session.read_only ? "" : `<button class="btn small" data-op="${s.paused ? "resume" : "pause"}">${s.paused ? "Resume" : "Pause"}</button>`}</td></tr>`).join("")}</tbody></table>`
        : `<div class="empty">No periodic schedule (open the dashboard with the app, e.g. <code>liteq dashboard myapp:app</code>, to see its schedules).</div>`;
      el.querySelectorAll("button[data-op]").forEach((b) => b.addEventListener("click", async () => {
        const name = b.closest("tr").dataset.name;
        const op = b.dataset.op;
        if (op === "pause" && !(await confirmIt("Pause schedule?", `Stop firing ${name} in every pool until resumed.`))) return;
        act(b, () => post(`/api/periodic/${encodeURIComponent(name)}/${op}`), () => { toast(op === "pause" ? "Paused" : "Resumed"); load(); });
      }));
    }
    load().catch((e) => toast(e.message, true));
    every(10000, () => load().catch(() => {}));
    return {};
  }

  // -- router ------------------------------------------------------------------------------------

  function route() {
    timers.forEach(clearInterval);
    timers = [];
    charts.forEach((c) => c.destroy());
    charts = [];
    const hash = location.hash.replace(/^#/, "") || "/";
    const path = hash.split("?")[0];
    let name = "overview";
    if (path.startsWith("/task/")) { name = "tasks"; page = renderTask(decodeURIComponent(path.slice(6))); }
    else if (path === "/workers") { name = "workers"; page = renderWorkers(); }
    else if (path === "/tasks") { name = "tasks"; page = renderTasks(); }
    else if (path === "/periodic") { name = "periodic"; page = renderPeriodic(); }
    else { page = renderOverview(); }
    document.querySelectorAll(".top nav a").forEach((a) => a.classList.toggle("active", a.dataset.page === name));
  }

  document.getElementById("search").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = document.getElementById("search-id").value.trim();
    if (id) location.hash = "#/task/" + encodeURIComponent(id);
  });

  get("/api/session").then((s) => {
    session = s;
    document.getElementById("store").textContent = `store ${s.store} · liteq ${s.version}${s.read_only ? " · read-only" : ""}`;
    window.addEventListener("hashchange", route);
    route();
    connect();
  }).catch((e) => { main.innerHTML = `<div class="card"><h1>Cannot reach the dashboard</h1><p>${esc(e.message)}</p></div>`; });
})();
