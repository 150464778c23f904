/* New-dataset page: "Preview" posts the form as it stands (file included) to the page itself with
   Accept: application/json (jobs.dataset_views) and shows the first rows as they would be stored, or each error
   under its field; the form keeps the chosen file, so "Save" (a plain submit) follows without choosing it again. */
(function () {
  "use strict";
  const form = document.getElementById("dataset-form");
  const button = document.getElementById("preview-btn");
  if (!form || !button) return;
  const panel = document.getElementById("preview-panel");
  const summary = document.getElementById("preview-summary");
  const table = document.getElementById("preview-table");
  const formErrors = document.getElementById("form-errors");

  function clearErrors() {
    form.querySelectorAll("ul.errorlist").forEach(ul => ul.remove());
    form.querySelectorAll(".has-error").forEach(el => el.classList.remove("has-error"));
    formErrors.replaceChildren();
    formErrors.hidden = true;
  }

  function list(messages, field) {
    const ul = document.createElement("ul");
    ul.className = "errorlist";
    if (field) ul.dataset.field = field;
    messages.forEach(m => {
      const li = document.createElement("li");
      li.textContent = m;
      ul.appendChild(li);
    });
    return ul;
  }

  function showErrors(errors) {
    for (const [field, messages] of Object.entries(errors)) {
      const box = document.getElementById(`field-${field}`);
      if (box) {
        box.classList.add("has-error");
        box.insertBefore(list(messages, field), box.querySelector(".help"));
      } else {
        messages.forEach(m => formErrors.appendChild(list([m]).firstChild));
        formErrors.hidden = false;
      }
    }
  }

  function cell(row, tag, text, cls) {
    const c = document.createElement(tag);
    c.textContent = text;
    if (cls) c.className = cls;
    row.appendChild(c);
  }

  function showPreview(p) {
    summary.textContent = `${p.row_count} rows, read as ${p.format.toUpperCase()}: ${p.shape_label} ` +
      `(columns ${p.columns.join(", ")})`;
    const again = document.getElementById("preview-again");
    if (again) again.remove();  // the file is still chosen: Save takes it as it is
    const cols = [...new Set(p.rows.flatMap(r => Object.keys(r)))];
    table.replaceChildren();
    const head = document.createElement("tr");
    cols.forEach(c => cell(head, "th", c));
    table.appendChild(head);
    p.rows.forEach(r => {
      const tr = document.createElement("tr");
      cols.forEach(c => cell(tr, "td", r[c] ?? "", "preview-cell"));
      table.appendChild(tr);
    });
    panel.hidden = false;
  }

  form.addEventListener("submit", async event => {
    if (event.submitter !== button) return;  // Save: the ordinary form post
    event.preventDefault();
    clearErrors();
    button.disabled = true;
    summary.textContent = "reading the file...";
    try {
      const body = new FormData(form);
      body.set("action", "preview");
      // form.action would be the buttons named "action"; the page posts to itself.
      const r = await fetch(form.getAttribute("action") || window.location.pathname, {
        method: "POST", body, credentials: "same-origin", headers: {Accept: "application/json"},
      });
      const data = await r.json();
      if (r.ok) {
        showPreview(data.preview);
      } else {
        panel.hidden = true;
        showErrors(data.errors || {form: [`preview failed (HTTP ${r.status})`]});
      }
    } catch (err) {
      panel.hidden = true;
      showErrors({form: [`preview failed: ${err}`]});
    } finally {
      button.disabled = false;
    }
  });
})();
