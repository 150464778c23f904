/* New-job form: live alpha value, presets that fill the form, show only the fields a kind uses (the settings
   inputs are job_settings.js's, loaded before this file). */
(function () {
  "use strict";
  const form = document.getElementById("job-form");
  // alpha: the number box is the field (any value in [0, 1]); the unnamed slider beside it moves with it. A value
  // out of range stays in the box as typed (the server says why); the slider then rests at the nearer end.
  const alpha = document.getElementById("id_alpha");
  const slider = document.getElementById("alpha-slider");
  const out = document.getElementById("alpha-value");
  const show = () => {
    const v = Number(alpha.value);
    if (alpha.value.trim() === "" || !Number.isFinite(v)) return;
    slider.value = String(Math.min(1, Math.max(0, v)));
    out.textContent = v.toFixed(2);
  };
  alpha.addEventListener("input", show);
  slider.addEventListener("input", () => {
    alpha.value = slider.value;
    out.textContent = Number(slider.value).toFixed(2);
  });
  show();

  // Which fields each kind uses (display only; jobs.services.job_create decides what is valid).
  const USES = {
    cong: ["weak_base", "weak_aligned", "strong", "prompts", "gold", "eval_gold", "alpha", "methods"],
    cd_generate: ["weak_base", "weak_aligned", "prompts", "gold", "alpha"],
    alpha_sweep: ["weak_base", "weak_aligned", "prompts", "gold", "eval_gold"],
    preflight: ["weak_base", "weak_aligned", "prompts", "gold"],
    weak_align: ["weak_base", "prompts", "gold"],
    train: ["weak_base", "weak_aligned", "strong", "prompts", "gold", "eval_gold", "alpha", "method", "pairs_from",
      "include_pending"],
    evaluate: ["strong", "prompts", "gold", "eval_gold"],
  };
  const kind = document.getElementById("id_kind");
  function toggle() {
    const uses = USES[kind.value] || [];
    const names = ["weak_base", "weak_aligned", "strong", "prompts", "gold", "eval_gold", "alpha", "methods", "method",
      "pairs_from", "include_pending"];
    for (const name of names) {
      const box = document.getElementById(`field-${name}`);
      if (!box) continue;
      const hide = !uses.includes(name) && !box.classList.contains("has-error");
      box.hidden = hide;
      // A hidden field is not sent: the service then sees only what this kind uses.
      box.querySelectorAll("input, select, textarea").forEach(el => { el.disabled = hide; });
      const label = box.previousElementSibling;
      if (label && label.classList.contains("field-label")) label.hidden = hide;
    }
    if (window.congSettings) window.congSettings.show();
  }
  kind.addEventListener("change", toggle);
  toggle();

  const presets = JSON.parse(document.getElementById("presets-data").textContent || "[]");
  document.querySelectorAll("button.preset").forEach(btn => btn.addEventListener("click", () => {
    const p = presets[Number(btn.dataset.preset)].request || {};
    kind.value = p.kind || "cong";
    for (const f of ["weak_base", "weak_aligned", "strong", "prompts"]) {
      const el = document.getElementById(`id_${f}`);
      if (el) el.value = p[f] == null ? "" : String(p[f]);
    }
    alpha.value = p.alpha == null ? 0.4 : p.alpha;
    form.querySelectorAll("input[name=methods]").forEach(cb => { cb.checked = (p.methods || []).includes(cb.value); });
    if (p.method) document.getElementById("id_method").value = p.method;
    show();
    toggle();
    if (window.congSettings) window.congSettings.fill(p.params);  // job_settings.js: the kind's setting inputs
  }));
})();
