/* Live job page: one client-side state for the job, fed by its events (progress, metric, sample, log,
 * status) in seq order.
 *
 * Sources: the events embedded in the page, then the websocket ws://HOST/ws/jobs/<id>/ (fast path),
 * and REST GET events/?after=<last seq> (reliable path) on every (re)connect, whenever a gap in seq
 * shows up, and now and then while the job is active (a push lost on the way never shows as a gap when
 * it is the last one). Events are applied strictly in seq order exactly once: a seq at or below the
 * last applied one is a duplicate and dropped; one beyond the next expected is held until the gap is
 * filled from REST. The socket reconnects with exponential backoff while the job is active, and opens
 * again when a retry makes a finished job active.
 *
 * The header (status badge, attempt N of M, stage, banners) starts from the server-rendered state,
 * which covers every event up to cfg.render_seq; only events after it change the header. So the
 * replayed history of earlier attempts (a "cancelled" before a retry) fills the log and charts but never
 * drives the page. The page reloads at most once, for the server-rendered results: when the job's
 * latest status is terminal and came after the render.
 */
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("live-config").textContent);
  const $ = id => document.getElementById(id);
  const FINISHED = ["succeeded", "failed", "cancelled"];
  const MAX_CARDS = 30, MAX_LOG = 300;
  const charts = congJobCharts(cfg, schedule);  // metrics and results plots: static/jobs/job_charts.js

  // What jobs.services.job_retry resets when it puts a finished job back in the queue.
  const RETRY_RESETS = {attempt: 0, partial: false, error: "", finished: null, worker: ""};
  const RELOAD_DELAY_MS = 1500, RESYNC_MS = 10000;

  const state = {
    lastSeq: 0, pending: new Map(), status: cfg.header.status,
    header: {...cfg.header}, statusSeq: 0, lastEventAt: Date.now(), reloadQueued: false,
    stages: new Map(),   // stage -> {done, total, t0, d0, t, order}
    metrics: charts.metrics,  // name -> series key (stage) -> Map step -> value
    cards: new Map(),    // prompt -> {el}: the samples grid's rows
    columns: new Map(),  // source key -> {key, order, label}: the samples grid's columns
    grid: null,
    log: [], applied: 0, socketOpen: false, reconnects: 0,
  };
  window.congLive = state;  // for the browser test and for curious humans

  // ---------------------------------------------------------------- event intake (ordering, dedupe)
  function accept(ev) {
    if (!ev || typeof ev.seq !== "number" || ev.seq <= state.lastSeq || state.pending.has(ev.seq)) return;
    state.pending.set(ev.seq, ev);
    drain();
    if (state.pending.size) catchUp();  // a gap: fetch what is missing
  }

  function drain() {
    while (state.pending.has(state.lastSeq + 1)) {
      const ev = state.pending.get(state.lastSeq + 1);
      state.pending.delete(ev.seq);
      state.lastSeq = ev.seq;
      try { apply(ev); } catch (e) { console.error("event", ev, e); }
    }
    schedule();
    // Decided per batch, not per event: a batch may hold a finish and the retry after it.
    maybeReload();
    ensureLive();
  }

  let fetching = false, again = false;
  async function catchUp() {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      do {
        again = false;
        for (let page = 0; page < 100; page++) {
          const r = await fetch(`${cfg.events_url}?after=${state.lastSeq}`, {credentials: "same-origin",
                                headers: {Accept: "application/json"}});
          if (!r.ok) throw new Error(`events: HTTP ${r.status}`);
          const body = await r.json();
          const list = Array.isArray(body) ? body : (body.results || body.events || []);
          const before = state.lastSeq;
          list.forEach(ev => { if (ev.seq > state.lastSeq && !state.pending.has(ev.seq)) state.pending.set(ev.seq, ev); });
          drain();
          if (!list.length || state.lastSeq === before) break;
        }
        // Held events still beyond a gap REST cannot fill (a row that will never exist): skip ahead.
        if (state.pending.size && !again) {
          state.lastSeq = Math.min(...state.pending.keys()) - 1;
          drain();
        }
      } while (again);
      setConn(state.socketOpen ? "live" : "synced");
    } catch (e) {
      setConn("offline (" + e.message + ")");
    } finally {
      fetching = false;
    }
  }

  // ---------------------------------------------------------------- applying one event
  function apply(ev) {
    const d = ev.data || {};
    state.applied++;
    state.lastEventAt = Date.now();
    const fresh = ev.seq > cfg.render_seq;  // not yet in the server-rendered header
    const t = ev.created ? Date.parse(ev.created) : Date.now();
    if (ev.type === "progress") {
      const name = d.stage || "job";
      let s = state.stages.get(name);
      if (!s) { s = {t0: t, d0: d.done || 0, order: state.stages.size}; state.stages.set(name, s); }
      if ((d.done || 0) < s.d0) { s.t0 = t; s.d0 = d.done || 0; }  // a restarted stage (resume)
      Object.assign(s, {done: d.done || 0, total: d.total || 0, t: t});
      dirty.stages = true;
      if (fresh) {
        Object.assign(state.header, {stage: name, progress: s.total ? s.done / s.total : 0});
        dirty.header = true;
      }
    } else if (ev.type === "metric") {
      charts.metric(d);
    } else if (ev.type === "sample") {
      addSample(d);
    } else if (ev.type === "log") {
      charts.log(d.message);  // a pipeline's "pipeline: stage X" names the series of the metrics after it
      addLog(t, d.message || JSON.stringify(d));
    } else if (ev.type === "status") {
      addLog(t, `[${d.status}] ${d.message || ""}`);
      if (d.status && fresh) statusChange(ev, d);
    }
  }

  function addLog(t, text) {
    state.log.push(`${new Date(t).toLocaleTimeString()}  ${text}`);
    if (state.log.length > MAX_LOG) state.log.splice(0, state.log.length - MAX_LOG);
    dirty.log = true;
  }

  // The samples grid: one row per prompt (newest first), one column per source, the sources' names as the
  // column headers. A source is where a text came from: plain pi_post, contrastive decoding, one alpha of a
  // sweep, or one method evaluated after training. Generation stages send {stage, prompt, response}; evaluation
  // sends {stage: "evaluate", method, prompt, response}; a sweep's stages are cd_generate_<tag> and
  // evaluate_<tag> with <tag> = "a" + alpha (ml.spec.alpha_tag); a runner may also send plain/cd/strong keys.
  const FIXED = {plain: [0, "plain pi_post"], cd: [1, "contrastive decoding"], strong: [50, "strong after training"]};
  function sourcesOf(d) {
    const out = [];
    for (const k of ["plain", "cd", "strong"]) if (typeof d[k] === "string") out.push([k, d[k]]);
    if (out.length || typeof d.response !== "string") return out;
    const stage = String(d.stage || ""), method = String(d.method || "");
    // A sweep's alpha: the sample's own "alpha", else its stage's or evaluation's tag ("a0.25").
    const tag = (stage.match(/^(?:cd_generate|evaluate)_a(.+)$/) || method.match(/^a(\d.*)$/) || [])[1];
    const alpha = cfg.kind === "alpha_sweep" && typeof d.alpha === "number" ? d.alpha : (tag === undefined ? NaN : Number(tag));
    let key;
    if (isFinite(alpha)) key = `alpha:${alpha}`;
    else if (/plain/i.test(stage) || /pi_post|weak_post|weak_aligned|^plain/i.test(method)) key = "plain";
    else if (method) key = `method:${method}`;
    else if (stage === "cd_generate" || !stage) key = "cd";
    else key = `stage:${stage}`;
    out.push([key, d.response]);
    return out;
  }

  function column(key) {
    let c = state.columns.get(key);
    if (c) return c;
    if (key === "cd" && cfg.kind === "alpha_sweep") c = {order: 1, label: "contrastive decoding (alpha not reported)"};
    else if (FIXED[key]) c = {order: FIXED[key][0], label: FIXED[key][1]};
    else if (key.startsWith("alpha:")) {
      const a = key.slice(6);
      c = {order: 2 + Number(a), label: `CD alpha ${a}`};
    } else c = {order: 100 + state.columns.size, label: key.replace(/^(method|stage):/, "")};
    c.key = key;
    state.columns.set(key, c);
    const grid = ensureGrid();
    const next = nextColumn(c);
    const th = document.createElement("th");
    th.dataset.col = key;
    th.textContent = c.label;
    grid.head.insertBefore(th, next ? grid.head.querySelector(`[data-col="${CSS.escape(next.key)}"]`) : null);
    for (const card of state.cards.values()) addCell(card.el, c, next);
    return c;
  }

  function nextColumn(c) {  // the column that follows c, in order (null: c is the last)
    let best = null;
    for (const o of state.columns.values()) if (o.order > c.order && (!best || o.order < best.order)) best = o;
    return best;
  }

  function addCell(row, c, next) {
    const td = document.createElement("td");
    td.dataset.col = c.key;
    td.innerHTML = '<span class="empty">-</span>';
    row.insertBefore(td, next ? row.querySelector(`[data-col="${CSS.escape(next.key)}"]`) : null);
    return td;
  }

  function ensureGrid() {
    if (state.grid) return state.grid;
    const table = document.createElement("table");
    table.className = "grid samples-grid";
    table.id = "samples-grid";
    table.innerHTML = '<thead><tr class="samples-head"><th data-col="prompt">prompt</th></tr></thead><tbody></tbody>';
    $("samples").appendChild(table);
    $("samples-empty") && $("samples-empty").remove();
    state.grid = {table, head: table.querySelector("thead tr"), body: table.querySelector("tbody")};
    return state.grid;
  }

  function addSample(d) {
    const prompt = typeof d.prompt === "string" ? d.prompt : "";
    const sources = sourcesOf(d);
    if (!sources.length) return;
    const cols = sources.map(([key]) => column(key));
    let card = state.cards.get(prompt);
    if (!card) {
      const el = document.createElement("tr");
      el.className = "sample-card";
      const p = document.createElement("td");
      p.dataset.col = "prompt";
      p.textContent = prompt;
      el.appendChild(p);
      [...state.columns.values()].sort((a, b) => a.order - b.order).forEach(c => addCell(el, c, null));
      card = {el};
      state.cards.set(prompt, card);
      const body = ensureGrid().body;
      body.insertBefore(el, body.firstChild);
      while (body.children.length > MAX_CARDS) {
        const last = body.lastChild;
        for (const [k, c] of state.cards) if (c.el === last) state.cards.delete(k);
        last.remove();
      }
    }
    sources.forEach(([, text], i) => {
      const cell = card.el.querySelector(`td[data-col="${CSS.escape(cols[i].key)}"]`);
      cell.textContent = "";  // one text per prompt and source: the latest
      const block = document.createElement("div");
      block.className = "sample-text";
      block.textContent = text;
      const meta = [];
      // Two named numbers (docs/ML.md): the implicit reward is the sum over tokens; the mean is per token.
      const sum = d.implicit_reward_sum ?? d.implicit_sum, mean = d.implicit_reward_mean ?? d.implicit_mean;
      if (typeof sum === "number") meta.push(`implicit ${sum.toFixed(3)}`);
      if (typeof mean === "number") meta.push(`per token ${mean.toFixed(3)}`);
      if (typeof d.gold === "number") meta.push(`gold ${d.gold.toFixed(3)}`);
      if (meta.length) { const m = document.createElement("span"); m.className = "meta"; m.textContent = meta.join(" · "); block.appendChild(m); }
      cell.appendChild(block);
    });
  }

  // ---------------------------------------------------------------- rendering (batched per frame)
  const dirty = {stages: false, log: false, header: true};
  let frameQueued = false;
  function schedule() {
    if (frameQueued) return;
    frameQueued = true;
    requestAnimationFrame(() => { frameQueued = false; render(); });
  }

  function duration(sec) {
    if (!isFinite(sec) || sec < 0) return "";
    sec = Math.round(sec);
    if (sec < 60) return `${sec}s`;
    if (sec < 3600) return `${Math.floor(sec / 60)}m ${sec % 60}s`;
    return `${Math.floor(sec / 3600)}h ${Math.floor(sec % 3600 / 60)}m`;
  }

  function render() {
    if (dirty.stages) {
      dirty.stages = false;
      const box = $("stages");
      box.textContent = "";
      const finished = FINISHED.includes(state.status);
      for (const [name, s] of state.stages) {
        const frac = s.total ? Math.min(1, s.done / s.total) : 0;
        let info = `${s.done} / ${s.total}`;
        if (frac >= 1) info += " · done";
        else if (finished) info += " · stopped";
        else if (s.t > s.t0 && s.done > s.d0) info += ` · ETA ${duration((s.total - s.done) * (s.t - s.t0) / 1000 / (s.done - s.d0))}`;
        const row = document.createElement("div");
        row.className = "stage-row";
        row.dataset.stage = name;
        row.innerHTML = `<span class="label"></span><div class="bar${frac >= 1 ? " done" : ""}" role="progressbar" aria-valuemin="0" aria-valuemax="100"><span></span></div><span class="info"></span>`;
        row.querySelector(".label").textContent = name;
        row.querySelector(".bar").setAttribute("aria-valuenow", String(Math.round(frac * 100)));
        row.querySelector(".bar > span").style.width = `${(frac * 100).toFixed(1)}%`;
        row.querySelector(".info").textContent = info;
        box.appendChild(row);
      }
      if (!state.stages.size) box.innerHTML = '<p class="muted">No progress reported yet.</p>';
    }
    charts.render();  // the metrics' charts whose data changed
    if (dirty.log) {
      dirty.log = false;
      const pre = $("log");
      const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      pre.textContent = state.log.join("\n") || "(no log lines yet)";
      if (stick) pre.scrollTop = pre.scrollHeight;
    }
    if (dirty.header) { dirty.header = false; renderHeader(); }
    $("last-seq").textContent = String(state.lastSeq);
  }

  // ---------------------------------------------------------------- the header (status, attempt, banners)
  // One status event after the render moves the header the way jobs.services.lifecycle moves the row.
  function statusChange(ev, d) {
    const h = state.header, was = h.status;
    state.statusSeq = ev.seq;
    h.status = d.status;
    if (d.status === "queued" && FINISHED.includes(was)) Object.assign(h, RETRY_RESETS);
    else if (d.status === "queued") Object.assign(h, {worker: "", error: (d.message || "").replace(/^requeued: /, "")});
    if (d.status === "running") {
      if (typeof d.attempt === "number") h.attempt = d.attempt;
      if (d.worker) h.worker = d.worker;
      h.finished = null;
    }
    if (FINISHED.includes(d.status)) h.finished = ev.created || new Date().toISOString();
    if (d.status === "succeeded") Object.assign(h, {partial: false, error: ""});
    if (d.status === "failed") h.error = d.message || h.error;
    // Cancelled from running keeps what was written (partial); from queued it never started.
    if (d.status === "cancelled") {
      h.partial = was !== "queued";
      if (was === "queued") h.error = d.message || h.error;
    }
    state.status = h.status;
    if (d.status === "running" && $("samples-empty")) $("samples-empty").textContent = cfg.samples_running;
    dirty.stages = true;
    dirty.header = true;
    // Flash messages ("Job 2 queued.", "Cancel requested.") describe the action that led here; the badge
    // now says where the job is.
    document.querySelectorAll("ul.messages").forEach(el => el.remove());
  }

  function attemptText(h) {
    return h.attempt ? `attempt ${h.attempt} of ${h.max_attempts}` : `not started yet (up to ${h.max_attempts} attempts)`;
  }

  function renderHeader() {
    const h = state.header;
    const badge = $("status");
    badge.textContent = h.status;
    badge.className = `badge ${h.status}`;
    const att = $("attempt");
    att.textContent = attemptText(h) + (h.worker && h.attempt ? ` · ${h.worker}` : "");
    att.dataset.attempt = String(h.attempt);
    $("job-stage").textContent = h.stage ? `${h.stage} · ${Math.round(100 * (h.progress || 0))}%` : "-";
    $("finished-at").textContent = h.finished ? new Date(h.finished).toLocaleTimeString("en-GB") : "";
    $("job-error").textContent = h.error || "";
    const show = {finished: !!h.finished, partial: !!h.partial, error: !!h.error,
                  waiting: h.status === "queued" && !!h.waiting_for};
    document.querySelectorAll("[data-banner]").forEach(el => { el.hidden = !show[el.dataset.banner]; });
    $("cancel-form").hidden = !["queued", "running"].includes(h.status);
    $("retry-form").hidden = !["failed", "cancelled"].includes(h.status);
  }

  // The results table and plots are rendered by the server: reload once when the job's latest status is
  // terminal and arrived after the render. Checked again when the timer fires: a retry may come between.
  function maybeReload() {
    if (state.reloadQueued || !FINISHED.includes(state.status) || state.statusSeq <= cfg.render_seq) return;
    state.reloadQueued = true;
    setTimeout(() => {
      if (FINISHED.includes(state.status)) location.reload();
      else state.reloadQueued = false;
    }, RELOAD_DELAY_MS);
  }

  function setConn(text) { const el = $("conn"); if (el) el.textContent = text; }

  // ---------------------------------------------------------------- websocket with backoff
  let ws = null, retryTimer = null, polling = false;
  state.dropSocket = () => { if (ws) ws.close(); };  // lets the browser test cut the fast path
  function connect() {
    retryTimer = null;
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}${cfg.ws_path}?after=${state.lastSeq}`);
    ws.onopen = () => { state.socketOpen = true; state.reconnects = 0; setConn("live"); catchUp(); };
    ws.onmessage = m => {
      let msg;
      try { msg = JSON.parse(m.data); } catch (e) { return; }
      (Array.isArray(msg) ? msg : [msg.event && msg.event.seq !== undefined ? msg.event : msg]).forEach(accept);
    };
    ws.onclose = e => {
      state.socketOpen = false;
      ws = null;
      if (e.code === 4401 || e.code === 4404) { setConn("not allowed (signed out?)"); return; }
      if (FINISHED.includes(state.status)) { setConn("finished"); catchUp(); return; }  // a retry reopens it
      const delay = Math.min(30000, 1000 * 2 ** state.reconnects) * (0.75 + Math.random() * 0.5);
      state.reconnects++;
      setConn(`reconnecting in ${Math.round(delay / 1000)}s`);
      catchUp();  // REST keeps the page current while the socket is down
      retryTimer = setTimeout(connect, delay);
    };
  }

  // An active job has a stream (or a poll) open: at start, and again when a retry brings a finished job
  // back. A finished job's open socket is kept: it carries the retry's events the moment they happen.
  function ensureLive() {
    if (FINISHED.includes(state.status) || ws || retryTimer || polling) return;
    if ("WebSocket" in window) connect();
    else { polling = true; pollLoop(); }
  }

  function pollLoop() {  // browsers without websockets: poll REST
    catchUp().then(() => {
      if (!FINISHED.includes(state.status)) setTimeout(pollLoop, 3000);
      else polling = false;
    });
  }

  // A push can be lost on the way (channels_redis drops when a group is full); when it is the newest
  // event no later seq shows the gap, so a quiet stream of an active job is checked against REST.
  setInterval(() => {
    if (!FINISHED.includes(state.status) && Date.now() - state.lastEventAt >= RESYNC_MS) {
      state.lastEventAt = Date.now();
      catchUp();
    }
  }, RESYNC_MS / 2);

  // ---------------------------------------------------------------- cancel / retry through the API
  function csrf() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return m ? decodeURIComponent(m[1]) : (input ? input.value : "");
  }

  function wire(formId, url, ask) {
    const form = $(formId);
    if (!form) return;
    form.addEventListener("submit", async e => {
      e.preventDefault();
      if (ask && !window.confirm(ask())) return;
      const btn = form.querySelector("button");
      btn.disabled = true;
      try {
        const r = await fetch(url, {method: "POST", credentials: "same-origin",
                                    headers: {"X-CSRFToken": csrf(), Accept: "application/json"}});
        const body = await r.json().catch(() => ({}));
        if (!r.ok) throw new Error(body.detail || (body.status && body.status.join ? body.status.join(" ") : "") || `HTTP ${r.status}`);
        // The action's status event is stored before the response: the stream brings it, in seq order,
        // and a retry's "queued" opens the stream again (ensureLive).
        await catchUp();
      } catch (err) {
        $("action-error").textContent = err.message;
      } finally {
        btn.disabled = false;
      }
    });
  }

  // ---------------------------------------------------------------- start
  (cfg.events || []).forEach(ev => state.pending.set(ev.seq, ev));
  drain();
  render();
  // Cancelling a running job stops it for good (a retry starts a new attempt): ask first.
  wire("cancel-form", cfg.cancel_url, () => `Cancel job ${cfg.job_id}? ` +
    (state.status === "queued" ? "It has not started; it will not run." : "It stops within a batch and keeps what it wrote, marked partial."));
  wire("retry-form", cfg.retry_url);
  if (FINISHED.includes(state.status)) catchUp();  // finished: just make sure nothing past the page is missed

  charts.results();  // the results plots (data embedded by the server)
})();
