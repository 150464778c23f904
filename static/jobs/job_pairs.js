/* The job page's list of all the job's generated pairs (owner or staff: whoever may see the page), page by
 * page and searchable, read from GET /api/v1/jobs/<id>/pairs/ (DRF page-number pagination: {count, next,
 * previous, results}; `search` matches the prompt or the chosen response). The samples grid above shows only
 * the few rows the stages report live; this list is every stored pair. */
(function () {
  "use strict";
  const box = document.getElementById("pairs");
  if (!box) return;
  const cfg = JSON.parse(document.getElementById("live-config").textContent);
  const $ = id => document.getElementById(id);
  const state = {page: 1, search: "", count: 0, next: null, previous: null, loading: 0};
  window.congPairs = state;  // for the browser test

  function num(v) { return typeof v === "number" && isFinite(v) ? v.toFixed(3) : "-"; }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  async function load(page) {
    const q = new URLSearchParams({page: String(page)});
    if (state.search) q.set("search", state.search);
    state.loading++;
    $("pairs-info").textContent = "loading...";
    try {
      const r = await fetch(`${cfg.pairs_url}?${q}`, {credentials: "same-origin", headers: {Accept: "application/json"}});
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
      Object.assign(state, {page, count: body.count || 0, next: body.next, previous: body.previous});
      const tbody = $("pairs-table").querySelector("tbody");
      tbody.textContent = "";
      for (const p of body.results || []) {
        const tr = document.createElement("tr");
        tr.dataset.pair = String(p.id);
        cell(tr, String(p.prompt_index), "num");
        cell(tr, p.prompt || "");
        cell(tr, p.chosen || "");
        cell(tr, p.rejected ?? p.plain ?? "-");
        const imp = cell(tr, num(p.implicit_reward_sum), "num");
        if (typeof p.implicit_reward_mean === "number") {
          const m = document.createElement("span");
          m.className = "meta";
          m.textContent = `per token ${num(p.implicit_reward_mean)}`;
          imp.appendChild(m);
        }
        cell(tr, num(p.gold_reward), "num");
        cell(tr, p.review_status || "");
        tbody.appendChild(tr);
      }
      const n = (body.results || []).length;
      if (page === 1 && body.next) state.pageSize = n;  // the server's page size: a first page with a next is full
      const pages = state.pageSize ? Math.ceil(state.count / state.pageSize) : page;
      $("pairs-info").textContent = state.count
        ? `${state.count} pair${state.count === 1 ? "" : "s"}${state.search ? ` matching "${state.search}"` : ""} · page ${page} of ${pages}`
        : (state.search ? `no pair matches "${state.search}"` : "no pairs");
      $("pairs-prev").disabled = !state.previous;
      $("pairs-next").disabled = !state.next;
    } catch (e) {
      $("pairs-info").textContent = `could not load the pairs: ${e.message}`;
    } finally {
      state.loading--;
    }
  }

  $("pairs-search").addEventListener("submit", e => {
    e.preventDefault();
    state.search = $("pairs-q").value.trim();
    load(1);
  });
  $("pairs-prev").addEventListener("click", () => state.previous && load(state.page - 1));
  $("pairs-next").addEventListener("click", () => state.next && load(state.page + 1));
  load(1);
})();
