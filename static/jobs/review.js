/* The review desk (/jobs/<id>/review/, jobs/review_views.py): one pair at a time, reviewed by keyboard or
 * buttons. The page embeds its first state ({pair, nav, counts}) and the filter it was opened with; every move
 * and every review asks the server for the next state (GET urls.state, POST urls.act / urls.bulk, the filter
 * in the query string), so "next" and "next pending" follow the filter and the counts are the database's. The
 * keys come from the page's config (review_views.SHORTCUTS, which also writes the legend). */
(function () {
  "use strict";
  const cfg = JSON.parse(document.getElementById("review-config").textContent);
  const $ = id => document.getElementById(id);
  const desk = {state: cfg.state, busy: 0, editing: false, confirming: null};
  window.congReview = desk;  // for the browser test and the console
  const NOT_GENERATED = "not generated";
  const EMPTY = "(empty response)";

  function csrf() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function say(text, bad) {
    const el = $("review-msg");
    el.textContent = text;
    el.classList.toggle("errorlist", !!bad);
  }

  function num(v) { return typeof v === "number" && isFinite(v) ? v.toFixed(3) : "-"; }

  function query(extra) {
    const q = new URLSearchParams(cfg.filter);
    for (const [k, v] of Object.entries(extra || {})) q.set(k, String(v));
    return q;
  }

  async function call(url, body) {
    desk.busy++;
    try {
      const opts = {credentials: "same-origin", headers: {Accept: "application/json"}};
      if (body !== undefined) {
        Object.assign(opts, {method: "POST", body: JSON.stringify(body)});
        Object.assign(opts.headers, {"Content-Type": "application/json", "X-CSRFToken": csrf()});
      }
      const r = await fetch(url, opts);
      const data = await r.json().catch(() => ({}));
      if (!r.ok) {
        const msgs = Object.values(data.errors || {}).flat();
        throw new Error(msgs.join("; ") || data.detail || `HTTP ${r.status}`);
      }
      return data;
    } finally {
      desk.busy--;
    }
  }

  function side(name, text) {
    const box = document.querySelector(`[data-side="${name}"] > .review-text`);
    const missing = text === null || text === undefined;
    const blank = !missing && !String(text).trim();
    box.textContent = missing ? NOT_GENERATED : (blank ? EMPTY : text);
    box.classList.toggle("missing", missing || blank);
  }

  function render(state) {
    desk.state = state;
    for (const [k, v] of Object.entries(state.counts)) {
      const el = document.querySelector(`[data-count="${k}"]`);
      if (el) el.textContent = String(v);
    }
    const p = state.pair, nav = state.nav;
    $("review-pair").hidden = !p;
    $("review-none").hidden = !!p;
    $("bulk-count").textContent = `(${nav.matching} match${nav.matching === 1 ? "es" : ""} the filter)`;
    $("review-position").textContent = p
      ? (nav.position ? `${nav.position} of ${nav.matching}` : `outside the filter (${nav.matching} match)`)
      : "";
    document.querySelector('[data-action="prev"]').disabled = !nav.prev;
    document.querySelector('[data-action="next"]').disabled = !nav.next;
    document.querySelector('[data-action="next_pending"]').disabled = !nav.next_pending;
    if (!p) return;
    $("pair-index").textContent = String(p.prompt_index);
    const status = $("pair-status");
    status.textContent = p.review_status;
    status.className = `review-status ${p.review_status}`;
    $("pair-reviewer").textContent = p.reviewer ? `by ${p.reviewer}` : "";
    $("pair-implicit-sum").textContent = num(p.implicit_reward_sum);
    $("pair-implicit-mean").textContent = num(p.implicit_reward_mean);
    $("pair-gold").textContent = p.score_error ? `- (${p.score_error})` : num(p.gold_reward);
    for (const name of ["prompt", "chosen", "rejected", "plain"]) side(name, p[name]);
    const edited = $("pair-edited");
    edited.hidden = !p.edited_text;
    edited.querySelector(".review-text").textContent = p.edited_text;
    history.replaceState(null, "", `${cfg.urls.page}?${query({pair: p.id})}`);
  }

  async function go(target, what) {
    if (!target) { say(`no ${what} under this filter`); return; }
    try {
      render(await call(`${cfg.urls.state}?${query({pair: target})}`));
      say("");
    } catch (e) { say(e.message, true); }
  }

  async function act(action, editedText) {
    const p = desk.state.pair;
    if (!p || desk.busy) return;
    try {
      const out = await call(`${cfg.urls.act}?${query()}`, {pair: p.id, action, edited_text: editedText || ""});
      closeEditor();
      render(out);
      const moved = out.pair && out.pair.id !== out.reviewed.id;
      say(`#${out.reviewed.prompt_index} ${out.reviewed.review_status}` +
          (moved ? "" : " · no pending pair left under this filter"));
    } catch (e) { say(e.message, true); }
  }

  function openEditor() {
    const p = desk.state.pair;
    if (!p) return;
    const box = $("edit-text");
    box.value = p.edit_prefill;
    $("review-editor").hidden = false;
    desk.editing = true;
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
  }

  function closeEditor() {
    if (!desk.editing) return;
    $("review-editor").hidden = true;
    desk.editing = false;
    $("edit-text").blur();
  }

  const actions = {
    approve: () => act("approve"),
    reject: () => act("reject"),
    edit: openEditor,
    next: () => go(desk.state.nav.next, "next pair"),
    prev: () => go(desk.state.nav.prev, "previous pair"),
    next_pending: () => go(desk.state.nav.next_pending, "other pending pair"),
  };
  const keymap = {};
  for (const s of cfg.shortcuts) for (const k of s.keys) keymap[k] = s.action;

  function typing(el) {
    return el && (el.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(el.tagName));
  }

  document.addEventListener("keydown", e => {
    if (e.key === "Escape" && desk.confirming) { e.preventDefault(); closeConfirm(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target) || desk.editing) return;
    const action = keymap[e.key];
    if (!action) return;
    e.preventDefault();  // "e" must not also type itself into the edit box it opens
    if (!desk.busy) actions[action]();
  });
  $("edit-text").addEventListener("keydown", e => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); act("edit", $("edit-text").value); }
    else if (e.key === "Escape") { e.preventDefault(); closeEditor(); }
  });
  $("edit-save").addEventListener("click", () => act("edit", $("edit-text").value));
  $("edit-cancel").addEventListener("click", closeEditor);
  document.querySelectorAll("[data-action]").forEach(b => b.addEventListener("click", () => actions[b.dataset.action]()));

  // Bulk: the question names the count the server gave; the server refuses if the filter now matches another.
  function closeConfirm() { desk.confirming = null; $("bulk-confirm").hidden = true; }
  document.querySelectorAll("[data-bulk]").forEach(b => b.addEventListener("click", () => {
    const n = desk.state.nav.matching;
    if (!n) { say("no pair matches the filter", true); return; }
    desk.confirming = {action: b.dataset.bulk, expect: n};
    $("bulk-question").textContent = `${b.dataset.bulk === "approve" ? "Approve" : "Reject"} all ${n} pair${n === 1 ? "" : "s"} matching the filter?`;
    $("bulk-confirm").hidden = false;
    $("bulk-yes").focus();
  }));
  $("bulk-no").addEventListener("click", closeConfirm);
  $("bulk-yes").addEventListener("click", async () => {
    const c = desk.confirming;
    closeConfirm();
    if (!c) return;
    try {
      const out = await call(`${cfg.urls.bulk}?${query()}`, c);
      render(out);
      say(`${out.done} pair${out.done === 1 ? "" : "s"} ${c.action}d`);
    } catch (e) { say(e.message, true); }
  });

  // Guidelines: saved in place; the form posts normally without this script.
  $("guidelines-form").addEventListener("submit", async e => {
    e.preventDefault();
    try {
      const out = await call(cfg.urls.guidelines, {guidelines: $("guidelines-input").value});
      const text = $("guidelines-text");
      text.textContent = out.guidelines || text.dataset.empty;
      text.classList.toggle("missing", !out.guidelines);
      $("guidelines-input").value = out.guidelines;
      $("guidelines-msg").textContent = "saved";
      $("guidelines-edit").open = false;
    } catch (err) { $("guidelines-msg").textContent = err.message; }
  });

  render(desk.state);
})();
