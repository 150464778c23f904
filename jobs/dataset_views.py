"""The dataset upload page (/datasets/new/): a file in any format ml.data_formats reads, its kind, format (detected
when left on auto), column mapping and gold; "Preview" shows the first rows as they would be stored, "Save" stores
them. Both go through jobs.services.dataset_files, the functions the API's upload and preview call.

Without JavaScript the page posts itself (the browser then forgets the chosen file, so it is chosen again to
save); with it (static/jobs/dataset_new.js) the preview is the same POST sent with ``Accept: application/json``,
answered {"preview": ...} or 400 {"errors": {field: [message]}}, and the form stays as it was.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render

from jobs.models import Dataset
from jobs.services.dataset_files import dataset_preview, dataset_upload
from ml.data_formats import FORMATS, PREVIEW_ROWS

# The columns the page offers to map (ml.data_formats.MAPPABLE has the rest: the API takes any of them).
MAPPED = ("prompt", "response", "chosen", "rejected", "messages")


class DatasetForm(forms.Form):
    file = forms.FileField(help_text="JSONL, JSON, CSV, Parquet or Arrow; see docs/DATA.md for the shapes.")
    name = forms.CharField(max_length=200, required=False, help_text="Needed to save; unique names help you pick it.")
    kind = forms.ChoiceField(
        choices=Dataset.Kind.choices,
        initial=Dataset.Kind.PROMPTS,
        help_text="prompts: every job kind; preferences (prompt/chosen/rejected): weak_align.",
    )
    format = forms.ChoiceField(
        choices=[("", "auto (from the file name, else its content)")] + [(f, f.upper()) for f in FORMATS],
        required=False,
    )
    gold = forms.CharField(
        max_length=100, required=False, help_text="A gold reward for these prompts, e.g. toy:review (optional)."
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for col in MAPPED:
            self.fields[f"map_{col}"] = forms.CharField(
                max_length=200, required=False, label=col, help_text=f"the file's column to read as {col}"
            )

    def mapping_fields(self) -> list[forms.BoundField]:
        return [self[f"map_{col}"] for col in MAPPED]

    def file_args(self) -> dict[str, Any]:
        d = self.cleaned_data
        mapping = {col: d[f"map_{col}"].strip() for col in MAPPED if d.get(f"map_{col}", "").strip()}
        return {"file": d["file"], "kind": d["kind"], "fmt": d.get("format") or "", "mapping": mapping}

    def add_service_errors(self, exc: ValidationError) -> None:
        for field, msgs in exc.message_dict.items():
            for m in msgs:
                self.add_error(field if field in self.fields else None, m)


def _errors(form: DatasetForm) -> dict[str, list[str]]:
    return {("form" if k == "__all__" else k): [str(m) for m in v] for k, v in form.errors.items()}


@login_required
def dataset_new(request: HttpRequest) -> HttpResponse:
    form = DatasetForm(request.POST or None, request.FILES or None)
    preview = None
    wants_json = "application/json" in request.headers.get("Accept", "")
    if request.method == "POST" and form.is_valid():
        try:
            if request.POST.get("action") == "preview":
                preview = dataset_preview(**form.file_args())
            elif not form.cleaned_data["name"].strip():
                form.add_error("name", "give the dataset a name to save it")
            else:
                ds = dataset_upload(
                    name=form.cleaned_data["name"],
                    gold=form.cleaned_data["gold"],
                    owner=request.user,
                    **form.file_args(),
                )
                messages.success(
                    request,
                    f"Dataset {ds.name!r} saved: {ds.row_count} {ds.kind} rows from {ds.format.upper()}. "
                    "Pick it on this form.",
                )
                return redirect("job_new")
        except ValidationError as exc:
            form.add_service_errors(exc)
    if wants_json and request.method == "POST":
        if form.errors:
            return JsonResponse({"errors": _errors(form)}, status=400)
        return JsonResponse({"preview": preview})
    status = 400 if form.errors else 200
    context: dict[str, Any] = {"form": form, "preview": preview, "preview_rows": PREVIEW_ROWS}
    if preview:
        cols = list(dict.fromkeys(k for r in preview["rows"] for k in r))
        context |= {"preview_columns": cols, "preview_table": [[r.get(c, "") for c in cols] for r in preview["rows"]]}
    return render(request, "jobs/dataset_new.html", context, status=status)
