/* The playground (/jobs/<id>/playground/, jobs/playground_views.py): Send POSTs the prompt and knobs (JSON, CSRF)
 * to start a session, then reads its websocket (ws/playground/<session>/, jobs/playground_consumer.py): "delta"
 * events append text to their stream's column as tokens come, "finish" sets the column's final text and how it
 * ended, "done" or "error" ends the session. Stop sends {"action": "stop"}. Events carry a seq; the server sends
 * each once. The weak pair fills two columns (CD, plain pi_post) token by token, side by side. */
(function () {
  "use strict";
  const cfgEl = document.getElementById("playground-config");
  if (!cfgEl) return;
  const cfg = JSON.parse(cfgEl.textContent);
  const $ = id => document.getElementById(id);
  const form = $("pg-form");
  const TITLES = {cd: "CD (pi_post vs pi_pre)", plain: "plain pi_post", model: "model"};
  const pg = {running: false, ws: null, session: null, text: {}, deltas: {}, events: 0};
  window.congPlayground = pg;  // for the browser test and the console

  function csrf() {
    const input = form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function status(text) { $("pg-status").textContent = text; }

  function showErrors(errors) {
    form.querySelectorAll("[data-error]").forEach(el => { el.textContent = ""; });
    for (const [field, msgs] of Object.entries(errors || {})) {
      const el = form.querySelector(`[data-error="${CSS.escape(field)}"]`) || $("pg-error");
      el.textContent = (el === $("pg-error") && field !== "__all__" ? field + ": " : "") + msgs.join("; ");
    }
  }

  function selectedStreams() {
    const opt = $("pg-target").selectedOptions[0];
    return opt ? opt.dataset.streams.split(",") : [];
  }

  function syncKnobs() {  // alpha only means something for contrastive decoding
    const cd = selectedStreams().includes("cd");
    form.querySelectorAll("[data-cd-only]").forEach(el => { el.hidden = !cd; });
  }

  function body() {
    const out = {target: $("pg-target").value, prompt: $("pg-prompt").value};
    for (const k of cfg.knobs) {
      const input = form.querySelector(`[name="${k.name}"]`);
      if (!input || input.closest("[hidden]")) continue;
      if (k.type === "bool") out[k.name] = input.checked;
      else if (input.value.trim() !== "") out[k.name] = Number(input.value);
    }
    return out;
  }

  function columns(streams) {
    const box = $("pg-columns");
    box.replaceChildren();
    box.style.setProperty("--pg-n", String(streams.length));
    pg.text = {};
    pg.deltas = {};
    for (const s of streams) {
      const col = document.createElement("section");
      col.className = "pg-col card";
      col.dataset.stream = s;
      const h = document.createElement("h2");
      h.textContent = TITLES[s] || s;
      const text = document.createElement("div");
      text.className = "pg-text";
      const meta = document.createElement("div");
      meta.className = "pg-meta muted small";
      meta.textContent = "waiting";
      col.append(h, text, meta);
      box.append(col);
      pg.text[s] = "";
      pg.deltas[s] = 0;
    }
  }

  function col(stream, part) {
    return document.querySelector(`.pg-col[data-stream="${CSS.escape(stream)}"] .${part}`);
  }

  function running(on) {
    pg.running = on;
    $("pg-send").disabled = on;
    $("pg-stop").disabled = !on;
  }

  function onEvent(ev) {
    pg.events++;
    if (ev.type === "status") status(ev.message);
    else if (ev.type === "delta") {
      pg.text[ev.stream] = (pg.text[ev.stream] || "") + ev.text;
      pg.deltas[ev.stream] = (pg.deltas[ev.stream] || 0) + 1;
      const el = col(ev.stream, "pg-text");
      if (el) el.textContent = pg.text[ev.stream];
      const meta = col(ev.stream, "pg-meta");
      if (meta) meta.textContent = `${pg.deltas[ev.stream]} tokens…`;
    } else if (ev.type === "finish") {
      pg.text[ev.stream] = ev.text;  // the authoritative text (cut at a stop string, if one was set)
      const el = col(ev.stream, "pg-text");
      if (el) el.textContent = ev.text;
      const meta = col(ev.stream, "pg-meta");
      if (meta) meta.textContent = `${ev.n_tokens} tokens · ended by ${ev.finish_reason}`;
    } else if (ev.type === "done") {
      status(ev.stopped ? "stopped" : "done");
      finish();
    } else if (ev.type === "error") {
      status("failed");
      showErrors({__all__: [ev.message]});
      finish();
    }
  }

  function finish() {
    running(false);
    if (pg.ws) {
      const ws = pg.ws;
      pg.ws = null;
      ws.close();
    }
  }

  function connect(path) {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}${path}`);
    pg.ws = ws;
    ws.onmessage = m => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.warn(e); } };
    ws.onclose = e => {
      if (pg.ws !== ws) return;  // closed by us at the end
      pg.ws = null;
      running(false);
      status(e.code === 4404 ? "the session has expired" : "connection lost");
    };
  }

  form.addEventListener("submit", async e => {
    e.preventDefault();
    if (pg.running) return;
    showErrors({});
    running(true);
    status("starting");
    try {
      const r = await fetch(cfg.urls.start, {
        method: "POST",
        credentials: "same-origin",
        headers: {"Content-Type": "application/json", Accept: "application/json", "X-CSRFToken": csrf()},
        body: JSON.stringify(body()),
      });
      const data = await r.json().catch(() => ({}));
      if (!r.ok) {
        showErrors(data.errors || {__all__: [`HTTP ${r.status}`]});
        status("not started");
        running(false);
        return;
      }
      pg.session = data.session;
      columns(data.streams);
      status("queued");
      connect(data.ws_path);
    } catch (err) {
      showErrors({__all__: [String(err)]});
      status("not started");
      running(false);
    }
  });

  $("pg-stop").addEventListener("click", () => {
    if (pg.ws && pg.ws.readyState === WebSocket.OPEN) pg.ws.send(JSON.stringify({action: "stop"}));
    status("stopping");
  });

  $("pg-target").addEventListener("change", syncKnobs);
  syncKnobs();
})();
