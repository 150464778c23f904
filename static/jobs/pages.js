/* Small behaviours every page may use, kept out of the markup because the Content-Security-Policy
   allows neither inline scripts (onchange="...") nor inline styles (style="width: ..."). */
(function () {
  "use strict";
  // Progress bars rendered by the server: <span data-pct="35"> gets its width here.
  document.querySelectorAll("[data-pct]").forEach(el => {
    const pct = Math.max(0, Math.min(100, Number(el.dataset.pct) || 0));
    el.style.width = `${pct}%`;
  });
  // <select data-autosubmit> submits its form when changed (the dashboard's status filter).
  document.querySelectorAll("select[data-autosubmit]").forEach(el => {
    el.addEventListener("change", () => el.form.submit());
  });
})();
