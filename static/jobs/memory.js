/* New-job page, "Memory per device" panel: after each edit of the form (debounced), post it as it stands
   (FormData: exactly what submit would send; the disabled sections of other kinds are left out) to
   jobs.memory_views, and show each training stage's per-device estimate (ml.memory). The server builds the job
   the way submit does, so a form submit would refuse gets no estimate, only its errors. */
(function () {
  "use strict";
  const form = document.getElementById("job-form");
  const panel = document.getElementById("memory-panel");
  if (!form || !panel) return;
  const text = document.getElementById("memory-text");
  const table = document.getElementById("memory-stages");
  const TERMS = ["weights", "gradients", "optimizer", "activations", "logits", "casts", "reference", "gathered"];
  const gib = b => (b / 2 ** 30).toFixed(1);
  let timer = null;
  let seq = 0;

  function cell(row, tag, value, cls) {
    const c = document.createElement(tag);
    c.textContent = value;
    if (cls) c.className = cls;
    row.appendChild(c);
  }

  function show(data) {
    table.replaceChildren();
    const stages = Object.entries(data.stages || {});
    table.hidden = !stages.length;
    if (!stages.length) return;
    // Only the terms some stage has, so a plain ddp job shows no empty gathered/reference columns.
    const terms = TERMS.filter(t => stages.some(([, s]) => s[t]));
    const offload = stages.some(([, s]) => s.cpu);
    const head = document.createElement("tr");
    cell(head, "th", "stage (GiB)");
    terms.forEach(t => cell(head, "th", t, "num"));
    cell(head, "th", "total per GPU", "num");
    if (offload) cell(head, "th", "CPU per GPU", "num");
    table.appendChild(head);
    for (const [name, s] of stages) {
      const tr = document.createElement("tr");
      tr.dataset.stage = name;
      cell(tr, "td", name);
      if (s.error) {
        const c = document.createElement("td");
        c.colSpan = terms.length + (offload ? 2 : 1);
        c.textContent = s.error;
        tr.appendChild(c);
      } else {
        terms.forEach(t => cell(tr, "td", gib(s[t]), "num"));
        cell(tr, "td", gib(s.total), "num");
        if (offload) cell(tr, "td", gib(s.cpu), "num");
      }
      table.appendChild(tr);
    }
  }

  async function refresh() {
    const mine = ++seq;
    let status, data;
    try {
      const r = await fetch(panel.dataset.url, {
        method: "POST", body: new FormData(form), credentials: "same-origin", headers: {Accept: "application/json"},
      });
      status = r.status;
      data = await r.json();
    } catch (err) {
      data = {text: "No estimate: the server did not answer."};
    }
    if (mine !== seq) return;  // a later edit's answer is on its way
    const ok = status === 200 && data.valid;
    panel.dataset.state = ok ? "ok" : "error";
    let line = data.text || "";
    if (data.errors) {
      const first = Object.entries(data.errors).map(([k, v]) => (k === "__all__" ? v[0] : `${k}: ${v[0]}`))[0];
      if (first) line += ` (${first})`;
    }
    text.textContent = line;
    show(ok ? data : {});
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 400);
  }
  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  // A preset fills the form by script (no input events): job_new.js handles the click, then this refreshes.
  document.querySelectorAll("button.preset").forEach(b => b.addEventListener("click", schedule));
  refresh();
})();
