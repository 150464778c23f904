/* The new-job page's settings (one input per setting of ml's registry, rendered by the server for every kind):
   only the chosen kind's section is shown and enabled, since a disabled fieldset's inputs are not sent; in a
   pipeline only the stages the chosen methods run; each group's summary counts what is filled, so a closed
   group still says it holds values. job_new.js calls show() when the kind changes and fill() for a preset. */
(function () {
  "use strict";
  const kind = document.getElementById("id_kind");
  const stagesData = document.getElementById("stages-data");
  const byMethod = JSON.parse((stagesData && stagesData.textContent) || "{}");
  const sections = Array.from(document.querySelectorAll("fieldset.kind-settings"));
  const active = () => sections.find(s => s.dataset.kind === kind.value);

  // The stages that run for the picked methods (null: every stage of the kind).
  function usedStages(k) {
    const m = byMethod[k];
    if (!m) return null;
    let picked;
    if (k === "train") {
      const sel = document.getElementById("id_method");
      picked = sel && sel.value ? [sel.value] : [];
    } else {
      picked = Array.from(document.querySelectorAll("input[name=methods]:checked")).map(cb => cb.value);
    }
    if (!picked.length) return m.default;
    return Array.from(new Set(picked.flatMap(p => m.by_method[p] || [])));
  }

  function count(group) {
    const n = Array.from(group.querySelectorAll("input, select")).filter(el => el.value.trim() !== "").length;
    const badge = group.querySelector("[data-filled]");
    if (badge) badge.textContent = n ? `${n} set` : "";
  }

  function show() {
    const used = usedStages(kind.value);
    for (const s of sections) {
      const on = s.dataset.kind === kind.value;
      s.hidden = !on;
      s.disabled = !on;
      if (!on) continue;
      s.querySelectorAll("details[data-group]").forEach(d => {
        if (d.dataset.group === "common") return;
        // A group holding an error stays, so the message is seen; a stage that does not run is not sent.
        const runs = !used || used.includes(d.dataset.group) || d.querySelector(".has-error, [data-group-errors]");
        d.hidden = !runs;
        d.querySelector("fieldset.settings-grid").disabled = !runs;
      });
    }
  }

  // A preset's params ({"max_prompts": 64, "sft": {"num_train_epochs": 3}}) into the chosen kind's inputs.
  function fill(params) {
    const s = active();
    if (!s) return;
    s.querySelectorAll("input, select").forEach(el => { el.value = ""; });
    const put = (name, v) => {
      const el = s.querySelector(`[name="${name}"]`);
      if (!el) return;
      el.value = v === null ? "none" : Array.isArray(v) ? v.join(", ") : String(v);
    };
    for (const [key, value] of Object.entries(params || {})) {
      if (value && typeof value === "object" && !Array.isArray(value)) {
        for (const [sub, v] of Object.entries(value)) put(`p__${key}__${sub}`, v);
      } else {
        put(`p__${key}`, value);
      }
    }
    s.querySelectorAll("details[data-group]").forEach(d => {
      count(d);
      if (d.querySelector("[data-filled]").textContent) d.open = true;
    });
  }

  document.querySelectorAll("details[data-group]").forEach(d => {
    d.addEventListener("input", () => count(d));
    d.addEventListener("change", () => count(d));
  });
  kind.addEventListener("change", show);
  document.querySelectorAll("input[name=methods], #id_method").forEach(el => el.addEventListener("change", show));
  show();
  window.congSettings = { show, fill };
})();
